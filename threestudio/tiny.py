"""``python -m threestudio.tiny [--out DIR] [--force]``: write tiny random models in the real on-disk
formats so the whole pipeline runs offline on a CPU (DESIGN.md §5).

Written (default ``$GIP_TINY_DIR`` or ``<repo>/.tiny``):
* ``rv/``: diffusers layout with ``unet/``, ``text_encoder/`` (CLIP, hidden 64) and ``tokenizer/``
  (the real CLIP BPE vocabulary from open-clip's ``bpe_simple_vocab_16e6.txt.gz``, 49408 tokens);
* ``vae/`` (AutoencoderKL, 2 blocks: downsampling x2), ``controlnet/`` (from the UNet, conditioning
  embedding x2 to match), ``image_encoder/`` (CLIPVisionModelWithProjection, 224², 257 tokens);
* ``ip-adapter/ip-adapter-faceid-plusv2_sd15.bin``: the FaceID-Plus-v2 checkpoint key structure
  (``image_proj``: ProjPlusModel with a depth-4 perceiver; ``ip_adapter``: LoRA + to_k_ip/to_v_ip);
* ``insightface/models/tiny_l/w600k_r50.onnx``: an ArcFace-shaped ONNX (1x3x112x112 -> 1x512, IR 8);
* ``vgg16/vgg16-397923af.pth``: random VGG-16 feature weights in torchvision's state-dict format (the
  real shapes, so the LPIPS heads of the ``lpips`` package load on it; fp16 to halve its size).
Cross-attention dim 64 (FaceID-Plus needs a multiple of 64).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from threestudio.utils.config import tiny_root

TINY_VERSION = 3
CROSS_DIM = 64
LORA_RANK = 4


def _bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise RuntimeError("the tiny preset needs the real CLIP BPE vocabulary: pip install --no-deps open-clip-torch")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_clip_tokenizer(out: Path) -> int:
    """HF CLIPTokenizer files built from the real CLIP BPE merges; returns the vocabulary size."""
    from transformers import CLIPTokenizer

    merges = gzip.open(_bpe_path()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer.from_pretrained(str(out))  # transformers 5 ignores CLIPTokenizer(vocab_file=...)
    tok.model_max_length = 77
    tok.save_pretrained(str(out))
    return len(vocab)


def faceid_plus_v2_state_dict(
    unet, clip_hidden: int, id_dim: int = 512, embed_dim: int = CROSS_DIM, rank: int = LORA_RANK
) -> dict:
    """Random weights with the key structure and shapes of ``ip-adapter-faceid-plusv2_sd15.bin``."""
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen) * 0.02  # noqa: E731
    E, inner, out_dim = embed_dim, 64 * (embed_dim // 64), unet.config.cross_attention_dim
    proj = {
        "proj.0.weight": r(id_dim * 2, id_dim),
        "proj.0.bias": r(id_dim * 2),
        "proj.2.weight": r(4 * E, id_dim * 2),
        "proj.2.bias": r(4 * E),
        "norm.weight": torch.ones(E),
        "norm.bias": torch.zeros(E),
        "perceiver_resampler.proj_in.weight": r(E, clip_hidden),
        "perceiver_resampler.proj_in.bias": r(E),
        "perceiver_resampler.proj_out.weight": r(out_dim, E),
        "perceiver_resampler.proj_out.bias": r(out_dim),
        "perceiver_resampler.norm_out.weight": torch.ones(out_dim),
        "perceiver_resampler.norm_out.bias": torch.zeros(out_dim),
    }
    for i in range(4):  # diffusers' FaceID-Plus projection has a fixed depth of 4
        p = f"perceiver_resampler.layers.{i}."
        proj.update(
            {
                p + "0.norm1.weight": torch.ones(E),
                p + "0.norm1.bias": torch.zeros(E),
                p + "0.norm2.weight": torch.ones(E),
                p + "0.norm2.bias": torch.zeros(E),
                p + "0.to_q.weight": r(inner, E),
                p + "0.to_kv.weight": r(2 * inner, E),
                p + "0.to_out.weight": r(E, inner),
                p + "1.0.weight": torch.ones(E),
                p + "1.0.bias": torch.zeros(E),
                p + "1.1.weight": r(4 * E, E),
                p + "1.3.weight": r(E, 4 * E),
            }
        )
    ipa = {}
    for key_id, (name, _) in enumerate(unet.attn_processors.items()):
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden = attn.to_q.in_features
        kv_in = attn.to_k.in_features
        for lin, din in (("to_q", hidden), ("to_k", kv_in), ("to_v", kv_in), ("to_out", hidden)):
            ipa[f"{key_id}.{lin}_lora.down.weight"] = r(rank, din)
            ipa[f"{key_id}.{lin}_lora.up.weight"] = r(hidden, rank)
        if name.endswith("attn2.processor"):
            ipa[f"{key_id}.to_k_ip.weight"] = r(hidden, kv_in)
            ipa[f"{key_id}.to_v_ip.weight"] = r(hidden, kv_in)
    return {"image_proj": proj, "ip_adapter": ipa}


def write_vgg16(path: Path) -> None:
    """Random VGG-16 ``features.*`` weights with torchvision's keys and shapes (He-initialised)."""
    from threestudio.models.perceptual.lpips_vgg import vgg16_features

    torch.manual_seed(0)
    feats = vgg16_features()
    for m in feats:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"features.{k}": v.half() for k, v in feats.state_dict().items()}, path)


def write_arcface_onnx(path: Path) -> None:
    """ArcFace-shaped ONNX (input 1x3x112x112, output 1x512) that insightface's model router
    recognises as a recognition model. Opset 13, IR version 8."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 8, 8)) * 0.1).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((8 * 14 * 14, 512)) * 0.02).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["input.1", "w1"], ["c1"], strides=[8, 8]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["f1"], axis=1),
        helper.make_node("MatMul", ["f1", "w2"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


ARCHITECTURES = {
    # tiny: seconds on a CPU; VAE and ControlNet conditioning downsample x2
    "tiny": dict(
        text=dict(hidden_size=CROSS_DIM, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
        unet=dict(
            sample_size=16,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # attention at the coarse level only:
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),  # 4x fewer tokens, far cheaper on a CPU
            cross_attention_dim=CROSS_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
        ),
        vae=dict(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=32,
        ),
        cond=(16, 32),
        vision=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32
        ),
        lora_rank=LORA_RANK,
        embed_dim=CROSS_DIM,
    ),
    # sd15: the real SD-1.5 / ControlNet / CLIP ViT-H/14 / FaceID-Plus-v2 sizes, random weights (benchmarks)
    "sd15": dict(
        text=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
        ),
        unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        vae=dict(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        ),
        cond=(16, 32, 96, 256),
        vision=dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            projection_dim=1024,
            hidden_act="gelu",
        ),
        lora_rank=128,
        embed_dim=768,
    ),
}


def build(out: Path, size: str = "tiny") -> Path:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    arch = ARCHITECTURES[size]
    dtype = torch.float16 if size != "tiny" else torch.float32  # halve the disk size of big random models
    torch.manual_seed(0)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    vocab = write_clip_tokenizer(tmp / "rv" / "tokenizer")
    hid = arch["text"]["hidden_size"]
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab,
            max_position_embeddings=77,
            projection_dim=hid,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
            **arch["text"],
        )
    ).to(dtype).save_pretrained(tmp / "rv" / "text_encoder")
    unet = UNet2DConditionModel(**arch["unet"])
    unet.to(dtype).save_pretrained(tmp / "rv" / "unet")
    (tmp / "rv" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "size": size}))
    AutoencoderKL(**arch["vae"]).to(dtype).save_pretrained(tmp / "vae")
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=arch["cond"]).to(dtype).save_pretrained(
        tmp / "controlnet"
    )
    vis_cfg = CLIPVisionConfig(image_size=224, patch_size=14, **arch["vision"])
    CLIPVisionModelWithProjection(vis_cfg).to(dtype).save_pretrained(tmp / "image_encoder")
    sd = faceid_plus_v2_state_dict(
        unet, clip_hidden=vis_cfg.hidden_size, embed_dim=arch["embed_dim"], rank=arch["lora_rank"]
    )
    sd = {k: {n: v.to(dtype) for n, v in d.items()} for k, d in sd.items()}
    (tmp / "ip-adapter").mkdir(parents=True, exist_ok=True)
    torch.save(sd, tmp / "ip-adapter" / "ip-adapter-faceid-plusv2_sd15.bin")
    write_arcface_onnx(tmp / "insightface" / "models" / "tiny_l" / "w600k_r50.onnx")
    write_vgg16(tmp / "vgg16" / "vgg16-397923af.pth")
    (tmp / "VERSION").write_text(str(TINY_VERSION) if size == "tiny" else f"{TINY_VERSION}-{size}")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def ensure(out: Path | None = None, force: bool = False) -> Path:
    """Build the tiny models unless an up-to-date set exists."""
    out = Path(out or tiny_root())
    v = out / "VERSION"
    if force or not (v.is_file() and v.read_text().strip() == str(TINY_VERSION)):
        build(out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="folder (default $GIP_TINY_DIR or <repo>/.tiny)")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument(
        "--size",
        choices=sorted(ARCHITECTURES),
        default="tiny",
        help="tiny (CPU tests) or sd15 (real SD-1.5 sizes, random weights, for GPU benchmarks; ~4 GB)",
    )
    a = ap.parse_args(argv)
    if a.size != "tiny":
        if not a.out:
            ap.error("--size sd15 needs --out")
        print(f"{a.size} models in {build(Path(a.out), a.size)}")
        return
    print(f"tiny models in {ensure(Path(a.out) if a.out else None, a.force)}")


if __name__ == "__main__":
    main()
