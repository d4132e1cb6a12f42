"""Observation encoders: low-dim concatenation, per-camera ResNet-18 (GroupNorm) with a
spatial-softmax head, and the multi-modal encoder that joins them per observation step.

Inputs are *normalized* observations as returned by ``Policy.normalize_obs``::

    low-dim  obs[key] : (B, To, d_key)           flattened per step
    image    obs[key] : (B, To, C, H, W)         float in [-1, 1]
    output            : (B, To, D)                D = sum(d_key) + n_cams * feature_dim
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from torch import nn

from robopolicy.types import ObservationSpec

if TYPE_CHECKING:
    from robopolicy.nn.configs import ObsEncoderConfig


@dataclass(frozen=True)
class CropTransform:
    """Random crop in training, center crop in eval, to ``shape = (h, w)``.

    ``x``: (N, C, H, W) -> (N, C, h, w). Each image gets its own random offset.
    """

    shape: tuple[int, int]

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"crop shape must be (h, w) with positive sizes, got {self.shape}")

    def __call__(self, x: torch.Tensor, *, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        ch, cw = self.shape
        if ch > h or cw > w:
            raise ValueError(f"crop {self.shape} is larger than the image ({h}, {w})")
        if not train:
            top, left = (h - ch) // 2, (w - cw) // 2
            return x[:, :, top : top + ch, left : left + cw]
        top = torch.randint(0, h - ch + 1, (n,), generator=generator).to(x.device)
        left = torch.randint(0, w - cw + 1, (n,), generator=generator).to(x.device)
        rows = top[:, None] + torch.arange(ch, device=x.device)  # (N, ch)
        cols = left[:, None] + torch.arange(cw, device=x.device)  # (N, cw)
        idx = torch.arange(n, device=x.device)[:, None, None]
        patch = x[idx, :, rows[:, :, None], cols[:, None, :]]  # (N, ch, cw, C)
        return rearrange(patch, "n h w c -> n c h w")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(C // 16, C) as Diffusion Policy uses instead of BatchNorm (at least 1 group)."""
    return nn.GroupNorm(max(1, channels // 16), channels)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm. (N, C_in, H, W) -> (N, C_out, H/s, W/s)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = group_norm(c_out)
        self.act = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), group_norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + (x if self.down is None else self.down(x)))


class ResNet18Trunk(nn.Module):
    """ResNet-18 conv trunk (stem + 4 stages of 2 BasicBlocks), widths w, 2w, 4w, 8w.

    (N, C, H, W) -> (N, 8w, ~H/32, ~W/32). ``width=64`` is ResNet-18; 32 is the CPU "half".
    """

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            group_norm(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, c = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            c_out = width * mult
            stages += [BasicBlock(c, c_out, 1 if i == 0 else 2), BasicBlock(c_out, c_out, 1)]
            c = c_out
        self.stages = nn.Sequential(*stages)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class SpatialSoftmax(nn.Module):
    """1x1 conv to ``num_kp`` maps, softmax over space, expected (x, y) of each.

    (N, C, H, W) -> (N, 2 * num_kp), coordinates in [-1, 1].
    """

    def __init__(self, in_channels: int, num_kp: int = 32) -> None:
        super().__init__()
        self.kp = nn.Conv2d(in_channels, num_kp, 1)
        self.num_kp = num_kp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        attn = torch.softmax(rearrange(self.kp(x), "n k h w -> n k (h w)"), dim=-1)
        ys, xs = torch.meshgrid(_unit_range(h, x.device), _unit_range(w, x.device), indexing="ij")
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # (HW, 2)
        return rearrange(attn @ grid, "n k two -> n (k two)")


def _unit_range(n: int, device: torch.device) -> torch.Tensor:
    """``torch.linspace(-1, 1, n)`` (n = 1 gives [-1]) written so that exporters keep n = 1 finite
    (ONNX's linspace divides by n - 1)."""
    return torch.arange(n, device=device, dtype=torch.float32) * (2.0 / max(n - 1, 1)) - 1.0


class ImageEncoder(nn.Module):
    """One camera: (optional crop) -> ResNet-18 GN trunk -> spatial softmax -> Linear.

    (N, C, H, W) in [-1, 1] -> (N, feature_dim).
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        num_kp: int = 32,
        feature_dim: int = 64,
        crop_shape: tuple[int, int] | None = None,
        output_activation: str = "none",
    ) -> None:
        super().__init__()
        self.crop = CropTransform(tuple(crop_shape)) if crop_shape is not None else None
        self.trunk = ResNet18Trunk(in_channels, width)
        self.pool = SpatialSoftmax(self.trunk.out_channels, num_kp)
        self.proj = nn.Linear(2 * num_kp, feature_dim)
        self.act = nn.ReLU() if output_activation == "relu" else nn.Identity()
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop is not None:
            x = self.crop(x, train=self.training)
        return self.act(self.proj(self.pool(self.trunk(x))))


class MultiModalObsEncoder(nn.Module):
    """Per-step features from low-dim fields (concatenated as is) and one ImageEncoder per camera.

    ``forward(obs) -> (B, To, D)``; ``out_dim = D``. Low-dim fields come first, in spec order,
    then cameras in spec order.
    """

    def __init__(
        self,
        obs_spec: ObservationSpec,
        width: int = 64,
        num_kp: int = 32,
        feature_dim: int = 64,
        crop_shape: tuple[int, int] | None = None,
        output_activation: str = "none",
    ) -> None:
        super().__init__()
        self.low_dim_keys = [f.key for f in obs_spec.low_dim]
        self.low_dim_size = sum(int(torch.tensor(f.shape).prod()) for f in obs_spec.low_dim)
        self.image_keys = [f.key for f in obs_spec.images]
        self.cameras = nn.ModuleDict()
        for f in obs_spec.images:
            channels = f.shape[-1]  # stored HWC
            enc = ImageEncoder(channels, width, num_kp, feature_dim, crop_shape, output_activation)
            self.cameras[_module_name(f.key)] = enc
        self.out_dim = self.low_dim_size + feature_dim * len(self.image_keys)

    @classmethod
    def from_config(cls, obs_spec: ObservationSpec, cfg: ObsEncoderConfig) -> MultiModalObsEncoder:
        """The encoder a policy config's ``obs_encoder`` part describes."""
        return cls(obs_spec, cfg.image_width, cfg.num_kp, cfg.image_feature_dim, cfg.crop_shape, cfg.output_activation)

    def forward(self, obs: Mapping[str, torch.Tensor], run: Callable[[nn.Module], Any] | None = None) -> torch.Tensor:
        """``run(encoder)`` gives the callable that runs a camera's encoder (an inference engine);
        default: the encoder itself."""
        feats = [obs[k] for k in self.low_dim_keys]
        for k in self.image_keys:
            x = obs[k]
            b = x.shape[0]
            enc = self.cameras[_module_name(k)]
            y = (run(enc) if run is not None else enc)(rearrange(x, "b t c h w -> (b t) c h w"))
            feats.append(rearrange(y, "(b t) d -> b t d", b=b))
        return torch.cat(feats, dim=-1)


def _module_name(key: str) -> str:
    """ModuleDict names cannot hold dots: ``image.agentview`` -> ``image_agentview``."""
    return key.replace(".", "_")
