"""Bjontegaard metrics (BD-rate, BD-PSNR) with piecewise-cubic interpolation.

As in the common reference implementations (and CompressAI's), the curves are
interpolated with a monotone piecewise-cubic Hermite interpolant (PCHIP) and
integrated over the quality range where both curves exist.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from scipy.interpolate import PchipInterpolator


class NoOverlap(ValueError):
    """The two curves share no quality (or rate) interval."""


def _prepare(x: Sequence[float], y: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"rate and quality must be 1-D of the same length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    order = np.argsort(x)
    x, y = x[order], y[order]
    _, first = np.unique(x, return_index=True)  # PCHIP needs strictly increasing abscissae
    x, y = x[first], y[first]
    if x.size < 2:
        raise ValueError("a curve needs at least 2 distinct points")
    return x, y


def _mean_difference(xa, ya, xb, yb) -> float:
    """Mean of (yb - ya) over the overlap of the x ranges, PCHIP on each curve."""
    xa, ya = _prepare(xa, ya)
    xb, yb = _prepare(xb, yb)
    lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    if not hi > lo:
        raise NoOverlap(f"no overlap: ranges [{xa[0]:.4g}, {xa[-1]:.4g}] and [{xb[0]:.4g}, {xb[-1]:.4g}]")
    ia = PchipInterpolator(xa, ya).integrate(lo, hi)
    ib = PchipInterpolator(xb, yb).integrate(lo, hi)
    return float((ib - ia) / (hi - lo))


def bd_rate(rate_anchor, quality_anchor, rate_test, quality_test) -> float:
    """Average bitrate difference (percent) of *test* against *anchor* at equal quality.

    Negative means the test curve needs fewer bits. Quality is PSNR (dB) or
    any other higher-is-better measure (e.g. MS-SSIM in dB).

    Raises:
        NoOverlap: the quality ranges do not overlap.
    """
    diff = _mean_difference(quality_anchor, np.log(rate_anchor), quality_test, np.log(rate_test))
    return float((np.exp(diff) - 1) * 100)


def bd_psnr(rate_anchor, quality_anchor, rate_test, quality_test) -> float:
    """Average quality difference (dB) of *test* against *anchor* at equal rate.

    Raises:
        NoOverlap: the rate ranges do not overlap.
    """
    return _mean_difference(np.log(rate_anchor), quality_anchor, np.log(rate_test), quality_test)
