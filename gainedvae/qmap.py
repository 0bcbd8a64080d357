"""Quality maps for the spatial-channel gain model (``gained-scgain``).

A quality map ``q(x)`` gives every pixel a value in ``[0, 1]``: 0 asks for the
fewest bits, 1 for the most, at the chosen global quality (level). This module

* turns what a user passes into a checked ``(B, 1, H, W)`` float map of the
  image's size (:func:`prepare_qmap`): a tensor or array (``(H, W)``,
  ``(1, H, W)``, ``(1|B, 1, H, W)``), a Python number (a uniform map), or a
  grayscale image file (white = 1 = high quality), resized bilinearly;
* generates random training maps (:func:`random_qmaps`): uniform, linear
  gradients in random directions, sums of Gaussian blobs, as the reference
  implementation of Song et al., "Variable-Rate Deep Image Compression through
  Spatially-Adaptive Feature Transform", ICCV 2021, does; every draw comes from
  a ``torch.Generator`` so training stays deterministic and resumable;
* maps ``q`` to a pixel-wise lambda scale (:func:`lambda_scale`), log-linear
  between ``LOW`` (at ``q = 0``) and ``HIGH`` (at ``q = 1``)::

      lambda_map(x) = lambda_level * LOW ** (1 - q(x)) * HIGH ** q(x)

  The default ``(0.25, 4.0)`` has scale 1 at ``q = 0.5`` (the default map),
  so a uniform 0.5 map trains exactly the level's lambda.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: The map used when none is given: uniform 0.5 (the level's own lambda in training).
DEFAULT_QMAP_VALUE = 0.5
#: Default ``(LOW, HIGH)`` lambda scale at ``q = 0`` and ``q = 1``.
DEFAULT_LAMBDA_RANGE: Tuple[float, float] = (0.25, 4.0)
#: Kinds of random training maps, drawn with equal probability.
RANDOM_KINDS = ("uniform", "gradient", "blobs")

QmapLike = Union[None, int, float, str, os.PathLike, np.ndarray, Tensor]

__all__ = [
    "DEFAULT_LAMBDA_RANGE",
    "DEFAULT_QMAP_VALUE",
    "RANDOM_KINDS",
    "check_lambda_range",
    "check_qmap",
    "ellipse_qmap",
    "gradient_qmap",
    "half_qmap",
    "lambda_scale",
    "load_qmap",
    "prepare_qmap",
    "random_qmaps",
]


# ---------------------------------------------------------------------------
# user maps


def check_qmap(qmap: Union[Tensor, np.ndarray]) -> Tensor:
    """Validate a map array and return it as a float ``(B, 1, H, W)`` tensor.

    Accepts ``(H, W)``, ``(1, H, W)`` and ``(B, 1, H, W)``; ``uint8`` data is
    read as 8-bit (divided by 255), every other dtype must already lie in
    ``[0, 1]``.

    Raises:
        ValueError: wrong number of dimensions or channels, an empty map,
            NaN / infinite values, values outside ``[0, 1]``.
    """
    if isinstance(qmap, np.ndarray):
        qmap = torch.from_numpy(np.ascontiguousarray(qmap))
    if not isinstance(qmap, Tensor):
        raise TypeError(f"a quality map must be a tensor, an array, a number or an image path, got {type(qmap).__name__}")
    t = qmap.detach()
    if t.dtype == torch.bool:
        t = t.float()
    elif t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif not t.is_floating_point():
        t = t.float()
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        if t.size(0) != 1:
            raise ValueError(
                f"a quality map has one channel; got shape {tuple(qmap.shape)} ({t.size(0)} channels). "
                "Pass (H, W), (1, H, W) or (B, 1, H, W), or a grayscale image"
            )
        t = t[None]
    elif t.dim() == 4:
        if t.size(1) != 1:
            raise ValueError(
                f"a quality map has one channel; got shape {tuple(qmap.shape)} ({t.size(1)} channels). "
                "Pass (H, W), (1, H, W) or (B, 1, H, W), or a grayscale image"
            )
    else:
        raise ValueError(f"a quality map must be (H, W), (1, H, W) or (B, 1, H, W), got shape {tuple(qmap.shape)}")
    if t.numel() == 0:
        raise ValueError(f"the quality map is empty (shape {tuple(qmap.shape)})")
    if not torch.isfinite(t).all():
        raise ValueError("the quality map contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"quality map values must lie in [0, 1] (0 = fewest bits, 1 = most); got values in [{lo:g}, {hi:g}]")
    return t.float()


def load_qmap(path: Union[str, os.PathLike]) -> Tensor:
    """Read a grayscale image file as a ``(1, 1, H, W)`` map in ``[0, 1]`` (white = 1).

    8-bit images are divided by 255, 16-bit by 65535, bilevel images give 0/1,
    float (``F``) images are used as they are. An RGB(A) file is accepted only
    when its three colour channels are equal (a gray image saved as RGB);
    alpha is ignored.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, coloured, or out-of-range map.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quality map file {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                mode = img.mode
            arr = np.asarray(img)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read quality map {path}: {err}") from None
    if mode == "1":
        arr = arr.astype(np.float32)
    elif mode in ("L", "LA"):
        arr = (arr[..., 0] if arr.ndim == 3 else arr).astype(np.float32) / 255.0
    elif mode.startswith("I;16") or mode == "I":
        arr = arr.astype(np.float64) / 65535.0
    elif mode == "F":
        arr = arr.astype(np.float32)
    elif mode in ("RGB", "RGBA"):
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ValueError(
                f"quality map {path} is a colour image; a quality map must be grayscale "
                "(white = high quality, black = low quality)"
            )
        arr = rgb[..., 0].astype(np.float32) / 255.0
    else:
        raise ValueError(f"quality map {path} has image mode {mode!r}; save it as an 8- or 16-bit grayscale image")
    try:
        return check_qmap(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
    except ValueError as err:
        raise ValueError(f"quality map {path}: {err}") from None


def _resize(qmap: Tensor, size: Sequence[int]) -> Tensor:
    h, w = int(size[0]), int(size[1])
    if tuple(qmap.shape[-2:]) == (h, w):
        return qmap
    shrink = qmap.size(-2) > h or qmap.size(-1) > w
    out = F.interpolate(qmap, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    return out.clamp_(0, 1)


def prepare_qmap(qmap: QmapLike, x: Tensor) -> Tensor:
    """The map for the image batch ``x`` ``(B, 3, H, W)``: ``(B, 1, H, W)`` on ``x``'s device and dtype.

    ``qmap`` is ``None`` (uniform :data:`DEFAULT_QMAP_VALUE`), a number in
    ``[0, 1]`` (uniform), a path to a grayscale image, or a tensor / array
    (see :func:`check_qmap`) with batch 1 (shared) or ``B``. Maps of another
    size are resized bilinearly (antialiased when shrinking).
    """
    if x.dim() != 4:
        raise ValueError(f"expected an image batch of shape (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    if qmap is None:
        qmap = DEFAULT_QMAP_VALUE
    if isinstance(qmap, bool):
        raise TypeError("a quality map must be a number in [0, 1], a tensor or an image path, got a bool")
    if isinstance(qmap, (int, float)):
        value = float(qmap)
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise ValueError(f"a uniform quality map value must lie in [0, 1], got {qmap!r}")
        return torch.full((b, 1, h, w), value, device=x.device, dtype=x.dtype)
    if isinstance(qmap, (str, os.PathLike)):
        t = load_qmap(qmap)
    else:
        t = check_qmap(qmap)
    if t.size(0) not in (1, b):
        raise ValueError(f"got {t.size(0)} quality maps for a batch of {b} images")
    t = _resize(t.to(device=x.device, dtype=torch.float32), (h, w))
    return t.to(x.dtype).expand(b, 1, h, w)


# ---------------------------------------------------------------------------
# q -> lambda


def check_lambda_range(lambda_range: Sequence[float]) -> Tuple[float, float]:
    """``(LOW, HIGH)`` as floats; both positive and finite, ``LOW <= HIGH``."""
    try:
        low, high = (float(v) for v in lambda_range)
    except (TypeError, ValueError):
        raise ValueError(f"the q -> lambda range must be two numbers LOW HIGH, got {lambda_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"the q -> lambda range needs 0 < LOW <= HIGH, got LOW={low:g}, HIGH={high:g}")
    return low, high


def lambda_scale(qmap: Tensor, lambda_range: Sequence[float] = DEFAULT_LAMBDA_RANGE) -> Tensor:
    """Pixel-wise lambda factor ``LOW ** (1 - q) * HIGH ** q`` (log-linear in ``q``).

    Multiply by the level's lambda to get the lambda map of the training loss
    ``mean(lambda_map * 255^2 * (x_hat - x)^2) + bpp``.
    """
    low, high = check_lambda_range(lambda_range)
    return torch.exp(math.log(low) + qmap * (math.log(high) - math.log(low)))


# ---------------------------------------------------------------------------
# maps for evaluation and training


def gradient_qmap(height: int, width: int, direction: str = "horizontal", low: float = 0.0, high: float = 1.0) -> Tensor:
    """A linear ramp from ``low`` to ``high``: left to right (``horizontal``) or top to bottom (``vertical``)."""
    if direction == "horizontal":
        ramp = torch.linspace(low, high, width).expand(height, width)
    elif direction == "vertical":
        ramp = torch.linspace(low, high, height)[:, None].expand(height, width)
    else:
        raise ValueError(f"direction must be horizontal or vertical, got {direction!r}")
    return check_qmap(ramp.clone())


def ellipse_qmap(height: int, width: int, factor: float = 0.5) -> Tensor:
    """A centred ellipse region of interest: 1 inside, 0 outside, ``(1, 1, height, width)``.

    Semi-axes ``factor * width / 2`` (horizontal) and ``factor * height / 2``
    (vertical) around the image centre; a pixel is inside when its centre is
    (boundary included). ``factor`` in ``(0, 1]``: 1 touches the borders.
    The map is symmetric under horizontal and vertical flips.
    """
    if height < 1 or width < 1:
        raise ValueError(f"ellipse_qmap needs a positive size, got {height}x{width}")
    if not (math.isfinite(factor) and 0 < factor <= 1):
        raise ValueError(f"the ellipse factor must lie in (0, 1], got {factor!r}")
    ys = (torch.arange(height, dtype=torch.float64) + 0.5 - height / 2) / (factor * height / 2)
    xs = (torch.arange(width, dtype=torch.float64) + 0.5 - width / 2) / (factor * width / 2)
    inside = ys[:, None] ** 2 + xs[None, :] ** 2 <= 1
    return check_qmap(inside.float())


def half_qmap(height: int, width: int, half: str = "upper") -> Tensor:
    """1 in one half of the image, 0 in the other, ``(1, 1, height, width)``.

    ``upper``: the top ``height // 2`` rows are 1 (an odd middle row is 0);
    ``lower``: the bottom ``height // 2`` rows; ``left`` / ``right`` likewise
    with ``width // 2`` columns.
    """
    if height < 1 or width < 1:
        raise ValueError(f"half_qmap needs a positive size, got {height}x{width}")
    m = torch.zeros(height, width)
    if half == "upper":
        m[: height // 2] = 1
    elif half == "lower":
        m[height - height // 2:] = 1
    elif half == "left":
        m[:, : width // 2] = 1
    elif half == "right":
        m[:, width - width // 2:] = 1
    else:
        raise ValueError(f"half must be upper, lower, left or right, got {half!r}")
    return check_qmap(m)


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _random_qmap(kind: str, h: int, w: int, g: torch.Generator) -> Tensor:
    if kind == "uniform":
        return torch.full((h, w), _uniform(g))
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    if kind == "gradient":  # between two random values, in a random direction
        v1, v2 = _uniform(g), _uniform(g)
        angle = 2 * math.pi * _uniform(g)
        t = math.cos(angle) * xx + math.sin(angle) * yy
        t = (t - t.min()) / (t.max() - t.min()).clamp_min(1e-12)
        return v1 + (v2 - v1) * t
    if kind == "blobs":  # 1..20 Gaussian kernels, normalised to a random peak in [0.5, 1]
        n = int(torch.randint(1, 21, (), generator=g))
        acc = torch.zeros(h, w)
        for _ in range(n):
            my, mx = _uniform(g), _uniform(g)
            sy, sx = 0.1 + 0.2 * _uniform(g), 0.1 + 0.2 * _uniform(g)  # std, fraction of the side
            acc += torch.exp(-0.5 * (((yy - my) / sy) ** 2 + ((xx - mx) / sx) ** 2)) / (sy * sx)
        return acc / acc.max() * (0.5 + 0.5 * _uniform(g))
    raise ValueError(f"unknown random map kind {kind!r}; choose from {', '.join(RANDOM_KINDS)}")


def random_qmaps(
    batch: int, height: int, width: int, generator: torch.Generator, kinds: Sequence[str] = RANDOM_KINDS
) -> Tensor:
    """``(batch, 1, height, width)`` random training maps, one kind per image drawn uniformly from ``kinds``.

    * ``uniform``: one value ``U(0, 1)``;
    * ``gradient``: a linear ramp between two ``U(0, 1)`` values along a random direction;
    * ``blobs``: a sum of 1 to 20 axis-aligned Gaussian kernels (std 10-30 % of the side,
      weight ``1 / (std_y std_x)``), scaled to a peak of ``U(0.5, 1)``.

    The result depends only on the generator's state (CPU tensors).
    """
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"random_qmaps needs a positive batch and size, got {batch}, {height}x{width}")
    if not kinds:
        raise ValueError("random_qmaps needs at least one kind")
    maps = []
    for _ in range(batch):
        kind = kinds[int(torch.randint(0, len(kinds), (), generator=generator))]
        maps.append(_random_qmap(kind, height, width, generator).clamp(0, 1))
    return torch.stack(maps)[:, None].float()
