"""Perceptual image distances (LPIPS-VGG of stage 3)."""
