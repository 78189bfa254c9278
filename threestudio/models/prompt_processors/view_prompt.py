"""View-dependent prompts (method §3.5) and their CLIP text embeddings, cached on disk.

Cache file: ``<cache>/text_embeddings/md5(<model>-<prompt>).pt`` with the [77, D] last hidden state
of the CLIP text encoder; the encoder is loaded only when an embedding is not cached.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

import threestudio
from threestudio.ops.prompts import DIRECTIONS, refine_suffix, view_direction, view_suffix
from threestudio.utils.base import BaseObject
from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path, cache_root

DEFAULT_NEGATIVE = (
    "cloned face, multi face, bad face, poorly drawn face, duplicate face, cropped, out of frame, "
    "extra fingers, deformed, blurry, bad proportions, disfigured, fused fingers, long neck"
)


@threestudio.register("view-prompt-processor")
class ViewPromptProcessor(BaseObject):
    @dataclass
    class Config:
        prompt: str | None = "???"
        """The user's text prompt (view suffixes are appended per view)."""
        negative_prompt: str = DEFAULT_NEGATIVE
        """Negative prompt of the ANPG negative branch (method §5.3)."""
        null_prompt: str = ""
        """Prompt of the null branch (empty)."""
        pretrained_model_name_or_path: str = "SG161222/Realistic_Vision_V4.0_noVAE"
        """Model whose CLIP text encoder and tokenizer embed the prompts."""
        local_files_only: bool = True
        """Never download at run time."""
        use_cache: bool = True
        """Cache the text embeddings on disk (``$GIP_CACHE_DIR/text_embeddings``)."""

    def configure(self) -> None:
        if self.cfg.prompt is None or not str(self.cfg.prompt).strip():
            raise UserError('the text prompt is empty: describe the person, e.g. "A man wearing a green t-shirt"')
        self.embeddings: dict[str, torch.Tensor] = {}
        self.device = torch.device("cpu")
        """Where :attr:`embeddings` live (:meth:`to`)."""

    def to(self, device) -> ViewPromptProcessor:
        """Keep every embedding on ``device`` (about 0.25 MB each), so that a step's lookup copies
        nothing from the host."""
        self.device = torch.device(device)
        self.embeddings = {k: v.to(self.device) for k, v in self.embeddings.items()}
        return self

    def all_prompts(self) -> list[str]:
        p = self.cfg.prompt.strip()
        out = {self.cfg.negative_prompt, self.cfg.null_prompt}
        for d in DIRECTIONS:
            for mode in ("body", "head", "back"):
                for av in (False, True):
                    out.add(p + view_suffix(d, mode, av))
        return sorted(out)

    def _cache_file(self, prompt: str):
        h = hashlib.md5(f"{self.cfg.pretrained_model_name_or_path}-{prompt}".encode()).hexdigest()
        return cache_root() / "text_embeddings" / f"{h}.pt"

    def prepare(self, device) -> None:
        """Compute (or load) the embeddings of every prompt stage 1 can need."""
        self.ensure(self.all_prompts(), device)

    def ensure(self, prompts: list[str], device) -> None:
        """Make sure ``prompts`` have embeddings: from the disk cache, else with the CLIP text encoder
        (loaded only when something is missing, then dropped)."""
        todo = []
        for p in dict.fromkeys(prompts):
            if p in self.embeddings:
                continue
            f = self._cache_file(p)
            if self.cfg.use_cache and f.is_file():
                self.embeddings[p] = torch.load(f, map_location=self.device, weights_only=True)
            else:
                todo.append(p)
        if todo:
            from transformers import CLIPTextModel, CLIPTokenizer

            name, kw = self.cfg.pretrained_model_name_or_path, {"local_files_only": self.cfg.local_files_only}
            tok = CLIPTokenizer.from_pretrained(name, subfolder="tokenizer", **kw)
            enc = CLIPTextModel.from_pretrained(name, subfolder="text_encoder", **kw).to(device).eval()
            with torch.no_grad():
                for i in range(0, len(todo), 16):
                    chunk = todo[i : i + 16]
                    ids = tok(
                        chunk,
                        padding="max_length",
                        max_length=tok.model_max_length,
                        truncation=True,
                        return_tensors="pt",
                    ).input_ids.to(device)
                    hs = enc(ids)[0].float().cpu()
                    for p, e in zip(chunk, hs, strict=True):
                        self.embeddings[p] = e.clone().to(self.device)
                        if self.cfg.use_cache:
                            with atomic_path(self._cache_file(p)) as tmp:
                                torch.save(e.clone(), tmp)
            del enc

    def refine_prompts(self, roles, device="cpu") -> dict:
        """Stage-2 (VCR) text embeddings of a ring (method §7.3 table, see
        :func:`~threestudio.ops.prompts.refine_suffix`): ``pos``, ``neg`` [n, 77, D] and ``prompts``.
        Missing embeddings are computed on ``device``."""
        p = self.cfg.prompt.strip()
        prompts = [p + refine_suffix(r.kind, r.azimuth_deg) for r in roles]
        self.ensure(prompts + [self.cfg.negative_prompt], device)
        pos = torch.stack([self.embeddings[q] for q in prompts])
        return {
            "pos": pos,
            "neg": self.embeddings[self.cfg.negative_prompt].expand(len(prompts), -1, -1),
            "prompts": prompts,
        }

    def view_prompts(self, azimuth_deg: torch.Tensor, mode: str, all_visible: torch.Tensor) -> list[str]:
        """The B view-dependent positive prompts (method §3.5) of views at ``azimuth_deg`` [B]
        (degrees; pass CPU tensors: reading device tensors waits for the GPU)."""
        p = self.cfg.prompt.strip()
        pairs = zip(azimuth_deg.tolist(), all_visible.tolist(), strict=True)
        return [p + view_suffix(view_direction(float(a)), mode, bool(v)) for a, v in pairs]

    def __call__(self, azimuth_deg: torch.Tensor, mode: str, all_visible: torch.Tensor) -> dict:
        """Text embeddings for a batch of views.

        Returns ``pos``, ``neg``, ``null`` [B, 77, D] (on :attr:`device`) and ``prompts`` (the B
        positive strings).
        """
        return self.lookup(self.view_prompts(azimuth_deg, mode, all_visible))

    def lookup(self, prompts: list[str]) -> dict:
        """``pos`` [B, 77, D] of the B ``prompts`` (prepared ones), ``neg`` and ``null`` expanded to B,
        on :attr:`device`, and ``prompts``."""
        pos = torch.stack([self.embeddings[q] for q in prompts])
        B = len(prompts)
        return {
            "pos": pos,
            "neg": self.embeddings[self.cfg.negative_prompt].expand(B, -1, -1),
            "null": self.embeddings[self.cfg.null_prompt].expand(B, -1, -1),
            "prompts": prompts,
        }
