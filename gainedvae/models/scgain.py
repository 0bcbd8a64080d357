r"""Spatial-channel gain (``gained-scgain``): quality maps on top of channel gains.

The mean-scale hyperprior with the channel gain units of
:class:`~gainedvae.models.hyperprior.GainedHyperprior` (global quality ``q``)
plus spatial feature transforms (SFT; Wang et al., CVPR 2018) driven by a
per-pixel quality map ``m(x)`` in ``[0, 1]``, as in Song et al.,
"Variable-Rate Deep Image Compression through Spatially-Adaptive Feature
Transform", ICCV 2021.

.. code-block:: none

     x, m ──► cond_a ──► c1 (/2)  c2 (/4)  c3 (/8)  c4 (/16)
                          │        │        │        │
     x ──► conv─GDN─SFT ──► conv─GDN─SFT ──► conv─GDN─SFT ──► conv─SFT ──► y ──► ×G_y(q) ──► ...
                                                                        (hyperprior as GainedHyperprior)
     ... y_hat ×IG_y(q) ──┬─► SFT─deconv─IGDN─SFT ──► deconv─IGDN─SFT ──► deconv─IGDN─SFT ──► deconv ──► x_hat
                          │    │                 │                   │                 │
     z_hat ×IG_z(q) ──► cond_s(z_hat, y_hat) ──► d0 (/16)   d1 (/8)   d2 (/4)   d3 (/2)

    SFT(h, c) = h * exp(2 tanh(gamma(c) / 2)) + beta(c)   (per channel and position;
                ~ h * (1 + gamma) + beta near 0, bounded scale for stable training)

The decoder receives no map: its conditions are computed from the decoded
hyper-latent ``z_hat`` (and ``y_hat``), so the bitstream is the channel-gain
model's ``[y_strings, z_strings]`` and ``decompress(strings, shape, quality)``
is unchanged. The gain units are the shared ones (:mod:`gainedvae.gain`).

Backbone keys (``g_a``, ``g_s``, ``h_a``, ``h_s``, entropy models) are
CompressAI's ``mbt2018-mean``; the SFT parts live under ``cond_a.``,
``sft_a.``, ``cond_s.`` and ``sft_s.``. The last layers of every SFT start at
zero, so a fresh model (or one loaded from an ``mbt2018-mean`` /
``gained-mbt2018-mean`` checkpoint) ignores the map until it is trained.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from ..gain import QualityLike
from ..qmap import QmapLike, prepare_qmap
from .rate import DEFAULT_LAMBDAS, pad_to_multiple
from .hyperprior import GainedMeanScaleHyperprior


def sft_channels(N: int) -> int:
    """Width of the condition networks and SFT layers: ``max(16, N // 2)`` (64 for N = 128)."""
    return max(16, int(N) // 2)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.1)  # never in place: condition features are reused


class SFT(nn.Module):
    """Spatial feature transform ``h * exp(s tanh(gamma(c) / s)) + beta(c)``, ``s = 2``.

    To first order the SFT of Wang et al. (``h * (1 + gamma) + beta``); the
    scale is bounded to ``[e^-2, e^2]`` per layer, which keeps training with
    the larger learning rates of small models from diverging. ``(gamma, beta)``
    come from one 3x3 conv (zero-initialised: identity at the start) after a
    shared 3x3 conv + LeakyReLU on the condition ``c``.
    """

    def __init__(self, channels: int, cond_channels: int):
        super().__init__()
        hidden = max(16, cond_channels)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), _act())
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)  # one conv, two outputs
        nn.init.zeros_(self.gamma_beta.weight)
        nn.init.zeros_(self.gamma_beta.bias)
        self.max_log_scale = 2.0

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        if cond.shape[-2:] != h.shape[-2:]:
            cond = F.adaptive_avg_pool2d(cond, h.shape[-2:])
        gamma, beta = self.gamma_beta(self.shared(cond)).chunk(2, dim=1)
        return h * torch.exp(self.max_log_scale * torch.tanh(gamma / self.max_log_scale)) + beta


class MapCondition(nn.Module):
    """Encoder-side conditions from the image and its quality map, at 1/2, 1/4, 1/8, 1/16:
    ``C`` learned channels plus the map itself, average-pooled to that scale (so
    every SFT sees the map directly; ``C + 1`` channels in all)."""

    def __init__(self, C: int):
        super().__init__()
        self.stem = nn.Sequential(conv(4, C, 5, 2), _act(), conv(C, C, 3, 1))
        self.down = nn.ModuleList([nn.Sequential(_act(), conv(C, C, 3, 2)) for _ in range(3)])

    def forward(self, x: Tensor, qmap: Tensor) -> List[Tensor]:
        m = 2 * qmap - 1  # centred map
        c = self.stem(torch.cat([m, x], dim=1))
        out = [c]
        for layer in self.down:
            c = layer(c)
            out.append(c)
        return [torch.cat([c, F.adaptive_avg_pool2d(m, c.shape[-2:])], dim=1) for c in out]


class LatentCondition(nn.Module):
    """Decoder-side conditions from ``z_hat`` (upsampled to ``y``'s grid) and ``y_hat``,
    at 1/16, 1/8, 1/4, 1/2."""

    def __init__(self, N: int, M: int, C: int):
        super().__init__()
        self.up_z = nn.Sequential(deconv(N, C, 5, 2), _act(), deconv(C, C, 5, 2))
        self.fuse = nn.Sequential(_act(), conv(C + M, C, 3, 1))
        self.up = nn.ModuleList([nn.Sequential(_act(), deconv(C, C, 3, 2)) for _ in range(3)])

    def forward(self, y_hat: Tensor, z_hat: Tensor) -> List[Tensor]:
        c = self.fuse(torch.cat([self.up_z(z_hat), y_hat], dim=1))
        out = [c]
        for layer in self.up:
            c = layer(c)
            out.append(c)
        return out


class SCGainedMeanScaleHyperprior(GainedMeanScaleHyperprior):
    r"""Mean-scale hyperprior with channel gain units and quality-map SFTs.

    Registry name ``gained-scgain``. Everything of
    :class:`~gainedvae.models.hyperprior.GainedMeanScaleHyperprior` holds
    (``level`` / ``quality``, any image size, real rANS bitstreams); in
    addition :meth:`forward`, :meth:`analysis` and :meth:`compress` take a
    quality map ``qmap`` (see :func:`gainedvae.qmap.prepare_qmap`: tensor,
    number or grayscale image path; default uniform 0.5). :meth:`decompress`
    takes none.

    Args:
        N (int): channels of the transforms and of ``z``
        M (int): channels of ``y``
        lambdas (sequence of float): one lambda per level, increasing

    The SFT width is :func:`sft_channels` ``(N)``, so ``N``, ``M`` and
    ``lambdas`` rebuild the model (what checkpoints record).
    """

    # its analysis / synthesis are modulated by the quality map (SFT layers): not tiled
    analysis_tiling = None
    synthesis_tiling = None

    extra_key_prefixes: Tuple[str, ...] = GainedMeanScaleHyperprior.extra_key_prefixes + (
        "cond_a.",
        "sft_a.",
        "cond_s.",
        "sft_s.",
    )
    #: ``forward`` / ``compress`` take ``qmap=`` (used by the training loop and the evaluation).
    takes_qmap = True

    def __init__(self, N: int = 128, M: int = 192, lambdas: Sequence[float] = DEFAULT_LAMBDAS, **kwargs):
        super().__init__(N=N, M=M, lambdas=lambdas, **kwargs)
        C = sft_channels(N)
        self.cond_a = MapCondition(C)
        self.sft_a = nn.ModuleList([SFT(N, C + 1), SFT(N, C + 1), SFT(N, C + 1), SFT(M, C + 1)])
        self.cond_s = LatentCondition(N, M, C)
        self.sft_s = nn.ModuleList([SFT(M, C), SFT(N, C), SFT(N, C), SFT(N, C)])

    # -- transforms ---------------------------------------------------------

    def _analysis_transform(self, x: Tensor, qmap: Tensor) -> Tensor:
        """``g_a`` with an SFT after each stage (inputs padded to the downsampling factor)."""
        conds = self.cond_a(x, qmap)
        h = x
        for i in range(3):
            h = self.g_a[2 * i + 1](self.g_a[2 * i](h))  # conv, GDN
            h = self.sft_a[i](h, conds[i])
        return self.sft_a[3](self.g_a[6](h), conds[3])

    def _synthesis_transform(self, y_hat: Tensor, z_hat: Tensor) -> Tensor:
        """``g_s`` with an SFT before it and after each inverse GDN, conditioned on
        the (inverse-gained) decoded latents only."""
        conds = self.cond_s(y_hat, z_hat)
        h = self.sft_s[0](y_hat, conds[0])
        for i in range(3):
            h = self.g_s[2 * i + 1](self.g_s[2 * i](h))  # deconv, IGDN
            h = self.sft_s[i + 1](h, conds[i + 1])
        return self.g_s[6](h)

    def analysis(self, x: Tensor, qmap: QmapLike = None) -> Tensor:
        """The quality-independent part of the encoder: SFT-conditioned ``g_a``
        on the padded image and map (``qmap`` as in :func:`~gainedvae.qmap.prepare_qmap`)."""
        m = prepare_qmap(qmap, x)
        f = self.downsampling_factor
        return self._analysis_transform(pad_to_multiple(x, f), pad_to_multiple(m, f))

    def compress(self, x: Tensor, quality: QualityLike, qmap: QmapLike = None):
        """``compress(x, quality, qmap)``: the map as a tensor, a number in ``[0, 1]``
        or a grayscale image path, resized to ``x`` (default uniform 0.5). Same
        bitstream as the channel-gain models; :meth:`decompress` needs no map."""
        return super().compress(x, quality, qmap=qmap)
