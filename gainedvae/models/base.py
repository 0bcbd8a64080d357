"""The gained data flow every gained model shares: gain units around CompressAI's transforms.

Subclasses combine :class:`GainedModel` with a CompressAI backbone class
(``class GainedX(GainedModel, compressai.models.X)``) so that the backbone's
modules, state-dict keys and shapes stay exactly CompressAI's; the gains live
under ``gain.*`` (see :mod:`gainedvae.gain`). Lambdas, quality checks, padding,
latent shape, scale table and backbone loading are :class:`~gainedvae.models.rate.RateModel`'s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from compressai.ops import quantize_ste
from torch import Tensor

from ..container import NON_FINITE, CodecError, padded_size
from ..gain import LatentGains, QualityLike
from ..imageio import float_to_uint8
from ..tiling import Tiling, tiled
from .rate import RateModel


def to_float_image(x: Tensor) -> Tensor:
    """A ``uint8`` image as float in ``[0, 1]`` (``v / 255``); a float image unchanged."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def to_8bit(x: Tensor) -> Tensor:
    """A float image as ``uint8`` (:func:`gainedvae.imageio.float_to_uint8`, the rule of
    :func:`~gainedvae.imageio.tensor_to_image`) on :meth:`GainedModel.decompress`'s image.
    A NaN (a corrupt stream) has no 8-bit value: :class:`CodecError`, with the message of
    :func:`gainedvae.codec.decode`'s check."""
    if torch.isnan(x).any():  # what is left non-finite after the clamp
        raise CodecError(NON_FINITE)
    return float_to_uint8(x)


class GainedModel(RateModel, ABC):
    r"""Mixin for gained models; use it before the CompressAI class in the bases.

    A gained model codes ``L = len(lambdas)`` trained levels; ``quality`` is a
    float in ``[1, L]`` (1 = lowest rate) and ``level`` a 0-based index into
    ``lambdas`` (``quality = level + 1``); the calling convention is
    :class:`~gainedvae.models.rate.RateModel`'s.

    This class holds the gained data flow of every model, so the gains are
    applied here and nowhere else::

        y = analysis(x) × G_y(q)            z = hyper_analysis(y) × G_z(q)
        z_hat = EB(z)                       params = h_s(z_hat × IG_z(q))
        y_hat = code y given params         x_hat = synthesis(y_hat × IG_y(q), z_hat × IG_z(q))

    A family only says how it codes ``y`` given ``params``: the three abstract
    ``_y_*`` methods below (a Gaussian conditional for the hyperprior models, a
    context model for mbt2018 / cheng2020) and, where its transforms differ,
    overrides :meth:`analysis`, :meth:`_hyper_analysis` or :meth:`_synthesis_transform`.
    """

    gain: LatentGains
    extra_key_prefixes: Tuple[str, ...] = ("gain.",)

    #: How training quantises what ``h_s`` and ``g_s`` read (CompressAI's ``quantizer`` option of
    #: its latent codecs): ``"noise"``, additive uniform noise for the rate and the reconstruction
    #: alike (CompressAI's default); ``"ste"``, the rate still from the noisy latent, but ``z`` and
    #: ``y`` rounded about the medians / means the coder rounds about, with straight-through
    #: gradients, so the decoder trains on the values it will decode. A training choice only: no
    #: weights, no bitstream change. :attr:`QUANTIZERS`: what a family supports (set by
    #: :meth:`set_quantizer`).
    quantizer: str = "noise"
    QUANTIZERS: Tuple[str, ...] = ("noise",)

    def set_quantizer(self, name: str) -> None:
        if name not in self.QUANTIZERS:
            raise ValueError(f"{type(self).__name__} trains with quantizer {' or '.join(map(repr, self.QUANTIZERS))}, got {name!r}")
        self.quantizer = name

    def _z_for_synthesis(self, z: Tensor, z_hat: Tensor) -> Tensor:
        """What ``h_s`` reads in training: the bottleneck's ``z_hat`` (noise), or ``z`` rounded about
        the medians with a straight-through gradient (``quantizer == "ste"``; the medians detached:
        the aux loss alone trains them)."""
        if not (self.training and self.quantizer == "ste"):
            return z_hat
        medians = self.entropy_bottleneck._get_medians().detach()
        return quantize_ste(z - medians) + medians

    def _init_gains(self, lambdas: Sequence[float], M: int, N: int) -> None:
        self._init_rate(lambdas)
        self.gain = LatentGains(len(self.lambdas), M, N)

    def _fresh_value(self, key: str, value: Tensor) -> Tensor:
        """Gains absent from a backbone state dict start at 1 (log-gain 0)."""
        return torch.zeros_like(value) if key.startswith("gain.") else value

    # -- the hooks a family implements ------------------------------------------

    @abstractmethod
    def _y_forward(self, y: Tensor, params: Tensor) -> Tuple[Tensor, Tensor]:
        """``(y_hat, y_likelihoods)`` of the gained latent ``y`` given the hyper-synthesis
        output ``params``: noisy / straight-through in training; in eval mode exactly
        what :meth:`_y_decompress` reconstructs, with the coder's likelihoods."""

    @abstractmethod
    def _y_compress(self, y: Tensor, params: Tensor) -> List[bytes]:
        """One rANS byte string per image of the gained latent ``y`` (batch ``B``) given ``params``."""

    @abstractmethod
    def _y_decompress(self, strings: Sequence[bytes], params: Tensor) -> Tensor:
        """The quantised gained latent ``y_hat`` from :meth:`_y_compress`'s strings and the same ``params``."""

    # -- the gained data flow ------------------------------------------------

    #: How ``g_a`` and ``g_s`` run tile by tile without gradients (bounded memory for any image
    #: size, :mod:`gainedvae.tiling`); ``None``: whole. Set by the families whose transforms are
    #: CompressAI's 4-layer stride-2 stacks (receptive fields in :mod:`gainedvae.tiling`).
    analysis_tiling: Optional[Tiling] = None
    synthesis_tiling: Optional[Tiling] = None

    def analysis(self, x: Tensor) -> Tensor:
        """The quality-independent part of the encoder: ``g_a`` on the padded image.

        ``x``: float in ``[0, 1]``; where the model tiles (:attr:`analysis_tiling`, no gradients)
        also ``uint8`` (``/ 255`` per tile, so no float copy of a large image is ever made).
        """
        if self.analysis_tiling is not None and not torch.is_grad_enabled():
            size = tuple(padded_size(n, self.downsampling_factor) for n in x.shape[-2:])
            return tiled(self.g_a, x, self.analysis_tiling, size=size, prepare=to_float_image)
        return self.g_a(self.pad(x))

    def _hyper_analysis(self, y: Tensor) -> Tensor:
        return self.h_a(y)

    def _coding_params(self, z_hat: Tensor, q: Tensor) -> Tensor:
        """``h_s(z_hat × IG_z(q))`` as :meth:`compress_analysed` and :meth:`decompress`
        hand it to the ``_y_*`` coders (the encoder and the decoder call this one
        method). Float here: the context models feed decoded values back through
        float layers anyway, so their files are platform-bound (README); the
        hyperprior models override it with the fixed-point path of
        :mod:`gainedvae.exact`, bit-identical on every machine."""
        return self.h_s(z_hat * self.gain.z_inv(q))

    def _synthesis_transform(self, y_hat: Tensor, z_dec: Tensor) -> Tensor:
        """``g_s`` of the inverse-gained ``y_hat`` (``z_dec``: inverse-gained ``z_hat``)."""
        if self.synthesis_tiling is not None and not torch.is_grad_enabled():
            return tiled(self.g_s, y_hat, self.synthesis_tiling)
        return self.g_s(y_hat)

    def forward(self, x: Tensor, level: Union[int, Tensor, None] = None, quality: Optional[QualityLike] = None,
                **analysis_kwargs):
        """Training / estimation pass.

        Args:
            x: images ``(B, 3, H, W)`` in ``[0, 1]``; any size (padded internally).
            level: 0-based level index, an int for the batch or a ``(B,)``
                LongTensor per sample.
            quality: alternatively a float quality in ``[1, L]`` (scalar or ``(B,)``).
            **analysis_kwargs: passed to :meth:`analysis` (e.g. ``qmap`` for ``gained-scgain``).

        Returns:
            ``{"x_hat", "likelihoods": {"y", "z"}}`` as in CompressAI; ``x_hat``
            is cropped to ``x``'s size, the likelihoods cover the padded latents.
            In eval mode without gradients (evaluation) the entropy parameters
            come from :meth:`_coding_params`, the fixed-point path the codec uses,
            so ``x_hat`` is exactly what :meth:`decompress` returns (before
            clamping) and the likelihoods are those of the real coder; training
            (or any pass with gradients) uses the float ``h_s``.
        """
        q = self.quality_tensor(level, quality)
        if q.dim() == 1 and q.numel() != x.size(0):
            raise ValueError(f"got {q.numel()} levels/qualities for a batch of {x.size(0)} images")
        h, w = x.shape[-2:]
        y, z = self.gained_latents(self.analysis(x, **analysis_kwargs), q)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        z_dec = self._z_for_synthesis(z, z_hat) * self.gain.z_inv(q)
        if self.training or torch.is_grad_enabled():
            params = self.h_s(z_dec)  # training: the float, differentiable h_s
        elif q.dim() == 0:
            params = self._coding_params(z_hat, q)  # evaluation: what the coder uses
        else:
            params = torch.cat([self._coding_params(z_hat[i : i + 1], q[i]) for i in range(q.numel())])
        y_hat, y_likelihoods = self._y_forward(y, params)
        x_hat = self._synthesis_transform(y_hat * self.gain.y_inv(q), z_dec)
        return {
            "x_hat": x_hat[..., :h, :w],
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
        }

    def compress(self, x: Tensor, quality: QualityLike, **analysis_kwargs):
        """Entropy-code ``x`` at ``quality`` into rANS bitstreams.

        Returns:
            ``{"strings": [y_strings, z_strings], "shape": (H, W)}`` where
            ``shape`` is the image size (unlike CompressAI, which returns the
            latent size) so that :meth:`decompress` can crop the padding back.
        """
        return self.compress_analysed(self.analysis(x, **analysis_kwargs), quality, tuple(x.shape[-2:]))

    def compress_analysed(self, y: Tensor, quality: QualityLike, shape: Sequence[int]):
        """:meth:`compress` from the output of :meth:`analysis` (rate control
        runs the analysis once and only this gain-dependent part per try)."""
        q = self.scalar_quality(quality)
        return self.compress_latents(*self.gained_latents(y, q), q, shape)

    def gained_latents(self, y: Tensor, q: Tensor) -> Tuple[Tensor, Tensor]:
        """``(y × G_y(q), h_a(y × G_y(q)) × G_z(q))`` from :meth:`analysis`'s ``y``: the two
        latents the coder quantises (``q`` a quality tensor, scalar or per sample)."""
        y = y * self.gain.y(q)
        return y, self._hyper_analysis(y) * self.gain.z(q)

    def compress_latents(self, y: Tensor, z: Tensor, quality: QualityLike, shape: Sequence[int]):
        """:meth:`compress` of given gained latents ``y`` and ``z`` (:meth:`gained_latents`'s, or
        refined ones, :mod:`gainedvae.refine`): ``z`` coded by the entropy bottleneck, ``y``
        given the coding parameters of the decoded ``z_hat``, exactly as the decoder reads them."""
        q = self.scalar_quality(quality)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        y_strings = self._y_compress(y, self._coding_params(z_hat, q))
        return {"strings": [y_strings, z_strings], "shape": (int(shape[0]), int(shape[1]))}

    def relaxed(self, y: Tensor, z: Tensor, q: Tensor, rounding: Callable[[Tensor], Tensor]):
        """The coder's data flow from gained latents with ``rounding`` in place of ``round``:
        differentiable in ``y`` and ``z`` when ``rounding`` is (:mod:`gainedvae.refine`).

        ``z`` is rounded about the entropy bottleneck's medians and ``y`` about the coder's
        offsets (:meth:`_y_relaxed`), as :meth:`compress_latents` rounds them; entropy
        parameters from the float ``h_s``. Returns :meth:`forward`'s dict, ``x_hat`` of the
        padded size.
        """
        eb = self.entropy_bottleneck
        medians = eb._get_medians().detach().reshape(1, -1, 1, 1)
        z_hat = rounding(z - medians) + medians
        flat = z_hat.transpose(0, 1).reshape(z_hat.size(1), 1, -1)  # EntropyBottleneck's (C, 1, n) layout
        z_likelihoods, _, _ = eb._likelihood(flat)
        if eb.use_likelihood_bound:
            z_likelihoods = eb.likelihood_lower_bound(z_likelihoods)
        z_likelihoods = z_likelihoods.reshape(z_hat.size(1), z_hat.size(0), *z_hat.shape[2:]).transpose(0, 1)
        z_dec = z_hat * self.gain.z_inv(q)
        y_hat, y_likelihoods = self._y_relaxed(y, self.h_s(z_dec), rounding)
        x_hat = self._synthesis_transform(y_hat * self.gain.y_inv(q), z_dec)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def _y_relaxed(self, y: Tensor, params: Tensor, rounding: Callable[[Tensor], Tensor]) -> Tuple[Tensor, Tensor]:
        """``(y_hat, y_likelihoods)`` of :meth:`relaxed`: ``y`` quantised as :meth:`_y_compress`
        does with ``rounding`` in place of ``round``. A family whose coder has no such form
        (a context model: its parameters depend on the decoded neighbours) leaves this out."""
        raise NotImplementedError(f"{type(self).__name__} has no relaxed coder (latent refinement)")

    def _decode_latents(self, strings, shape: Sequence[int], quality: QualityLike) -> Tuple[Tensor, Tensor]:
        """``(y_hat × IG_y(q), z_hat × IG_z(q))`` of :meth:`compress`'s ``strings``: the input of the synthesis."""
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("strings must be [y_strings, z_strings] as returned by compress()")
        if len(strings[0]) != len(strings[1]):
            raise ValueError(f"got {len(strings[0])} y strings but {len(strings[1])} z strings")
        q = self.scalar_quality(quality)
        z_hat = self.entropy_bottleneck.decompress(strings[1], self.latent_shape((int(shape[0]), int(shape[1]))))
        y_hat = self._y_decompress(strings[0], self._coding_params(z_hat, q))
        return y_hat * self.gain.y_inv(q), z_hat * self.gain.z_inv(q)

    def decompress(self, strings, shape: Sequence[int], quality: QualityLike):
        """Decode :meth:`compress`'s ``strings`` for an image of ``shape = (H, W)``."""
        x_hat = self._synthesis_transform(*self._decode_latents(strings, shape, quality)).clamp_(0, 1)
        return {"x_hat": x_hat[..., : int(shape[0]), : int(shape[1])]}

    def decompress_8bit(self, strings, shape: Sequence[int], quality: QualityLike) -> Tensor:
        """:meth:`decompress`'s image of one file as ``uint8`` ``(H, W, 3)`` (:func:`to_8bit`: the
        pixels of ``tensor_to_image(decompress(...)["x_hat"])``).

        Where ``g_s`` tiles (:attr:`synthesis_tiling`, no gradients), each tile is converted as it
        is produced and written into the preallocated result, cropped: the float image of the full
        size (288 MB at 6000x4000, and its conversion) never exists; the tiles are those of
        :meth:`decompress`, so are the values.
        """
        y_dec, z_dec = self._decode_latents(strings, shape, quality)
        if y_dec.size(0) != 1:
            raise ValueError(f"decompress_8bit decodes one image, got a batch of {y_dec.size(0)}")
        h, w = int(shape[0]), int(shape[1])
        out = torch.empty(h, w, 3, dtype=torch.uint8, device=y_dec.device)
        planes = out.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) view of the (H, W, 3) result
        if self.synthesis_tiling is not None and not torch.is_grad_enabled():
            tiled(self.g_s, y_dec, self.synthesis_tiling, finish=to_8bit, out=planes)
        else:
            planes.copy_(to_8bit(self._synthesis_transform(y_dec, z_dec)[..., :h, :w]))
        return out
