"""Gained context models: the joint autoregressive model of Minnen et al.
(``gained-mbt2018``) and its checkerboard-context variant (He et al.,
``gained-mbt2018-checkerboard``), on CompressAI's
``JointAutoregressiveHierarchicalPriors`` backbone.

The gained data flow is written once, in :class:`~gainedvae.models.base.GainedModel`;
a context model only says how it codes ``y`` given the hyper-synthesis output
(``_y_forward``, ``_y_compress``, ``_y_decompress``).
The gains come from :mod:`gainedvae.gain` through :class:`GainedModel`, as
for the hyperprior models.

Exactness. The decoder of a context model predicts each symbol's mean from
already-decoded symbols, so the reconstruction is only reproducible if the
encoder quantises ``y`` with exactly those means. Both models here compute
the context in one function shared by the encoder, the decoder and the
eval-mode ``forward`` (same operations on tensors of the same shapes), so
``decompress(compress(x, q))`` equals ``forward(x, quality=q)["x_hat"].clamp(0, 1)``
bit for bit. For the serial model this makes the eval-mode ``forward`` as
slow as the encoder (one small network evaluation per latent position); in
training mode ``forward`` is CompressAI's parallel noise-based estimate.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder
from compressai.layers import CheckerboardMaskedConv2d
from compressai.models import JointAutoregressiveHierarchicalPriors
from torch import Tensor, nn

from .. import tiling
from ..entropy import check_latent
from ..rans import rans_decoder
from .base import GainedModel
from .rate import DEFAULT_LAMBDAS

__all__ = ["GainedCheckerboard", "GainedContextModel", "GainedJointAutoregressive", "raster_scan"]


class GainedContextModel(GainedModel):
    r"""Gained data flow of a hyperprior model with a context model on ``y``.

    .. code-block:: none

                  ┌───┐  y  ┌────┐     ┌───┐  z  ┌────┐     ┌───┐ z_hat ┌─────┐     ┌───┐
            x ──►─┤g_a├──►──┤×G_y├──┬──┤h_a├──►──┤×G_z├──►──┤ Q ├───►───┤×IG_z├──►──┤h_s├──┐
                  └───┘     └────┘  │  └───┘     └────┘     └───┘  EB   └─────┘     └───┘  │
                                    ▼                                                params │
                                  ┌─┴─┐     y_hat       ┌────┐       ┌────┐                 │
                                  │ Q ├───────►─────────┤ CP ├───►───┤ EP ├────────◄────────┘
                                  └─┬─┘                 └────┘       └─┬──┘
                                    │ GC ◄──── means, scales (or GMM) ─┘
                       ┌─────┐      │
        x_hat ──◄─┤g_s├┤×IG_y├──◄───┘ y_hat (gained, quantised: what the context model sees)
                  └───┘└─────┘

        G_y, IG_y, G_z, IG_z = gain / inverse-gain vectors at the quality q
        EB = entropy bottleneck, GC = Gaussian conditional (or GMM),
        CP = context prediction (masked convolution), EP = entropy parameters

    The data flow is :class:`~gainedvae.models.base.GainedModel`'s; the
    context model sees the gained, quantised latent. Subclasses implement
    ``_y_forward(y, params) -> (y_hat, y_likelihoods)``,
    ``_y_compress(y, params) -> [bytes per image]`` and
    ``_y_decompress(strings, params) -> y_hat`` for the gained ``y`` and the
    hyper-synthesis output ``params`` (in eval mode ``_y_forward`` returns what
    the decoder reconstructs, see the module docstring).

    A mean-scale hyperprior (``mbt2018-mean``: the same ``g_a``, ``g_s``, ``h_a``, ``h_s``) loads as
    the backbone (:meth:`load_backbone_state_dict`, ``train_gain.py --init``): the context layers
    keep their fresh initialisation and are trained from scratch.
    """

    extra_key_prefixes = GainedModel.extra_key_prefixes + ("context_prediction.", "entropy_parameters.")


def _as_vector_layers(seq: nn.Sequential):
    """``seq`` (1x1 convolutions and pointwise activations) as layers on ``(1, C)`` vectors."""
    layers = []
    for m in seq:
        if isinstance(m, nn.Conv2d):
            if m.kernel_size != (1, 1) or m.groups != 1:
                raise ValueError("the entropy-parameters network must be pointwise (1x1 convolutions)")
            layers.append((m.weight.reshape(m.out_channels, -1), m.bias))
        else:
            layers.append(m)
    return layers


def raster_scan(model, params: Tensor, channels: int, step: Callable[[int, int, int, Tensor], Tensor]) -> Tensor:
    """The serial context pass of the encoder, the decoder and the eval forward.

    For each image ``i`` and latent position ``(h, w)`` in raster order it
    evaluates the masked ``k x k`` context convolution on the symbols placed
    so far (zeros elsewhere), the entropy-parameters network on
    ``cat(params[h, w], context)``, and stores ``step(i, h, w, gp)`` (a
    ``(1, channels, 1, 1)`` tensor of reconstructed latents; ``gp`` is
    ``(1, P, 1, 1)``) at ``(h, w)``. Every caller runs exactly these
    operations on tensors of the same shapes, which is what makes the coder's
    parameters reproducible bit for bit.

    Per position the context convolution (restricted to its unmasked taps)
    and the 1x1 convolutions of the entropy-parameters network are evaluated
    as matrix-vector products: the same function as the convolutions, several
    times faster than convolution calls on 1x1 outputs.

    Returns the ``(B, channels, H, W)`` reconstructed latent.
    """
    cp = model.context_prediction
    k = cp.kernel_size[0]
    p = k // 2
    taps = torch.nonzero(cp.mask.reshape(-1, k * k).any(0)).flatten()
    weight = (cp.weight * cp.mask).reshape(cp.out_channels, channels, k * k)[:, :, taps].reshape(cp.out_channels, -1)
    layers = _as_vector_layers(model.entropy_parameters)
    B, _, H, W = params.shape
    hyper = params.permute(0, 2, 3, 1).contiguous()  # (B, H, W, P): one row per position
    y_hat = params.new_zeros((B, channels, H + 2 * p, W + 2 * p))
    for i in range(B):
        for h in range(H):
            for w in range(W):
                window = y_hat[i, :, h : h + k, w : w + k].reshape(channels, k * k)[:, taps].reshape(1, -1)
                v = torch.cat((hyper[i, h, w][None], F.linear(window, weight, cp.bias)), dim=1)
                for layer in layers:
                    v = F.linear(v, *layer) if isinstance(layer, tuple) else layer(v)
                y_hat[i, :, h + p, w + p] = step(i, h, w, v.reshape(1, -1, 1, 1)).reshape(-1)
    return y_hat[:, :, p : p + H, p : p + W].contiguous()


class GainedJointAutoregressive(GainedContextModel, JointAutoregressiveHierarchicalPriors):
    r"""Joint autoregressive and hierarchical priors (Minnen, Ballé, Toderici,
    "Joint Autoregressive and Hierarchical Priors for Learned Image
    Compression", NeurIPS 2018) with gain units (Cui et al., CVPR 2021).

    Registry name ``gained-mbt2018``. Backbone identical to CompressAI's
    ``mbt2018`` (a CompressAI state dict loads with
    :meth:`load_backbone_state_dict`); see :class:`GainedContextModel` for the
    data flow. Serial raster-scan context (5x5 masked convolution): coding
    and the eval-mode ``forward`` evaluate the entropy-parameters network once
    per latent position.

    Args:
        N (int): channels of the transforms and of ``z``
        M (int): channels of ``y``
        lambdas (sequence of float): one lambda per level, increasing
    """

    analysis_tiling = tiling.ANALYSIS  # CompressAI's 4-layer g_a / g_s: tiles without gradients
    synthesis_tiling = tiling.SYNTHESIS

    def __init__(self, N: int = 192, M: int = 192, lambdas: Sequence[float] = DEFAULT_LAMBDAS, **kwargs):
        super().__init__(N=N, M=M, **kwargs)
        self._init_gains(lambdas, M, N)

    def _serial(self, params: Tensor, y: Optional[Tensor] = None, decoders=None, record: bool = False):
        """Raster pass quantising ``y`` (encoder / eval) or decoding from ``decoders``.

        Returns ``(y_hat, scales, means, symbols, indexes)``; the last two are
        per-image lists, filled when ``record`` (for the encoder).
        """
        gc = self.gaussian_conditional
        B, _, H, W = params.shape
        M = self.M
        scales = params.new_zeros((B, M, H, W))
        means = params.new_zeros((B, M, H, W))
        symbols: List[List[int]] = [[] for _ in range(B)]
        indexes: List[List[int]] = [[] for _ in range(B)]

        def step(i: int, h: int, w: int, gp: Tensor) -> Tensor:
            s, m = gp.chunk(2, 1)
            scales[i : i + 1, :, h : h + 1, w : w + 1] = s
            means[i : i + 1, :, h : h + 1, w : w + 1] = m
            if decoders is None:
                sym = gc.quantize(y[i : i + 1, :, h : h + 1, w : w + 1], "symbols", m)
                if record:
                    symbols[i].extend(sym.reshape(-1).tolist())
                    indexes[i].extend(gc.build_indexes(s).reshape(-1).tolist())
            else:
                values = decoders[i].decode_stream(*gc.compact_coder_args(gc.build_indexes(s)))
                sym = torch.tensor(values, dtype=torch.int32).reshape(1, M, 1, 1)
            return gc.dequantize(sym.to(m.device), m)

        y_hat = raster_scan(self, params, M, step)
        return y_hat, scales, means, symbols, indexes

    def _y_forward(self, y: Tensor, params: Tensor) -> Tuple[Tensor, Tensor]:
        gc = self.gaussian_conditional
        if self.training:  # CompressAI's parallel estimate
            y_hat = gc.quantize(y, "noise")
            gp = self.entropy_parameters(torch.cat((params, self.context_prediction(y_hat)), dim=1))
            scales, means = gp.chunk(2, 1)
            _, y_likelihoods = gc(y, scales, means=means)
            return y_hat, y_likelihoods
        with torch.no_grad():
            y_hat, scales, means, _, _ = self._serial(params, y=y)
        # round(y - means) + means with the coder's means: the likelihoods of y_hat
        _, y_likelihoods = gc(y, scales, means=means)
        return y_hat, y_likelihoods

    def _y_compress(self, y: Tensor, params: Tensor) -> List[bytes]:
        check_latent(y)
        _, _, _, symbols, indexes = self._serial(params, y=y, record=True)
        tables = self.gaussian_conditional.coder_tables()
        strings = []
        for sym, idx in zip(symbols, indexes):
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(sym, idx, *tables)
            strings.append(encoder.flush())
        return strings

    def _y_decompress(self, strings: Sequence[bytes], params: Tensor) -> Tensor:
        if len(strings) != params.size(0):
            raise ValueError(f"got {len(strings)} y strings for {params.size(0)} hyper-latents")
        n_symbols = self.M * params.size(2) * params.size(3)
        decoders = [rans_decoder(s, n_symbols) for s in strings]
        y_hat, _, _, _, _ = self._serial(params, decoders=decoders)
        return y_hat


class GainedCheckerboard(GainedJointAutoregressive):
    r"""``gained-mbt2018`` with the checkerboard context of He et al.,
    "Checkerboard Context Model for Efficient Learned Image Compression",
    CVPR 2021 (CompressAI's ``Cheng2020AnchorCheckerboard`` uses the same
    context on another backbone), and gain units (Cui et al., CVPR 2021).

    Registry name ``gained-mbt2018-checkerboard``. Same modules and keys as
    ``mbt2018``; ``context_prediction`` is a
    :class:`~compressai.layers.CheckerboardMaskedConv2d`. Decoding takes two
    parallel passes instead of one network evaluation per position:

    .. code-block:: none

        1. anchors (h + w even), parameters from the hyperprior alone:   ◌ □ ◌ □
                                                                          □ ◌ □ ◌
        2. non-anchors, context from the decoded anchors:                 ■ ◌ ■ ◌
                                                                          ◌ ■ ◌ ■

    One rANS string per image holds the anchors, then the non-anchors. Arguments,
    transforms and tiling are :class:`GainedJointAutoregressive`'s; the ``_y_*``
    coders are its own.
    """

    def __init__(self, N: int = 192, M: int = 192, lambdas: Sequence[float] = DEFAULT_LAMBDAS, **kwargs):
        super().__init__(N=N, M=M, lambdas=lambdas, **kwargs)
        self.context_prediction = CheckerboardMaskedConv2d(M, 2 * M, kernel_size=5, padding=2, stride=1)
        # Our own copy of the mask (not in the state dict): loading weights
        # saved from a raster-context model cannot turn this into one.
        self.register_buffer("_checkerboard_mask", self.context_prediction.mask.clone(), persistent=False)

    @staticmethod
    def _anchors(H: int, W: int, device) -> Tensor:
        hh = torch.arange(H, device=device)[:, None]
        ww = torch.arange(W, device=device)[None, :]
        return (hh + ww) % 2 == 0

    def _context(self, y_hat_anchors: Tensor) -> Tensor:
        cp = self.context_prediction
        return F.conv2d(y_hat_anchors, cp.weight * self._checkerboard_mask, cp.bias, padding=cp.padding)

    def _training_params(self, y_hat: Tensor, params: Tensor) -> Tensor:
        """Entropy parameters of both passes in one network evaluation (training only).

        The entropy-parameters network is pointwise, so evaluating it once on
        ``cat(params, ctx)`` with the context zeroed at the anchors gives pass
        1's parameters (hyperprior alone) at the anchors and pass 2's
        (context of the anchors) elsewhere, as CompressAI's
        ``Cheng2020AnchorCheckerboard.forward`` does.
        """
        anchors = self._anchors(y_hat.size(2), y_hat.size(3), y_hat.device)
        ctx = torch.where(anchors, 0, self._context(torch.where(anchors, y_hat, 0)))
        return self.entropy_parameters(torch.cat((params, ctx), dim=1))

    def _two_pass(self, params: Tensor, y: Optional[Tensor] = None, decoders=None, record: bool = False):
        """Anchors then non-anchors, quantising ``y`` or decoding from ``decoders``.

        Returns ``(y_hat, scales, means, strings-or-None)``.
        """
        gc = self.gaussian_conditional
        B, _, H, W = params.shape
        M = self.M
        anchors = self._anchors(H, W, params.device)
        encoders = [BufferedRansEncoder() for _ in range(B)] if record else None
        tables = gc.coder_tables() if (record or decoders is not None) else None
        y_hat = params.new_zeros((B, M, H, W))
        scales = params.new_zeros((B, M, H, W))
        means = params.new_zeros((B, M, H, W))
        for selected, ctx in ((anchors, None), (~anchors, True)):
            if ctx is None:
                ctx = params.new_zeros((B, 2 * M, H, W))
            else:
                ctx = self._context(y_hat)  # y_hat holds the anchors, zeros elsewhere
            s, m = self.entropy_parameters(torch.cat((params, ctx), dim=1)).chunk(2, 1)
            if decoders is None:
                sym = gc.quantize(y, "symbols", m)
                if record:
                    idx = gc.build_indexes(s)[:, :, selected]
                    for i in range(B):
                        encoders[i].encode_with_indexes(
                            sym[i][:, selected].reshape(-1).tolist(), idx[i].reshape(-1).tolist(), *tables
                        )
            else:
                idx = gc.build_indexes(s)[:, :, selected]
                sym = torch.zeros((B, M, H, W), dtype=torch.int32)
                for i in range(B):
                    values = decoders[i].decode_stream(idx[i].reshape(-1).tolist(), *tables)
                    sym[i][:, selected.cpu()] = torch.tensor(values, dtype=torch.int32).reshape(M, -1)
                sym = sym.to(m.device)
            y_hat = torch.where(selected, gc.dequantize(sym, m), y_hat)
            scales = torch.where(selected, s, scales)
            means = torch.where(selected, m, means)
        strings = [e.flush() for e in encoders] if record else None
        return y_hat, scales, means, strings

    def _y_forward(self, y: Tensor, params: Tensor) -> Tuple[Tensor, Tensor]:
        gc = self.gaussian_conditional
        if self.training:
            y_hat = gc.quantize(y, "noise")
            scales, means = self._training_params(y_hat, params).chunk(2, 1)
            _, y_likelihoods = gc(y, scales, means=means)
            return y_hat, y_likelihoods
        y_hat, scales, means, _ = self._two_pass(params, y=y)
        _, y_likelihoods = gc(y, scales, means=means)
        return y_hat, y_likelihoods

    def _y_compress(self, y: Tensor, params: Tensor) -> List[bytes]:
        check_latent(y)
        return self._two_pass(params, y=y, record=True)[3]

    def _y_decompress(self, strings: Sequence[bytes], params: Tensor) -> Tensor:
        if len(strings) != params.size(0):
            raise ValueError(f"got {len(strings)} y strings for {params.size(0)} hyper-latents")
        n_symbols = self.M * params.size(2) * params.size(3)
        decoders = [rans_decoder(s, n_symbols) for s in strings]
        return self._two_pass(params, decoders=decoders)[0]
