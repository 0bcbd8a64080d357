"""Rate control: the quality whose coding meets a target rate (bpp) or PSNR.

The search is over the continuous quality ``q`` in ``[1, L]`` of a
variable-rate model, for a value that increases with ``q`` (file size, PSNR).
This module knows nothing about models or files: :func:`control` calls
``evaluate(q) -> Trial`` (one coding at ``q``, supplied by
:func:`gainedvae.codec.encode_to_bpp` / :func:`~gainedvae.codec.encode_to_psnr`,
which run the analysis transform once and only the gain-dependent part per
trial) and returns the chosen trial as a :class:`RateControlResult`.

Targets: ``bpp`` within a relative ``tol`` (searched on ``log bpp``), ``psnr``
within ``tol`` dB. The first step follows the model's lambdas: rate grows
about ``0.5 * mean log(lambda_{i+1} / lambda_i)`` per quality step in log-bpp,
PSNR about twice that in dB.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from .container import CodecError

__all__ = ["RateControlResult", "Trial", "check_target", "control", "search"]


@dataclass(frozen=True)
class RateControlResult:
    """Outcome of :func:`gainedvae.codec.encode_to_bpp` / :func:`~gainedvae.codec.encode_to_psnr`.

    ``data`` is the ``.gvae`` file; ``bpp`` its size in bits per pixel;
    ``psnr`` the 8-bit PSNR of its reconstruction (``encode_to_psnr`` only);
    ``iterations`` the number of trial codings (``net.compress_analysed``
    calls); ``clamped`` is True when the target lies outside what the model
    reaches and the result is the end of the quality range; ``converged`` is
    False when the tolerance could not be met inside the range (a jump in
    rate), the result is then the closest trial. With refinement, ``refine``
    is its steps and ``refined`` how many of the ``iterations`` were refined
    codings (the slow ones).
    """

    data: bytes
    quality: float
    bpp: float
    psnr: Optional[float]
    metric: str
    target: float
    iterations: int
    seconds: float
    clamped: bool
    converged: bool
    refine: int = 0
    refined: int = 0

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def summary(self) -> str:
        got = f"{self.bpp:.4f} bpp" + (f", {self.psnr:.2f} dB" if self.psnr is not None else "")
        unit = "bpp" if self.metric == "bpp" else "dB"
        if self.clamped:
            state = f"target {self.target:g} {unit} unreachable, clamped to quality {self.quality:g}"
        elif not self.converged:
            state = f"target {self.target:g} {unit} not met within tolerance, closest quality {self.quality:.4f}"
        else:
            state = f"target {self.target:g} {unit} reached at quality {self.quality:.4f}"
        refined = f", {self.refined} refined {self.refine} steps" if self.refine else ""
        return f"{self.nbytes} bytes, {got}; {state} ({self.iterations} iterations{refined}, {self.seconds:.2f} s)"



@dataclass
class Trial:
    """One coding at a trial quality: its file, rate, PSNR (or None) and the searched value."""

    quality: float
    data: bytes
    bpp: float
    psnr: Optional[float]
    value: float  # bpp or psnr



def search(
    evaluate: Callable[[float], Trial],
    levels: int,
    transform: Callable[[float], float],
    target: float,
    accept: Callable[[float], bool],
    slope: float,
    max_iter: int,
    start: Optional[float] = None,
) -> Tuple[Trial, int, bool, bool]:
    """Find ``q`` in ``[1, levels]`` with ``accept(value(q))`` for a value that
    increases with ``q``: bisection on a bracket, accelerated by interpolation.

    ``g(q) = transform(value(q)) - transform(target)``. While only one side of
    the root is known, a secant step (slope from the last two trials, else
    ``slope``) is taken towards it, clipped to the range; the ends 1 and
    ``levels`` are only evaluated when a step lands there, and a wrong sign
    there ends the search as *clamped*. Once the root is bracketed, the
    Illinois variant of regula falsi is used, kept at least 1/16 of the
    bracket away from its ends; whenever the bracket did not halve over the
    last two trials the next one is the midpoint, so the search is never
    slower than every other step of a bisection.

    The first trial is at ``start`` (default: the middle of the range).
    Returns ``(trial, iterations, clamped, converged)``.
    """
    lo, hi = 1.0, float(levels)
    g_lo: Optional[float] = None  # g at lo once evaluated (negative)
    g_hi: Optional[float] = None  # g at hi once evaluated (positive)
    last_side = 0
    trials: List[Tuple[float, float, Trial]] = []
    widths: List[float] = []  # bracket width after every trial
    cache = {}
    q = (1.0 + levels) / 2.0 if start is None else min(max(float(start), 1.0), float(levels))
    for _ in range(max_iter):
        if q in cache:
            break
        t = evaluate(q)
        g = transform(t.value) - transform(target)
        cache[q] = t
        trials.append((q, g, t))
        if accept(t.value):
            return t, len(trials), False, True
        if g < 0:
            if q >= levels:
                return t, len(trials), True, False
            if last_side == -1 and g_hi is not None:
                g_hi /= 2  # Illinois: the same end moved twice, damp the other one
            lo, g_lo, last_side = q, g, -1
        else:
            if q <= 1:
                return t, len(trials), True, False
            if last_side == 1 and g_lo is not None:
                g_lo /= 2
            hi, g_hi, last_side = q, g, 1
        width = hi - lo
        widths.append(width)
        if width <= 1e-7:
            break
        if g_lo is not None and g_hi is not None:
            cand = lo + width * (-g_lo) / (g_hi - g_lo)
            margin = width / 16
            if not math.isfinite(cand) or (len(widths) >= 3 and width > widths[-3] / 2):
                cand = lo + width / 2  # not halving every two steps: bisect
            else:
                cand = min(max(cand, lo + margin), hi - margin)
        else:
            s = slope
            if len(trials) >= 2:
                (q1, g1, _), (q2, g2, _) = trials[-2], trials[-1]
                if q2 != q1 and math.isfinite(g1) and math.isfinite(g2):
                    est = (g2 - g1) / (q2 - q1)
                    if est > 0:
                        s = est
            cand = q - g / s if math.isfinite(g) else (lo if g > 0 else hi)
            cand = min(max(cand, lo), hi)
            if g_lo is not None and cand <= lo:
                cand = lo + width / 2
            if g_hi is not None and cand >= hi:
                cand = lo + width / 2
        q = float(cand)
    # Tolerance not met: the closest trial (in the transformed domain).
    best = min(trials, key=lambda item: abs(item[1]) if math.isfinite(item[1]) else math.inf)
    return best[2], len(trials), False, False


def mean_log_lambda_step(lambdas: Optional[Sequence[float]]) -> float:
    """Mean of ``log(lambda_{i+1} / lambda_i)`` (``log 2`` without lambdas)."""
    lambdas = lambdas or (1.0, 2.0)
    steps = [math.log(b / a) for a, b in zip(lambdas, lambdas[1:])]
    return sum(steps) / len(steps) if steps else math.log(2.0)


def check_target(metric: str, target: float, tol: float) -> None:
    """:class:`CodecError` unless ``target`` and ``tol`` make sense for ``metric`` (``"bpp"`` / ``"psnr"``)."""
    if metric == "bpp":
        if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
            raise CodecError(f"target bpp must be a positive number, got {target!r}")
        if not 0 < tol < 1:
            raise CodecError(f"tol must be in (0, 1), got {tol!r}")
    else:
        if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
            raise CodecError(f"target PSNR must be a positive number of dB, got {target!r}")
        if not tol > 0:
            raise CodecError(f"tol must be positive, got {tol!r}")


def control(
    evaluate: Callable[[float], Trial],
    levels: int,
    lambdas: Optional[Sequence[float]],
    metric: str,
    target: float,
    tol: float,
    max_iter: int,
    started: Optional[float] = None,
    start: Optional[float] = None,
    slope: Optional[float] = None,
) -> RateControlResult:
    """Search the quality for ``target`` (``metric`` ``"bpp"`` or ``"psnr"``) with :func:`search`.

    ``started``: the ``time.perf_counter()`` the work began at (the result's
    ``seconds`` count from it; default: now). ``start``: the first trial
    quality (default: the middle); ``slope``: the first step's estimate of
    d(log bpp)/dq (dB/q for PSNR; default: from the lambdas).
    """
    began = time.perf_counter() if started is None else started
    if slope is None:
        slope = (0.5 if metric == "bpp" else 2.0) * mean_log_lambda_step(lambdas)
    if metric == "bpp":
        trial, iters, clamped, converged = search(
            evaluate, levels, math.log, target, lambda v: abs(v - target) <= tol * target, slope, max_iter, start
        )
    else:
        trial, iters, clamped, converged = search(
            evaluate, levels, lambda v: v, target, lambda v: abs(v - target) <= tol, slope, max_iter, start
        )
    return RateControlResult(
        data=trial.data,
        quality=trial.quality,
        bpp=trial.bpp,
        psnr=trial.psnr,
        metric=metric,
        target=float(target),
        iterations=iters,
        seconds=time.perf_counter() - began,
        clamped=clamped,
        converged=converged,
    )
