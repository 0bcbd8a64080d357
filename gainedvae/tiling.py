"""Run a convolutional transform tile by tile, so memory does not grow with the image.

``g_a`` (analysis) and ``g_s`` (synthesis) are stacks of strided convolutions with pointwise
nonlinearities (GDN, ReLU): an output element depends only on a window of the input (its
receptive field). :func:`tiled` cuts the input into ``tile x tile`` tiles, extends each by
``halo`` on every side (clipped at the border), runs the transform on the extended tile and keeps
the part of the output that belongs to the tile. With ``halo`` at least the receptive-field radius
of the transform, every kept element sees exactly the inputs it sees in the untiled computation:

- inside the image a tile's own border (zero padding of each layer) lies farther than the
  receptive field from every kept element;
- at the image border the tile's border *is* the image border, padded as in the untiled run.

Tiles start at multiples of ``align`` (the stride product of the transform: 16 pixels for a
4-layer stride-2 ``g_a``, 1 latent element for ``g_s``), so every layer's sampling grid is the
untiled grid. The results equal the untiled computation up to float summation order (the kernels
may pick other blockings for other sizes); the tiling depends only on the image size, so a decoder
is deterministic with itself.

Receptive fields of CompressAI's 4-layer transforms (kernel 5, stride 2, padding 2):
``g_a``: output ``j`` reads pixels ``16 j - 30 .. 16 j + 30`` (radius 30 px, halo 32 px);
``g_s``: output pixel ``o`` reads latents within ``o / 16 +- 1.875`` (halo 2 latents; 4 used);
``h_s``: output latent ``o`` reads ``z`` within ``o / 4 +- 1.75`` (halo 2).
Peak memory is that of one extended tile, whatever the image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class Tiling:
    """How to tile one transform, in input units.

    ``tile``: side of a tile; ``halo``: context added on each side; ``align``: tiles start at
    multiples of it; ``num / den``: output size per input size (16/1 for ``g_s``, 1/16 for ``g_a``).
    """

    tile: int
    halo: int
    align: int
    num: int = 1
    den: int = 1

    def __post_init__(self):
        for name in ("tile", "halo"):
            v = getattr(self, name)
            if v < 0 or v % self.align:
                raise ValueError(f"Tiling.{name} must be a non-negative multiple of align={self.align}, got {v}")
        if self.tile < 1 or self.align < 1 or self.num < 1 or self.den < 1:
            raise ValueError(f"invalid tiling {self}")
        if (self.align * self.num) % self.den:
            raise ValueError(f"align={self.align} must map to whole output elements (scale {self.num}/{self.den})")

    def out(self, n: int) -> int:
        return n * self.num // self.den


#: ``g_a`` of the 4-layer stride-2 models on the padded image: 1024-pixel tiles, 32-pixel halo.
ANALYSIS = Tiling(tile=1024, halo=32, align=16, num=1, den=16)
#: ``g_s`` on the latent: 64-element tiles (1024 pixels), 4-element halo.
SYNTHESIS = Tiling(tile=64, halo=4, align=1, num=16, den=1)
#: The fixed-point ``h_s`` (:func:`gainedvae.exact.coding_params`) on ``z``: 16-element tiles (64
#: latents, 1024 pixels), 2-element halo (CompressAI's deconv-deconv-conv3 ``h_s`` reads ``z``
#: within 1.75 elements). Integer arithmetic: the tiles give exactly the untiled result. Its im2col
#: buffers take about 10 KB per latent position (float64), so a tile needs about 80 MB, where the
#: whole 6000x4000 image took 1 GB.
HYPER_SYNTHESIS = Tiling(tile=16, halo=2, align=1, num=4, den=1)


def _window(x: Tensor, t0: int, t1: int, l0: int, l1: int) -> Tensor:
    """``x[..., t0:t1, l0:l1]`` of ``x`` replicate-padded on the bottom / right as far as needed
    (rows and columns past the end repeat the last one)."""
    h, w = x.shape[-2:]
    if t1 <= h and l1 <= w:
        return x[..., t0:t1, l0:l1]
    rows = torch.arange(t0, t1, device=x.device).clamp_(max=h - 1)
    cols = torch.arange(l0, l1, device=x.device).clamp_(max=w - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


def _put(out: Tensor, part: Tensor, top: int, left: int, finish: Callable[[Tensor], Tensor]) -> None:
    """Write ``finish(part)`` into ``out`` at ``(top, left)``, ``part`` first clipped to ``out``'s size."""
    rows, cols = min(part.shape[-2], out.shape[-2] - top), min(part.shape[-1], out.shape[-1] - left)
    out[..., top : top + rows, left : left + cols] = finish(part[..., :rows, :cols])


def tiled(fn: Callable[[Tensor], Tensor], x: Tensor, tiling: Tiling, size: Optional[Tuple[int, int]] = None,
          prepare: Optional[Callable[[Tensor], Tensor]] = None, finish: Optional[Callable[[Tensor], Tensor]] = None,
          out: Optional[Tensor] = None) -> Tensor:
    """``fn(x)`` computed over tiles of ``x`` (``(B, C, H, W)``), see the module docstring.

    ``size``: the input size to compute on, ``x`` replicate-padded on the bottom / right to it
    (default ``x``'s own size; must be a multiple of ``tiling.align``): the padding is done
    per tile, so a padded copy of the whole input never exists. ``prepare`` is applied to every
    (padded) tile before ``fn``, e.g. the conversion of a ``uint8`` image to float. ``out``: the
    tensor to write into (any strides, e.g. a permuted view of an ``(H, W, 3)`` array); one smaller
    than the output receives its top-left part (the padding cropped); default a new tensor of the
    full output size. ``finish`` (with ``out``) is applied to every kept and cropped part of the
    output before it is written, e.g. the conversion to 8 bits, so that a full-size float output
    never exists either. An input that fits in one tile is computed whole.
    """
    h, w = size if size is not None else x.shape[-2:]
    if h % tiling.align or w % tiling.align:
        raise ValueError(f"input size {h}x{w} is not a multiple of {tiling.align}")
    if h < x.shape[-2] or w < x.shape[-1]:
        raise ValueError(f"size {h}x{w} is smaller than the input {tuple(x.shape[-2:])}")
    if finish is not None and out is None:
        raise ValueError("tiled: finish needs out (the tensor of the finished output)")
    prepare = prepare or (lambda t: t)
    finish = finish or (lambda t: t)
    if h <= tiling.tile and w <= tiling.tile:
        part = fn(prepare(_window(x, 0, h, 0, w)))
        if out is None:
            return part
        _put(out, part, 0, 0, finish)
        return out
    for top in range(0, h, tiling.tile):
        for left in range(0, w, tiling.tile):
            if out is not None and (tiling.out(top) >= out.shape[-2] or tiling.out(left) >= out.shape[-1]):
                continue  # all cropped away
            bottom, right = min(top + tiling.tile, h), min(left + tiling.tile, w)
            t0, l0 = max(0, top - tiling.halo), max(0, left - tiling.halo)
            t1, l1 = min(h, bottom + tiling.halo), min(w, right + tiling.halo)
            part = fn(prepare(_window(x, t0, t1, l0, l1)))
            oy, ox = tiling.out(top - t0), tiling.out(left - l0)
            kept = part[..., oy : oy + tiling.out(bottom - top), ox : ox + tiling.out(right - left)]
            if out is None:
                out = kept.new_empty(*kept.shape[:-2], tiling.out(h), tiling.out(w))
            _put(out, kept, tiling.out(top), tiling.out(left), finish)
            del part, kept
    return out


def receptive_radius(fn: Callable[[Tensor], Tensor], channels: int, size: int) -> float:
    """Measured receptive-field radius of ``fn``, in input units: perturb the middle element of a
    ``size x size`` input and return the largest distance between it and the input position of an
    output element that changed (output ``j`` sits at input position ``j * size / out_size``).
    For tests and for choosing a halo of a new transform."""
    with torch.no_grad():
        x = torch.rand(1, channels, size, size, dtype=torch.float64)
        base = fn(x)
        c = size // 2
        x[..., c, c] += 1.0
        changed = ((fn(x) - base).abs().amax(dim=(0, 1)) > 0).nonzero()
    pos = changed.double() * size / base.shape[-1]
    return float((pos - c).abs().max())
