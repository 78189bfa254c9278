"""Web viewer (viser) for an animated avatar: play/pause and a frame slider, sliders for the facial
blendshapes (grouped: brows, eyes, cheeks, nose, jaw, mouth, tongue; or SMPL-X expression
coefficients) and for jaw and eye rotation, the skinned splats rendered in the browser. The sliders add
to the frame being played (a recording or a motion), so a face can be posed by hand or a recording
adjusted. Listens on 127.0.0.1 by default (open http://127.0.0.1:<port>)."""

from __future__ import annotations

import math
import threading
import time

import torch

from threestudio.animation.motion import joint_map_for
from threestudio.animation.performance import Performance, jaw_open_angle
from threestudio.models.body.expression import ARKIT_GROUPS, arkit_group
from threestudio.models.body.smplx_joints import JAW, LEFT_EYE, RIGHT_EYE
from threestudio.ops.camera import orbit_cameras
from threestudio.ops.gaussians import covariance_3d
from threestudio.ops.lbs import axis_angle_to_matrix
from threestudio.utils.errors import UserError

_FRONT = None
SMPLX_SLIDERS = 10
"""SMPL-X expression coefficients that get a slider (the leading PCA components)."""


def _arrays(posed, animator=None):
    """viser buffers; specular highlights are baked for a camera in front of the avatar (viser splats
    carry one colour each)."""
    global _FRONT
    cov = covariance_3d(posed.scales, posed.rotations)
    rgb = posed.colors
    if animator is not None and animator.appearance is not None:
        if _FRONT is None:
            _FRONT = orbit_cameras([90.0], 5.0, 2.5, 50.0, 8, 8, 0.0, "body").c2w
        rgb = animator.colors(posed, _FRONT.to(posed.means))[0]
    return (
        posed.means.float().cpu().numpy(),
        cov.float().cpu().numpy(),
        rgb.clamp(0, 1).float().cpu().numpy(),
        posed.opacities.float().cpu().numpy()[:, None],
    )


def rotate_leaf_joint(transforms: torch.Tensor, template, joint: int, R: torch.Tensor) -> torch.Tensor:
    """Joint transforms [J, 4, 4] with leaf joint ``joint`` additionally rotated by ``R`` [3, 3] (template
    world axes, in the A-pose) about its rest position: ``G_j ← G_j T(p) R T(-p)``."""
    p = template.joints[joint].to(transforms)
    local = torch.eye(4, dtype=transforms.dtype, device=transforms.device)
    local[:3, :3] = R.to(transforms)
    local[:3, 3] = p - R.to(transforms) @ p
    out = transforms.clone()
    out[joint] = transforms[joint] @ local
    return out


def face_rig(animator, perf: Performance, i: int, sliders: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Transforms [J, 4, 4] and weights [E] of frame ``i`` with the slider values added: blendshape
    weights (ARKit ones clamped to [0, 1]), jaw opening (the jaw joint of an smplx template, the
    ``jawOpen`` weight of anny) and eye yaw/pitch (both eyes; degrees)."""
    tpl = animator.template
    G = perf.transforms[i]
    W = None if perf.weights is None else perf.weights[i].clone()
    E = animator.num_expressions
    if E and W is None:
        W = torch.zeros(E)
    if E:
        for k, v in sliders.get("weights", {}).items():
            W[k] = W[k] + v
        if tpl.expressions.kind == "arkit":
            W = W.clamp(0, 1)
    jmap = joint_map_for(tpl)
    jaw = math.radians(sliders.get("jaw", 0.0))
    if jaw and JAW in jmap:  # native +x (the person's left) is world -x
        G = rotate_leaf_joint(G, tpl, jmap[JAW], axis_angle_to_matrix(torch.tensor([-jaw, 0.0, 0.0])))
    elif jaw and (angle := jaw_open_angle(tpl)):
        k = tpl.expressions.names.index("jawOpen")
        W[k] = (W[k] + jaw / angle).clamp(0, 1)
    yaw, pitch = math.radians(sliders.get("eye_yaw", 0.0)), math.radians(sliders.get("eye_pitch", 0.0))
    if yaw or pitch:
        R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, yaw])) @ axis_angle_to_matrix(torch.tensor([pitch, 0.0, 0.0]))
        for j in (LEFT_EYE, RIGHT_EYE):
            if j in jmap:
                G = rotate_leaf_joint(G, tpl, jmap[j], R)
    return G, W


def serve(
    animator,
    perf: Performance,
    host: str = "127.0.0.1",
    port: int = 8080,
    stop: threading.Event | None = None,
    view: str = "body",
):
    """Start the viewer and play ``perf`` until ``stop`` is set (Ctrl-C in the CLI). ``view="face"``
    opens on a close-up of the head.

    Raises:
        UserError: viser is not installed.
    """
    try:
        import viser
    except ImportError as e:
        raise UserError("--gui needs the web viewer: pip install viser") from e
    server = viser.ViserServer(host=host, port=port, verbose=False)
    server.scene.set_up_direction("+z")
    T, tpl = len(perf), animator.template
    dev = animator.weights.device
    state = {"shown": None, "version": 0}
    sliders: dict = {"weights": {}}

    def frame_data(i: int):
        G, W = face_rig(animator, perf, i, sliders)
        return _arrays(animator.pose(G.to(dev), None if W is None else W.to(dev)), animator)

    c, cov, rgb, op = frame_data(0)
    handle = server.scene.add_gaussian_splats("/avatar", centers=c, covariances=cov, rgbs=rgb, opacities=op)
    play = server.gui.add_checkbox("play", initial_value=T > 1)
    frame = server.gui.add_slider("frame", min=0, max=max(T - 1, 1), step=1, initial_value=0)

    def bump(_event=None) -> None:
        state["version"] += 1

    def bind(handle, key, index=None):
        @handle.on_update
        def _(_event) -> None:
            if index is None:
                sliders[key] = float(handle.value)
            else:
                sliders["weights"][index] = float(handle.value)
            bump()

    with server.gui.add_folder("jaw and eyes"):
        bind(server.gui.add_slider("jaw open (deg)", min=0.0, max=30.0, step=0.5, initial_value=0.0), "jaw")
        bind(
            server.gui.add_slider("eye yaw (deg, left +)", min=-30.0, max=30.0, step=0.5, initial_value=0.0), "eye_yaw"
        )
        bind(
            server.gui.add_slider("eye pitch (deg, up +)", min=-30.0, max=30.0, step=0.5, initial_value=0.0),
            "eye_pitch",
        )
    basis = tpl.expressions if animator.num_expressions else None
    if basis is not None and basis.kind == "arkit":
        for group in ARKIT_GROUPS:
            with server.gui.add_folder(group, expand_by_default=group in ("jaw", "mouth")):
                for k, name in enumerate(basis.names):
                    if arkit_group(name) == group:
                        bind(server.gui.add_slider(name, min=0.0, max=1.0, step=0.01, initial_value=0.0), "w", k)
    elif basis is not None:
        with server.gui.add_folder("expression"):
            for k, name in enumerate(basis.names[:SMPLX_SLIDERS]):
                bind(server.gui.add_slider(name, min=-3.0, max=3.0, step=0.05, initial_value=0.0), "w", k)

    @frame.on_update
    def _(_event) -> None:
        bump()

    head = perf.head_centers(tpl)[0] if view == "face" else tpl.head_center
    eye = (head + torch.tensor([0.0, 0.8, 0.03])) if view == "face" else torch.tensor([0.0, 3.0, 0.3])
    target = head if view == "face" else torch.zeros(3)

    @server.on_client_connect
    def _(client) -> None:
        client.camera.up_direction = (0.0, 0.0, 1.0)
        client.camera.position = tuple(float(x) for x in eye)
        client.camera.look_at = tuple(float(x) for x in target)
        if view == "face":
            client.camera.fov = math.radians(30.0)

    stop = stop or threading.Event()
    print(f"viewer: http://{host}:{server.get_port()}  (Ctrl-C to quit)", flush=True)
    try:
        while not stop.is_set():
            if play.value and T > 1:
                frame.value = (int(frame.value) + 1) % T
            key = (int(frame.value), state["version"])
            if key != state["shown"]:
                c, cov, rgb, op = frame_data(key[0])
                handle.set_gaussians(centers=c, covariances=cov, rgbs=rgb, opacities=op)
                state["shown"] = key
            time.sleep(1.0 / perf.fps)
    finally:
        server.stop()
    return server
