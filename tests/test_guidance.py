import torch

from tests.conftest import face
from threestudio.models.guidance.faceid_controlnet import FaceIDControlNetGuidance
from threestudio.models.prompt_processors.view_prompt import ViewPromptProcessor


def tiny_guidance_cfg(t, **kw):
    return {
        **dict(
            pretrained_model_name_or_path=str(t / "rv"),
            vae_name_or_path=str(t / "vae"),
            controlnet_name_or_path=str(t / "controlnet"),
            ip_adapter_name_or_path=str(t / "ip-adapter"),
            image_encoder_name_or_path=str(t / "image_encoder"),
            sds_resolution=32,
            n_steps=20,
            face=dict(detector="haar", model_name="tiny_l", root=str(t / "insightface")),
        ),
        **kw,
    }


def test_real_loading_code_on_tiny_models(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir))
    assert g.missing() == []
    g.load("cpu")
    # IP-Adapter FaceID-Plus-v2 installed: LoRA adapter via peft, IP processors, shortcut projection
    assert "faceid_0" in g.unet.peft_config
    procs = g.unet.attn_processors
    assert any("IPAdapter" in type(p).__name__ for p in procs.values())
    assert type(g.ip_projection).__name__ == "IPAdapterFaceIDPlusImageProjection"
    assert g.ip_projection.shortcut and abs(g.ip_projection.shortcut_scale - 0.4) < 1e-6
    br = g.prepare_identity(str(face("man.png")))
    assert set(br) == {"pos", "neg", "null"} and br["neg"].id_embeds.abs().sum() == 0
    assert not torch.allclose(br["pos"].id_embeds, br["null"].id_embeds)
    pp = ViewPromptProcessor({"prompt": "A man", "pretrained_model_name_or_path": str(tiny_dir / "rv")})
    pp.prepare("cpu")
    assert len(list((tmp_path / "text_embeddings").glob("*.pt"))) == len(pp.all_prompts())
    e = pp(torch.tensor([90.0, -90.0]), "body", torch.tensor([True, False]))
    assert e["prompts"] == ["A man, full body photo, front view", "A man, back view"]
    assert not torch.equal(e["pos"][0], e["pos"][1])
    rgb = torch.rand(2, 64, 64, 3, requires_grad=True)
    out = g(rgb, torch.rand(2, 32, 32, 3), e["pos"], e["neg"], e["null"], step=0)
    assert ((out["t"] >= 500) & (out["t"] <= 799)).all()  # first AHDS window
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    # the identity reaches the UNet: another face changes the prediction
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([500, 500])
    pose = torch.rand(2, 3, 32, 32)
    e1 = g.predict_noise(z, t, e["pos"], [br["pos"]], pose)
    e2 = g.predict_noise(z, t, e["pos"], [br["null"]], pose)
    assert (e1 - e2).abs().max() > 1e-6


def test_missing_real_models_listed(tmp_path):
    g = FaceIDControlNetGuidance(
        {"pretrained_model_name_or_path": str(tmp_path / "rv"), "face": {"root": str(tmp_path)}}
    )
    miss = g.missing()
    text = "\n".join(miss)
    for what in ("UNet", "VAE", "ControlNet", "IP-Adapter", "CLIP ViT-H", "insightface"):
        assert what in text
    assert "hf download stabilityai/sd-vae-ft-mse" in text
