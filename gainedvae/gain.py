"""Gain units: the one place where the rate knob touches a latent.

Cui et al., "Asymmetric Gained Deep Image Compression With Continuous Rate
Adaptation", CVPR 2021. A gain unit is a learnable ``levels x channels``
matrix of positive gains; level ``s`` scales latent channel ``c`` by
``m[s, c]`` before quantisation and a second, independently learned inverse
gain matrix rescales the quantised latent before synthesis::

      y ──► (× gain(q)) ──► Q ──► (× inverse_gain(q)) ──► y_hat

The same construction is applied to the hyper-latent ``z``.

Continuous rate: for a quality ``q`` in ``[1, L]`` (CompressAI numbering,
1 = lowest rate) with ``s = floor(q)`` and ``l = q - s`` the gain vector is the
paper's exponential interpolation between adjacent levels::

      m(q) = m_s ** (1 - l) * m_(s+1) ** l

Gains are stored as logarithms (positivity without ``abs()`` and its zero
trap), which makes the interpolation linear in log space. Every gain the
models use, on the encoder and on the decoder side, comes out of
:func:`interpolate_log_gains`; integer ``q`` selects a trained level exactly.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor, nn

QualityLike = Union[int, float, Tensor]

__all__ = [
    "GainMatrix",
    "LatentGains",
    "check_quality",
    "interpolate_log_gains",
    "level_to_quality",
]


def check_quality(quality: QualityLike, levels: int) -> Tensor:
    """Validate ``quality`` (scalar or 1-D tensor) and return it as a float tensor.

    Raises:
        ValueError: when a value is not finite or lies outside ``[1, levels]``.
    """
    if isinstance(quality, bool):
        raise TypeError(f"quality must be a number in [1, {levels}], got a bool")
    if isinstance(quality, Tensor):
        q = quality.detach().to(torch.float64)
        if q.dim() > 1:
            raise ValueError(f"quality must be a scalar or a 1-D tensor, got shape {tuple(q.shape)}")
    elif isinstance(quality, (int, float)):
        q = torch.tensor(float(quality), dtype=torch.float64)
    else:
        raise TypeError(f"quality must be a number in [1, {levels}], got {type(quality).__name__}")
    if torch.compiler.is_compiling():
        # a compiled training step (train.compiled): the level sampler's values are in range, and
        # the data-dependent checks below would break the graph
        return q.to(torch.float32)
    if not torch.isfinite(q).all():
        raise ValueError(f"quality must be finite, got {quality!r}")
    lo, hi = q.min().item(), q.max().item()
    if lo < 1 or hi > levels:
        bad = lo if lo < 1 else hi
        raise ValueError(
            f"quality {bad!r} is outside the trained range [1, {levels}] "
            f"(this model has {levels} levels)"
        )
    if isinstance(quality, Tensor):
        return quality.to(torch.float32)
    return torch.tensor(float(quality), dtype=torch.float32)


def level_to_quality(level: Union[int, Tensor]) -> Tensor:
    """Map a 0-based level index (int or LongTensor) to the quality ``level + 1``."""
    if isinstance(level, Tensor):
        if level.is_floating_point():
            raise TypeError("level must be an int or an integer tensor; use quality= for fractions")
        return level.to(torch.float32) + 1
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(f"level must be an int or a LongTensor, got {type(level).__name__}")
    return torch.tensor(float(level + 1))


def interpolate_log_gains(log_gains: Tensor, quality: Tensor) -> Tensor:
    """Gain vector(s) for ``quality`` from a ``levels x channels`` log-gain matrix.

    This is the only interpolation in the library: ``exp((1 - l) * log m_s +
    l * log m_(s+1))`` which equals ``m_s ** (1 - l) * m_(s+1) ** l``.

    Args:
        log_gains: ``(L, C)`` tensor of log gains, row ``i`` is quality ``i + 1``.
        quality: scalar or ``(B,)`` float tensor with values in ``[1, L]``
            (validated by the caller, see :func:`check_quality`).

    Returns:
        ``(C,)`` for a scalar quality, ``(B, C)`` for a batch of qualities.
    """
    levels = log_gains.shape[0]
    q = quality.to(device=log_gains.device, dtype=log_gains.dtype)
    # Lower index s (0-based) and fraction l; q == L uses (s = L-2, l = 1) so
    # that every integer quality reproduces its level exactly.
    s = torch.clamp(torch.floor(q) - 1, 0, max(levels - 2, 0)).long()
    frac = (q - 1 - s.to(q.dtype)).unsqueeze(-1)
    upper = torch.clamp(s + 1, max=levels - 1)
    mixed = (1 - frac) * log_gains[s] + frac * log_gains[upper]
    return torch.exp(mixed)


class GainMatrix(nn.Module):
    """A learnable ``levels x channels`` matrix of positive gains (log-parametrised)."""

    def __init__(self, levels: int, channels: int):
        super().__init__()
        if levels < 1 or channels < 1:
            raise ValueError(f"GainMatrix needs levels >= 1 and channels >= 1, got {levels}, {channels}")
        self.log_gain = nn.Parameter(torch.zeros(levels, channels))

    @property
    def levels(self) -> int:
        return self.log_gain.shape[0]

    def forward(self, quality: Tensor) -> Tensor:
        """Gains as a broadcastable ``(1|B, C, 1, 1)`` tensor for a validated quality."""
        g = interpolate_log_gains(self.log_gain, quality)
        if g.dim() == 1:
            g = g.unsqueeze(0)
        return g[:, :, None, None]

    @property
    def gains(self) -> Tensor:
        """The trained gains (``levels x channels``), for inspection."""
        return self.log_gain.detach().exp()


class LatentGains(nn.Module):
    """Gain and inverse-gain matrices for the latent ``y`` (M channels) and the
    hyper-latent ``z`` (N channels): the four matrices of the paper.

    ``y``, ``y_inv``, ``z`` and ``z_inv`` are :class:`GainMatrix` modules; call
    them with a validated quality tensor.
    """

    def __init__(self, levels: int, M: int, N: int):
        super().__init__()
        if levels < 2:
            raise ValueError(f"a gained model needs at least 2 levels, got {levels}")
        self.y = GainMatrix(levels, M)
        self.y_inv = GainMatrix(levels, M)
        self.z = GainMatrix(levels, N)
        self.z_inv = GainMatrix(levels, N)

    @property
    def levels(self) -> int:
        return self.y.levels

    @torch.no_grad()
    def init_from_lambdas(self, lambdas: Sequence[float], reference: float) -> None:
        """Spread the levels as a uniform quantiser would need them.

        For MSE-optimised models the quantiser step scales like
        ``1 / sqrt(lambda)``, so level ``s`` starts with gain
        ``sqrt(lambda_s / reference)`` on ``y`` (inverse gain the reciprocal).
        The hyper-latent gains stay at 1: ``z`` is computed from the gained
        ``y`` and already follows its scale. With ``reference`` the lambda of
        a pretrained single-rate model, that level starts as that model.
        """
        if len(lambdas) != self.levels:
            raise ValueError(f"expected {self.levels} lambdas, got {len(lambdas)}")
        if reference <= 0 or any(lmbda <= 0 for lmbda in lambdas):
            raise ValueError("lambdas must be positive")
        logs = torch.tensor([0.5 * math.log(lmbda / reference) for lmbda in lambdas])
        self.y.log_gain.copy_(logs[:, None].expand_as(self.y.log_gain))
        self.y_inv.log_gain.copy_(-logs[:, None].expand_as(self.y_inv.log_gain))
        self.z.log_gain.zero_()
        self.z_inv.log_gain.zero_()
