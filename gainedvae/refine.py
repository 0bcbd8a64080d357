r"""Encoder-side latent refinement: optimise the coded latents of one image.

The analysis transform is amortised: ``g_a`` and ``h_a`` predict latents that are good on average,
not the best ones for this image. Refinement (Campos et al., "Content Adaptive Optimization for
Neural Image Compression", CVPRW 2019; Yang et al., "Improving Inference for Neural Image
Compression", NeurIPS 2020) starts from them and descends, for this image only, the loss the model
was trained on at the coded quality ``q``::

    L(y, z) = R(ŷ, ẑ) / (H·W) + λ(q) · 255² · MSE(x, x̂)          (bits per pixel + distortion)
              (with a quality map m: mean over pixels of λ(q) · s(m) · 255² · (x − x̂)², s the
              map's lambda scale the model was trained with, :func:`gainedvae.qmap.lambda_scale`)
    ẑ = r(z − m) + m                    m: the entropy bottleneck's medians
    ŷ = r(y − μ(ẑ)) + μ(ẑ)              μ: the conditional's means (0 without)
    x̂ = g_s(ŷ × IG_y(q))
    λ(q) = exp((1 − t) log λ_l + t log λ_{l+1}),  q = l + 1 + t    (the gains' interpolation)

over the gained latents ``y``, ``z`` (:meth:`~gainedvae.models.base.GainedModel.gained_latents`;
``r`` as :meth:`~gainedvae.models.base.GainedModel.relaxed` applies it). Only the encoder's choice
of symbols changes: the file is coded by
:meth:`~gainedvae.models.base.GainedModel.compress_latents` and decodes with the ordinary decoder,
bit-exact on every machine like any other file (docs/format.md); the weights are untouched.

``r`` is stochastic Gumbel annealing (SGA, Yang et al. section 3.3): a value ``v`` between the
integers ``⌊v⌋`` and ``⌈v⌉`` is relaxed to ``⌊v⌋ + w``, ``w`` the "up" weight of a two-way
Gumbel-softmax with logits ``−atanh(v − ⌊v⌋) / τ`` (down) and ``−atanh(⌈v⌉ − v) / τ`` (up) at
temperature ``τ``; as ``τ → 0`` it becomes rounding to the nearer integer. ``τ`` stays at
``tau0`` for the first :data:`WARMUP` of the steps and then decays exponentially to
``tau0 · e^{-DECAY}`` (:func:`temperature`). Adam on ``y`` and ``z``, learning rate ``lr``.

The result is never worse than the unrefined encoding on ``L`` with true rounding (the real
quantisation, float ``h_s``): the better of the two is returned (:class:`Refined` says which).
Cost: ``steps`` forward and backward passes of ``h_s`` and ``g_s`` on the whole image (no tiling:
gradients need the whole graph), see ``benchmarks/refine.py`` for time and memory.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["DECAY", "WARMUP", "Refined", "level_lambda", "refine", "sga_round", "temperature"]

#: Fraction of the steps at the initial temperature.
WARMUP = 0.3
#: ``τ`` falls from ``tau0`` to ``tau0 · e^{-DECAY}`` over the remaining steps.
DECAY = 4.0


def level_lambda(lambdas: Sequence[float], quality: float) -> float:
    """The lambda at a continuous ``quality`` in ``[1, L]``: log-linear between the two trained
    levels around it (the gains' interpolation, :func:`gainedvae.gain.interpolate_log_gains`)."""
    levels = len(lambdas)
    if not 1 <= quality <= levels:
        raise ValueError(f"quality {quality} is outside [1, {levels}]")
    lo = min(int(math.floor(quality)) - 1, levels - 2)
    t = quality - 1 - lo
    return math.exp((1 - t) * math.log(lambdas[lo]) + t * math.log(lambdas[lo + 1]))


def temperature(step: int, steps: int, tau0: float = 0.5) -> float:
    """SGA's temperature at ``step`` (0-based) of ``steps``: ``tau0`` for the first
    ``WARMUP · steps``, then ``tau0 · exp(-DECAY · (step - WARMUP · steps) / ((1 - WARMUP) · steps))``."""
    start = WARMUP * steps
    if step <= start:
        return tau0
    return tau0 * math.exp(-DECAY * (step - start) / ((1 - WARMUP) * steps))


def sga_round(v: Tensor, tau: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """One SGA sample of ``v`` (module docstring); differentiable in ``v``."""
    down = torch.floor(v)
    frac = v - down
    eps = 1e-5
    logits = torch.stack((-torch.atanh(frac.clamp(eps, 1 - eps)), -torch.atanh((1 - frac).clamp(eps, 1 - eps))), -1) / tau
    u = torch.rand(logits.shape, generator=generator, device=v.device, dtype=v.dtype).clamp_(1e-10, 1.0)
    gumbel = -torch.log(-torch.log(u))
    up = torch.softmax((logits + gumbel) / tau, -1)[..., 1]
    return down + up


#: ``torch.compile`` d ``g_s`` and ``h_s`` per model, kept across calls (compiling costs about 25 s a shape).
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


@contextmanager
def _compiled_transforms(net: nn.Module, enabled: bool) -> Iterator[None]:
    """Run ``net``'s ``g_s`` and ``h_s`` through ``torch.compile`` inside the block (1.8x faster
    forward and backward of ``g_s`` on a 768x512 image, one CPU thread); the model's own modules
    are put back on exit, so its state dict and other callers never see the compiled ones."""
    if not enabled:
        yield
        return
    compiled = _COMPILED.setdefault(net, {})
    saved = {name: getattr(net, name) for name in ("g_s", "h_s")}
    try:
        for name, module in saved.items():
            if name not in compiled:
                compiled[name] = torch.compile(module)
            setattr(net, name, compiled[name])
        yield
    finally:
        for name, module in saved.items():
            setattr(net, name, module)


@dataclass(frozen=True)
class Refined:
    """Latents from :func:`refine`: ``y``, ``z`` (gained, ready for ``compress_latents``), the
    loss ``L`` with true rounding before and after, whether the refined latents were kept, and
    the estimated bits of the returned latents (their likelihoods with true rounding)."""

    y: Tensor
    z: Tensor
    loss_before: float
    loss_after: float
    kept: bool
    bits: float


def _loss(net: nn.Module, x: Tensor, y: Tensor, z: Tensor, q: Tensor, lmbda: Union[float, Tensor],
          rounding: Callable) -> Tuple[Tensor, Tensor]:
    """``(L, bits)``: the module docstring's loss and the estimated bits it counts (``lmbda`` a
    number or a per-pixel map ``(1, 1, H, W)``)."""
    h, w = x.shape[-2:]
    out = net.relaxed(y, z, q, rounding)
    bits = -sum(torch.log2(lik).sum() for lik in out["likelihoods"].values())
    err = (out["x_hat"][..., :h, :w] - x) ** 2
    if isinstance(lmbda, Tensor):
        return bits / (h * w) + 255.0**2 * torch.mean(lmbda * err), bits
    return bits / (h * w) + lmbda * 255.0**2 * torch.mean(err), bits


def _descend(net, x, y, z, q, lmbda, steps, lr, tau0, generator, progress) -> None:
    """``steps`` Adam steps on ``y`` and ``z`` (in place) with SGA rounding at :func:`temperature`."""
    opt = torch.optim.Adam([y, z], lr=lr)
    for step in range(steps):
        tau = temperature(step, steps, tau0)
        loss, _ = _loss(net, x, y, z, q, lmbda, lambda v: sga_round(v, tau, generator))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step, float(loss.detach()))


def refine(
    net: nn.Module,
    x: Tensor,
    quality: float,
    steps: int,
    lr: float = 0.02,
    tau0: float = 0.5,
    seed: int = 0,
    progress: Optional[Callable[[int, float], None]] = None,
    compile: bool = False,
    qmap: Optional[Tensor] = None,
    lambda_scale: Optional[Tensor] = None,
) -> Refined:
    """Refined gained latents of one image ``x`` (``(1, 3, H, W)`` float in ``[0, 1]``) at ``quality``.

    Args:
        net: a gained hyperprior model in eval mode (its weights are not changed).
        steps: optimisation steps (0: the analysis transform's latents, unchanged).
        lr: Adam's learning rate on the latents.
        tau0: SGA's initial temperature.
        seed: seed of the Gumbel noise (the same inputs give the same file on one machine).
        progress: called as ``progress(step, loss)`` after each step.
        compile: run the optimisation's ``g_s`` and ``h_s`` through ``torch.compile`` (worth it
            for many images or steps: the first call per image shape compiles for about 25 s).
        qmap: the quality map of a ``gained-scgain`` model (``(1, 1, H, W)``), passed to its analysis.
        lambda_scale: per-pixel factor of ``λ(q)`` (``(1, 1, H, W)``; the map's weighting,
            :func:`gainedvae.qmap.lambda_scale`, as the model was trained); default 1.
    """
    if steps < 0:
        raise ValueError(f"refinement steps must be >= 0, got {steps}")
    if x.dim() != 4 or x.size(0) != 1:
        raise ValueError(f"refine() takes one image (1, 3, H, W), got shape {tuple(x.shape)}")
    q = net.scalar_quality(quality)
    lmbda = level_lambda(net.lambdas, float(q))
    if lambda_scale is not None:
        lmbda = lmbda * lambda_scale
    with torch.no_grad():
        y0, z0 = net.gained_latents(net.analysis(x) if qmap is None else net.analysis(x, qmap=qmap), q)
        before, bits_before = map(float, _loss(net, x, y0, z0, q, lmbda, torch.round))
    if steps == 0:
        return Refined(y0, z0, before, before, False, bits_before)
    y = y0.clone().requires_grad_(True)
    z = z0.clone().requires_grad_(True)
    frozen = [p for p in net.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)  # gradients for the latents only
    generator = torch.Generator(device=x.device).manual_seed(seed)
    try:
        with _compiled_transforms(net, compile):
            _descend(net, x, y, z, q, lmbda, steps, lr, tau0, generator, progress)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    y, z = y.detach(), z.detach()
    with torch.no_grad():
        after, bits_after = map(float, _loss(net, x, y, z, q, lmbda, torch.round))
    if after < before:
        return Refined(y, z, before, after, True, bits_after)
    return Refined(y0, z0, before, after, False, bits_before)
