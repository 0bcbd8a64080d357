"""Cheng et al.'s attention model with the discretised Gaussian mixture
likelihood of their paper (K = 3), single-rate (``cheng2020-attn-gmm``) and
gained (``gained-cheng2020-attn``).

CompressAI's ``Cheng2020Attention`` keeps the architecture of the paper but
codes with a single Gaussian; these classes put back the mixture
(:class:`gainedvae.entropy.GMMConditional`, built on CompressAI's
``GaussianMixtureConditional``): the entropy-parameters network predicts
``3*K*N`` numbers per position (weight logits, means, scales of ``K``
components) and ``y`` is quantised as ``round(y)``.

Coding is serial (raster-scan 5x5 masked context, as in the paper) with one
CDF per latent element built at coding time; the window of every element is
centred on its rounded mixture mean (see :mod:`gainedvae.entropy`). Because
``y_hat = round(y)`` does not depend on the predicted parameters, the
eval-mode ``forward`` stays parallel and still reproduces the decoder's
reconstruction exactly; the encoder and the decoder share
:func:`~gainedvae.models.context.raster_scan` so that they build identical CDFs.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.models import Cheng2020Attention
from torch import Tensor, nn

from ..entropy import GMMConditional, check_latent
from ..rans import rans_decoder
from .rate import DEFAULT_LAMBDAS
from .context import GainedContextModel, raster_scan

__all__ = ["Cheng2020AttentionGMM", "GainedCheng2020AttentionGMM"]


def _check_widths(N: int, M: Optional[int]) -> None:
    if M is not None and int(M) != int(N):
        raise ValueError(f"cheng2020 models have M = N (the latent has N channels); got N={N}, M={M}: pass M={N} or omit it")


class Cheng2020AttentionGMM(Cheng2020Attention):
    r"""Cheng, Sun, Takeuchi, Katto, "Learned Image Compression with
    Discretized Gaussian Mixture Likelihoods and Attention Modules", CVPR 2020:
    CompressAI's ``cheng2020-attn`` backbone with the paper's Gaussian mixture.

    Registry name ``cheng2020-attn-gmm`` (single rate, CompressAI calling
    convention: ``forward(x)``, ``compress(x)`` and ``decompress(strings,
    shape)`` on images padded to a multiple of 64, ``shape`` = size of ``z``).

    .. code-block:: none

                  ┌───┐    y     ┌───┐  z  ┌───┐ z_hat      z_hat ┌───┐
            x ──►─┤g_a├──►─┬──►──┤h_a├──►──┤ Q ├───►───·⋯⋯·───►───┤h_s├─┐
                  └───┘    │     └───┘     └───┘        EB        └───┘ │
                           ▼                                            │
                         ┌─┴─┐                                          │
                         │ Q │ round(y)                          params ▼
                         └─┬─┘                                          │
                     y_hat ▼                  ┌─────┐                   │
                           ├──────────►───────┤  CP ├────────►──────────┤
                           │                  └─────┘                   │
                           ▼                                            ▼
                           ·                  ┌─────┐                   │
                      GMM  : ◄────────◄───────┤  EP ├────────◄──────────┘
                           ·  K x (weight,    └─────┘
                           │   mean, scale)
                  ┌───┐    │
        x_hat ──◄─┤g_s├────┘
                  └───┘

        g_a, g_s with residual and attention blocks (CompressAI's Cheng2020Attention)
        EB = entropy bottleneck, CP = context prediction (5x5 masked conv),
        EP = entropy parameters (1x1 convs, 3*K*N outputs)

    Args:
        N (int): channels of everything (the latent too)
        M (int, optional): must equal ``N`` if given (checkpoints record it)
        K (int): mixture components
    """

    def __init__(self, N: int = 192, M: Optional[int] = None, K: int = 3, **kwargs):
        _check_widths(N, M)
        super().__init__(N=N, **kwargs)
        self.K = int(K)
        self.entropy_parameters[-1] = nn.Conv2d(N * 8 // 3, 3 * self.K * N, 1)
        self.gaussian_conditional = GMMConditional(K=self.K)

    def config_extra(self):
        """Constructor arguments beyond N and M that a checkpoint records."""
        return {"K": self.K}

    # -- y coding (shared with the gained model) ------------------------------

    def _context(self, y_hat: Tensor) -> Tensor:
        cp = self.context_prediction
        return F.conv2d(y_hat, cp.weight * cp.mask, cp.bias, padding=cp.padding)

    def _y_forward(self, y: Tensor, params: Tensor) -> Tuple[Tensor, Tensor]:
        gmm = self.gaussian_conditional
        y_hat = gmm.quantize(y, "noise") if self.training else torch.round(y)
        gp = self.entropy_parameters(torch.cat((params, self._context(y_hat)), dim=1))
        _, y_likelihoods = gmm(y, gp)
        return y_hat, y_likelihoods

    def _y_compress(self, y: Tensor, params: Tensor) -> List[bytes]:
        gmm = self.gaussian_conditional
        B, M, H, W = y.shape
        check_latent(y)
        y_round = torch.round(y)
        gps: List[List[Tensor]] = [[] for _ in range(B)]

        def step(i: int, h: int, w: int, gp: Tensor) -> Tensor:
            gps[i].append(gp)
            return y_round[i : i + 1, :, h : h + 1, w : w + 1]

        raster_scan(self, params, M, step)  # the decoder's parameters, position by position
        strings = []
        for i in range(B):
            nonzero = y_round[i].reshape(M, -1).abs().sum(1) != 0
            channels = torch.nonzero(nonzero).flatten()
            values = y_round[i, channels].reshape(channels.numel(), H * W)
            flat = [gmm.flat_params(gp, channels) for gp in gps[i]]  # one group per position, raster order
            strings.append(gmm.encode_image(nonzero, [values[:, j] for j in range(H * W)], flat))
        return strings

    def _y_decompress(self, strings: Sequence[bytes], params: Tensor) -> Tensor:
        gmm = self.gaussian_conditional
        M = self.M
        if len(strings) != params.size(0):
            raise ValueError(f"got {len(strings)} y strings for {params.size(0)} hyper-latents")
        states = []
        for string in strings:
            window, nonzero, stream = gmm.read_header(string, M)
            channels = torch.nonzero(nonzero).flatten()
            n_symbols = channels.numel() * params.size(2) * params.size(3)
            decoder = rans_decoder(stream, n_symbols) if n_symbols else None
            states.append((window, channels, decoder))

        def step(i: int, h: int, w: int, gp: Tensor) -> Tensor:
            window, channels, decoder = states[i]
            out = gp.new_zeros((1, M, 1, 1))
            if channels.numel():
                flat = gmm.flat_params(gp, channels)
                out[0, channels, 0, 0] = gmm.decode_elements(decoder, flat, gmm.centres(flat[1], flat[2]), window)
            return out

        return raster_scan(self, params, M, step)

    # -- single-rate API (CompressAI convention) -------------------------------

    def forward(self, x: Tensor):
        y = self.g_a(x)
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        y_hat, y_likelihoods = self._y_forward(y, self.h_s(z_hat))
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def compress(self, x: Tensor):
        y = self.g_a(x)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        y_strings = self._y_compress(y, self.h_s(z_hat))
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}

    def decompress(self, strings, shape):
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("strings must be [y_strings, z_strings] as returned by compress()")
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        y_hat = self._y_decompress(strings[0], self.h_s(z_hat))
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}


class GainedCheng2020AttentionGMM(GainedContextModel, Cheng2020AttentionGMM):
    r""":class:`Cheng2020AttentionGMM` with gain units on ``y`` and ``z``
    (Cui et al., CVPR 2021). Registry name ``gained-cheng2020-attn``; the
    gained data flow of :class:`~gainedvae.models.context.GainedContextModel`
    (``forward(x, level=|quality=)``, ``compress(x, quality)``,
    ``decompress(strings, shape, quality)`` with the image size as ``shape``).
    Where each part lives:

    .. code-block:: none

        x ─► g_a ─► ×G_y(q) ─► h_a ─► ×G_z(q) ─► EB ─► ×IG_z(q) ─► h_s ─► params    GainedModel (models/base.py)
        y, params ─► round(y), CP + EP ─► GMM (K x weight, mean, scale) ─► rANS       _y_* of Cheng2020AttentionGMM
        y_hat ─► ×IG_y(q) ─► g_s ─► x_hat                                           GainedModel; g_a, g_s: CompressAI

    Args:
        N (int): channels of everything (the latent too)
        M (int, optional): must equal ``N`` if given (checkpoints record it)
        lambdas (sequence of float): one lambda per level, increasing
        K (int): mixture components
    """

    def __init__(self, N: int = 192, M: Optional[int] = None, lambdas: Sequence[float] = DEFAULT_LAMBDAS, K: int = 3, **kwargs):
        super().__init__(N=N, M=M, K=K, **kwargs)
        self._init_gains(lambdas, N, N)

    # y coding: the single-rate twin's (GainedModel's abstract hooks come first in the MRO)
    _y_forward = Cheng2020AttentionGMM._y_forward
    _y_compress = Cheng2020AttentionGMM._y_compress
    _y_decompress = Cheng2020AttentionGMM._y_decompress
