"""An inference-only copy of :class:`~robopolicy.nn.unet1d.ConditionalUnet1D` built for small
batches (batch 1 above all) on the CPU: the same function, to float tolerance, in a third of
the time or less.

Where the time goes at batch 1 in the training network, and what this copy does instead:

* ``nn.Conv1d`` at batch 1 takes PyTorch's im2col "slow" convolution (73 % of a forward). Here
  every convolution is one GEMM on rows of the activation: activations are kept time-major
  ``(B, T, C)``, a kernel-k convolution reads its k-frame windows with ``unfold`` (a view) and
  multiplies them by the weight laid out once as ``(C_in * k, C_out)``. The 1x1 skips are
  plain GEMMs; the stride-2 downsample is the same with a stride-2 window; the transposed
  convolution (kernel 4, stride 2) is one GEMM over 3-frame windows whose output holds the
  even and odd output frames side by side, so a reshape interleaves them.
* Every residual block's FiLM projection reads ``mish([step_embedding(t), global_cond])``.
  Mish is elementwise, so the projection splits into a part that depends on the step alone
  and a part that depends on the observation alone. The step part of *all* blocks is one
  table row per distinct step (cached: a sampler's schedule repeats every chunk), the
  observation part of all blocks is one GEMM per chunk (:meth:`FastUnet1D.prepare`), and a
  denoising step only adds the two.
* GroupNorm runs on the time-major layout directly (``var_mean`` over each group's frames
  and channels), so no layout copies are made between blocks.

Shapes as in the source network: ``forward(x (B, H, Da), t, cond) -> (B, H, Da)`` where
``cond`` is the flat global condition (B, G), a per-step (B, To, D) condition, or what
:meth:`prepare` returned for it (reused across the denoising steps of one chunk), and ``t`` a
float or a (B,) / (1,) tensor (fractional steps are fine).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.nn.embeddings import broadcast_timesteps
from robopolicy.nn.unet1d import ConditionalUnet1D, Conv1dBlock, FiLMResBlock1d


@dataclass
class _Conv:
    """A convolution as one GEMM: ``w`` (C_in * k, C_out), windows of k frames at ``stride``."""

    w: torch.Tensor
    b: torch.Tensor
    k: int
    pad: int
    stride: int = 1

    @classmethod
    def of(cls, conv: nn.Conv1d) -> _Conv:
        c_out, c_in, k = conv.weight.shape
        w = conv.weight.detach().reshape(c_out, c_in * k).t().contiguous()
        return cls(w, conv.bias.detach().clone(), k, conv.padding[0], conv.stride[0])

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, C_in) -> (B, T', C_out)."""
        b = h.shape[0]
        if self.k == 1 and self.stride == 1:
            out = torch.addmm(self.b, h.reshape(-1, h.shape[-1]), self.w)
            return out.view(b, -1, self.w.shape[1])
        hp = F.pad(h, (0, 0, self.pad, self.pad))  # pad the time axis
        cols = hp.unfold(1, self.k, self.stride)  # (B, T', C_in, k): weight order c * k + j
        out = torch.addmm(self.b, cols.reshape(-1, self.w.shape[0]), self.w)
        return out.view(b, -1, self.w.shape[1])


@dataclass
class _ConvT:
    """``ConvTranspose1d(C, C, 4, stride=2, padding=1)`` as one GEMM over 3-frame windows.

    With ``o = 2i + j - 1``: even output 2m = x[m] W1 + x[m-1] W3 and odd output 2m+1 =
    x[m+1] W0 + x[m] W2, so windows [x[m-1], x[m], x[m+1]] times ``[[W3, 0], [W1, W2], [0, W0]]``
    give (even_m, odd_m) side by side, which is already the interleaved order.
    """

    w: torch.Tensor
    b: torch.Tensor

    @classmethod
    def of(cls, conv: nn.ConvTranspose1d) -> _ConvT:
        if conv.kernel_size != (4,) or conv.stride != (2,) or conv.padding != (1,) or conv.output_padding != (0,):
            raise ValueError("the fast U-Net supports ConvTranspose1d(kernel 4, stride 2, padding 1) only")
        weight = conv.weight.detach()  # (C_in, C_out, 4)
        c_in, c_out, _ = weight.shape
        w = weight.new_zeros(c_in, 3, 2, c_out)  # (channel, window frame, even|odd, C_out)
        w[:, 0, 0] = weight[:, :, 3]
        w[:, 1, 0] = weight[:, :, 1]
        w[:, 1, 1] = weight[:, :, 2]
        w[:, 2, 1] = weight[:, :, 0]
        # window columns are ordered (channel, frame) by unfold: c * 3 + j
        w = w.reshape(c_in * 3, 2 * c_out).contiguous()
        return cls(w, conv.bias.detach().repeat(2))

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, 2T, C)."""
        b, t, c = h.shape
        cols = F.pad(h, (0, 0, 1, 1)).unfold(1, 3, 1)  # (B, T, C, 3)
        out = torch.addmm(self.b, cols.reshape(b * t, c * 3), self.w)
        return out.view(b, 2 * t, c)


@dataclass
class _Norm:
    """GroupNorm + Mish on a time-major (B, T, C) activation."""

    groups: int
    w: torch.Tensor
    b: torch.Tensor
    eps: float

    @classmethod
    def of(cls, gn: nn.GroupNorm) -> _Norm:
        return cls(gn.num_groups, gn.weight.detach().clone(), gn.bias.detach().clone(), gn.eps)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        b, t, c = h.shape
        g = h.view(b, t, self.groups, c // self.groups)
        var, mean = torch.var_mean(g, dim=(1, 3), keepdim=True, correction=0)
        g = (g - mean) * torch.rsqrt(var + self.eps)
        return F.mish(torch.addcmul(self.b, g.view(b, t, c), self.w))


def _block(blk: Conv1dBlock) -> tuple[_Conv, _Norm]:
    conv, gn, _ = blk
    return _Conv.of(conv), _Norm.of(gn)


class _Res:
    """One FiLM residual block; its FiLM (scale, bias) are columns [lo, lo + 2C) of the joint table."""

    def __init__(self, res: FiLMResBlock1d, lo: int) -> None:
        self.conv1, self.norm1 = _block(res.block1)
        self.conv2, self.norm2 = _block(res.block2)
        self.skip = _Conv.of(res.skip) if isinstance(res.skip, nn.Conv1d) else None
        self.c = self.conv1.w.shape[1]
        self.lo = lo

    def __call__(self, h: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        y = self.norm1(self.conv1(h))
        scale = film[:, None, self.lo : self.lo + self.c]
        bias = film[:, None, self.lo + self.c : self.lo + 2 * self.c]
        y = self.norm2(self.conv2(torch.addcmul(bias, y, scale)))
        return y + (h if self.skip is None else self.skip(h))


class FastUnet1D(nn.Module):
    """Inference-only GEMM form of a trained :class:`ConditionalUnet1D` (weights copied, frozen).

    Build with ``FastUnet1D(unet)``; the source network is not changed and keeps training.
    ``cond`` may be flat (B, G) or per step (B, To, D) (flattened, as Diffusion Policy's backbone does).
    """

    def __init__(self, unet: ConditionalUnet1D, *, step_cache_size: int = 4096) -> None:
        super().__init__()
        self.min_horizon_multiple = unet.min_horizon_multiple
        self.step_encoder = copy.deepcopy(unet.step_encoder)  # a frozen copy: the source keeps training
        self.dsed = unet.step_encoder[1].in_features
        res_blocks = _res_blocks(unet)
        # one joint FiLM table: rows of every block's Linear(cond_dim, 2C), stacked
        weights = torch.cat([r.film[1].weight.detach() for r in res_blocks], dim=0)  # (F, dsed + G)
        self.film_step_w = weights[:, : self.dsed].t().contiguous()  # (dsed, F)
        self.film_cond_w = weights[:, self.dsed :].t().contiguous()  # (G, F)
        self.film_b = torch.cat([r.film[1].bias.detach() for r in res_blocks])
        lo, self._res = 0, []
        for r in res_blocks:
            self._res.append(_Res(r, lo))
            lo += r.film[1].out_features
        it = iter(self._res)
        self._down = []
        for _, _, down in unet.down:
            self._down.append((next(it), next(it), _Conv.of(down) if isinstance(down, nn.Conv1d) else None))
        self._mid = [next(it), next(it)]
        self._up = [(next(it), next(it), _ConvT.of(up)) for _, _, up in unet.up]
        head_block, head_out = unet.head
        self._head = (*_block(head_block), _Conv.of(head_out))
        self._steps: dict[tuple[float, str], torch.Tensor] = {}
        self._step_cache_size = step_cache_size
        for p in self.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def prepare(self, cond: torch.Tensor) -> torch.Tensor:
        """The observation part of every block's FiLM, (B, F), for one chunk's condition."""
        g = cond.reshape(cond.shape[0], -1)
        return torch.addmm(self.film_b, F.mish(g), self.film_cond_w)

    @torch.no_grad()
    def step_film(self, t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
        """The step part of every block's FiLM: (1, F) for one shared step, else (B, F)."""
        if isinstance(t, float | int) or (torch.is_tensor(t) and t.numel() == 1):
            key = (float(t), str(device))
            row = self._steps.get(key)
            if row is None:
                emb = self.step_encoder(torch.tensor([float(t)], device=device))
                row = F.mish(emb) @ self.film_step_w
                if len(self._steps) >= self._step_cache_size:
                    self._steps.clear()
                self._steps[key] = row
            return row
        tt = broadcast_timesteps(t, batch, device)
        return F.mish(self.step_encoder(tt)) @ self.film_step_w

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.min_horizon_multiple:
            raise ValueError(f"horizon must be a multiple of {self.min_horizon_multiple}, got {x.shape[1]}")
        film_obs = cond if getattr(cond, "_fast_unet_prepared", False) else self.prepare(cond)
        film = self.step_film(timesteps, x.shape[0], x.device) + film_obs
        return self.core(x, film)

    def core(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """The network proper: x (B, H, Da) and every block's FiLM (B or 1, F) -> (B, H, Da)."""
        h, skips = x, []
        for res1, res2, down in self._down:
            h = res2(res1(h, film), film)
            skips.append(h)
            if down is not None:
                h = down(h)
        for res in self._mid:
            h = res(h, film)
        for res1, res2, up in self._up:
            h = res2(res1(torch.cat([h, skips.pop()], dim=-1), film), film)
            h = up(h)
        conv, norm, out = self._head
        return out(norm(conv(h)))


class UnetFilmCore(nn.Module):
    """The source U-Net with its FiLM inputs exposed: ``forward(x (B, H, Da), film (B or 1, F))``.

    Uses the source network's own modules (convolutions in their native layout), for exporters
    (ONNX) whose runtimes have fast convolutions of their own; the FiLM columns are those of
    :class:`FastUnet1D` (``prepare`` + ``step_film``)."""

    def __init__(self, unet: ConditionalUnet1D) -> None:
        super().__init__()
        self.unet = unet
        self.widths = [r.film[1].out_features // 2 for r in _res_blocks(unet)]

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        u, widths = self.unet, iter(self.widths)
        lo = 0

        def res(block: FiLMResBlock1d, h: torch.Tensor) -> torch.Tensor:
            nonlocal lo
            c = next(widths)
            scale, bias = film[:, lo : lo + c, None], film[:, lo + c : lo + 2 * c, None]
            lo += 2 * c
            y = block.block2(scale * block.block1(h) + bias)
            return y + block.skip(h)

        h, skips = x.transpose(1, 2), []
        for block1, block2, down in u.down:
            h = res(block2, res(block1, h))
            skips.append(h)
            h = down(h)
        for block in u.mid:
            h = res(block, h)
        for block1, block2, up in u.up:
            h = up(res(block2, res(block1, torch.cat([h, skips.pop()], dim=1))))
        return u.head(h).transpose(1, 2)


def _res_blocks(unet: ConditionalUnet1D) -> list[FiLMResBlock1d]:
    """Every FiLM residual block in forward order (down, mid, up)."""
    blocks: list[FiLMResBlock1d] = []
    for block1, block2, _ in unet.down:
        blocks += [block1, block2]
    blocks += list(unet.mid)
    for block1, block2, _ in unet.up:
        blocks += [block1, block2]
    return blocks
