"""Prompt processors: view-dependent prompts and cached text embeddings."""

from threestudio.models.prompt_processors import view_prompt  # noqa: F401
