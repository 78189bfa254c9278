"""Diffusion guidance (ControlNet + IP-Adapter FaceID)."""

from threestudio.models.guidance import faceid_controlnet  # noqa: F401
