"""Synthetic avatars with a known answer (tests and the reconstruction benchmark): dense Gaussians on
the body template coloured by a procedural clothing texture, rendered on the refinement ring and
written as finished stage-1 / stage-2 directories, so stage 3 can be run and scored against truth."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from threestudio.data.handoff import view_records, write_manifest, write_view_records
from threestudio.models.body.template import BodyTemplate, sample_surface
from threestudio.models.geometry.gaussian_model import GaussianModel
from threestudio.ops.camera import ring_cameras
from threestudio.ops.gaussians import inverse_sigmoid, rgb_to_sh0
from threestudio.ops.losses import alpha_bbox
from threestudio.utils.io import atomic_write_text, save_image


def procedural_colors(p: torch.Tensor) -> torch.Tensor:
    """Clothing-like RGB in [0, 1] for template-frame points [N, 3]: skin head and hands, a striped
    shirt, checked trousers, dark shoes (frequencies chosen to be resolvable at 1024²)."""
    x, y, z = p.unbind(-1)
    skin = torch.tensor([0.85, 0.66, 0.55])
    shirt = torch.stack(
        [0.2 + 0.6 * (torch.sin(z * 60) > 0).float(), 0.55 + 0.0 * z, 0.3 + 0.3 * torch.sin(x * 20) ** 2], -1
    )
    check = ((torch.sin(x * 40) > 0) ^ (torch.sin(z * 40) > 0)).float()
    trousers = torch.stack([0.15 + 0.1 * check, 0.2 + 0.1 * check, 0.45 + 0.25 * check], -1)
    shoes = torch.tensor([0.1, 0.08, 0.07]).expand(len(p), 3)
    c = torch.where((z > 0.0)[:, None], shirt, trousers)
    c = torch.where((z < -0.66)[:, None], shoes, c)
    c = torch.where((z > 0.5)[:, None] | (x.abs() > 0.36)[:, None], skin.expand(len(p), 3), c)
    return c.clamp(0, 1)


def textured_model(template: BodyTemplate, n: int, seed: int = 1, flat: bool = False) -> GaussianModel:
    """Ground truth: n opaque, small Gaussians on the template with the procedural texture. ``flat``:
    discs lying in the surface (their shortest axis = the face normal, 1/10 of the others), so that
    shading models that need a normal (:class:`BlinnPhongHighlights`) have the true one."""
    m = GaussianModel({"num_points": n, "seed": seed}).init_from_template(template)
    with torch.no_grad():
        m.f_dc.copy_(rgb_to_sh0(procedural_colors(m.means)))
        m.opacity_logit.fill_(float(inverse_sigmoid(torch.tensor(0.95))))
        m.log_scales.add_(math.log(1.2))
        if flat:
            _, face_idx, _ = sample_surface(template, n, seed=seed)  # the samples of init_from_template
            tri = template.vertices[template.faces[face_idx]]
            nrm = torch.nn.functional.normalize(
                torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), dim=-1
            )
            m.quats.copy_(quat_from_z(nrm))
            m.log_scales[:, 2] += math.log(0.1)
    return m


def quat_from_z(n: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) [N, 4] rotating +z onto ±n [N, 3] (sign chosen so that n_z >= 0;
    two-sided discs do not care)."""
    n = torch.where(n[:, 2:3] < 0, -n, n)
    q = torch.stack([1 + n[:, 2], -n[:, 1], n[:, 0], torch.zeros_like(n[:, 0])], -1)
    return torch.nn.functional.normalize(q, dim=-1)


class BlinnPhongHighlights:
    """An independent view-dependent shading model for known-answer benchmarks: the model's SH colour
    plus white Blinn–Phong highlights (:func:`~threestudio.ops.asg.blinn_phong`) from fixed directional
    lights, using each Gaussian's normal (shortest axis, turned to the camera). ``colors(model, c2w)``
    -> [B, N, 3], the interface of the specular appearance."""

    def __init__(
        self,
        lights=((0.5, 1.0, 0.8), (-0.8, 0.6, 0.2), (0.0, -1.0, 0.5)),
        strength: float = 0.35,
        shininess: float = 40.0,
    ):
        self.lights = torch.tensor(lights, dtype=torch.float32)
        self.strength, self.shininess = strength, shininess

    def colors(self, model: GaussianModel, c2w: torch.Tensor) -> torch.Tensor:
        from threestudio.ops.asg import blinn_phong, camera_directions, facing_frames, normal_frames

        n, t1, t2 = normal_frames(model.rotations, model.scales)
        v = camera_directions(model.means, c2w)
        n, _, _ = facing_frames(n, t1, t2, v)
        spec = self.strength * blinn_phong(n, v, self.lights.to(v), self.shininess)
        return model.colors[None] + spec[..., None]


@torch.no_grad()
def write_known_answer_stages(
    out: str | Path,
    template: BodyTemplate,
    gt: GaussianModel,
    renderer,
    n_init: int,
    n_views: int = 32,
    resolution: int = 1024,
    elevation: float = 17.0,
    distance: float = 1.5,
    fovy: float = 70.0,
    device="cpu",
    appearance=None,
) -> Path:
    """Write ``out/stage1`` (a plain, grey template initialisation as the stage-1 avatar) and
    ``out/stage2`` (ground-truth renders of the ring as "refined" views, with ``appearance``'s
    view-dependent colours when given). Returns ``out/stage2``."""
    out = Path(out)
    s1, s2 = out / "stage1", out / "stage2"
    init = GaussianModel({"num_points": n_init, "seed": 7}).init_from_template(template)
    init.save_ply(s1 / "save" / "avatar.ply")
    atomic_write_text(s1 / "configs" / "parsed.yaml", "system: {}\n")
    write_manifest(s1, stage="ahds", avatar="save/avatar.ply", body="anny-body", prompt="synthetic", face_image="")
    cams = ring_cameras(n_views, elevation, distance, fovy, resolution).to(device)
    gt = gt.to(device)
    boxes = []
    for i in range(n_views):
        colors = appearance.colors(gt, cams.c2w[i : i + 1]) if appearance is not None else None
        r = renderer.render(gt, cams[i], colors)
        save_image(s2 / "save" / "views" / f"refined_{i:03d}.png", r["comp_rgb"][0])
        boxes.append(alpha_bbox(r["opacity"][0].cpu()))
    write_view_records(s2 / "save" / "views" / "cameras.json", view_records(cams.to("cpu"), boxes))
    write_manifest(
        s2,
        stage="refine",
        cameras="save/views/cameras.json",
        avatar_in=str((s1 / "save" / "avatar.ply").resolve()),
        body="anny-body",
        prompt="synthetic",
        face_image="",
        n_views=n_views,
    )
    return s2
