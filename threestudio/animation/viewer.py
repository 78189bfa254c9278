"""Web viewer (viser) for an animated avatar: play/pause and a frame slider, the skinned splats
rendered in the browser. Listens on 127.0.0.1 by default (open http://127.0.0.1:<port>)."""

from __future__ import annotations

import threading
import time

import torch

from threestudio.ops.camera import orbit_cameras
from threestudio.ops.gaussians import covariance_3d
from threestudio.utils.errors import UserError

_FRONT = None


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


def serve(
    animator,
    transforms: torch.Tensor,
    fps: float,
    host: str = "127.0.0.1",
    port: int = 8080,
    stop: threading.Event | None = None,
):
    """Start the viewer and play until ``stop`` is set (Ctrl-C in the CLI).

    Raises:
        UserError: viser is not installed.
    """
    try:
        import viser
    except ImportError as e:
        raise UserError("--gui needs the web viewer: pip install viser") from e
    server = viser.ViserServer(host=host, port=port, verbose=False)
    server.scene.set_up_direction("+z")
    T = transforms.shape[0]
    c, cov, rgb, op = _arrays(animator.pose(transforms[0]), animator)
    handle = server.scene.add_gaussian_splats("/avatar", centers=c, covariances=cov, rgbs=rgb, opacities=op)
    play = server.gui.add_checkbox("play", initial_value=True)
    frame = server.gui.add_slider("frame", min=0, max=max(T - 1, 1), step=1, initial_value=0)
    shown = {"i": -1}

    def show(i: int) -> None:
        if i == shown["i"]:
            return
        c, cov, rgb, op = _arrays(animator.pose(transforms[i]), animator)
        handle.set_gaussians(centers=c, covariances=cov, rgbs=rgb, opacities=op)
        shown["i"] = i

    @frame.on_update
    def _(_event) -> None:
        show(int(frame.value))

    @server.on_client_connect
    def _(client) -> None:
        client.camera.position = (0.0, 3.0, 0.3)
        client.camera.look_at = (0.0, 0.0, 0.0)
        client.camera.up_direction = (0.0, 0.0, 1.0)

    stop = stop or threading.Event()
    print(f"viewer: http://{host}:{server.get_port()}  (Ctrl-C to quit)", flush=True)
    try:
        while not stop.is_set():
            if play.value and T > 1:
                frame.value = (int(frame.value) + 1) % T
            time.sleep(1.0 / fps)
    finally:
        server.stop()
    return server
