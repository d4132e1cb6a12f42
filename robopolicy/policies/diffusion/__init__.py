"""Diffusion Policy (CNN U-Net and transformer backbones)."""
