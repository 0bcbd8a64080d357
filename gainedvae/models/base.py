"""What every gained model shares: lambdas, gain units, quality checks, padding.

Subclasses combine :class:`GainedModel` with a CompressAI backbone class
(``class GainedX(GainedModel, compressai.models.X)``) so that the backbone's
modules, state-dict keys and shapes stay exactly CompressAI's; the gains live
under ``gain.*`` (see :mod:`gainedvae.gain`).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..gain import LatentGains, QualityLike, check_quality, level_to_quality
from ..tiling import Tiling, tiled

#: CompressAI's MSE lambdas for qualities 1..8 (``compressai.zoo``).
DEFAULT_LAMBDAS: Tuple[float, ...] = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)


def validate_lambdas(lambdas: Sequence[float]) -> Tuple[float, ...]:
    """Return ``lambdas`` as a tuple of floats; they must be >= 2, positive, increasing."""
    values = tuple(float(v) for v in lambdas)
    if len(values) < 2:
        raise ValueError(f"a gained model needs at least 2 lambdas, got {len(values)}")
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"lambdas must be positive and finite, got {list(values)}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"lambdas must be strictly increasing (quality 1 = lowest rate), got {list(values)}")
    return values


def pad_to_multiple(x: Tensor, factor: int) -> Tensor:
    """Replicate-pad ``x`` on the bottom/right to a multiple of ``factor``."""
    if x.dim() != 4:
        raise ValueError(f"expected an image batch of shape (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got {h}x{w}")
    ph, pw = (-h) % factor, (-w) % factor
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def to_float_image(x: Tensor) -> Tensor:
    """A ``uint8`` image as float in ``[0, 1]`` (``v / 255``); a float image unchanged."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


class GainedModel:
    r"""Mixin for gained models; use it before the CompressAI class in the bases.

    A gained model codes ``L = len(lambdas)`` trained levels; ``quality`` is a
    float in ``[1, L]`` (1 = lowest rate) and ``level`` a 0-based index into
    ``lambdas`` (``quality = level + 1``).

    This class holds the gained data flow of every model, so the gains are
    applied here and nowhere else::

        y = analysis(x) × G_y(q)            z = hyper_analysis(y) × G_z(q)
        z_hat = EB(z)                       params = h_s(z_hat × IG_z(q))
        y_hat = code y given params         x_hat = synthesis(y_hat × IG_y(q), z_hat × IG_z(q))

    A family only says how it codes ``y`` given ``params`` (``_y_forward(y,
    params) -> (y_hat, likelihoods)``, ``_y_compress(y, params) -> [bytes]``,
    ``_y_decompress(strings, params) -> y_hat``: a Gaussian conditional for the
    hyperprior models, a context model for mbt2018 / cheng2020) and, where its
    transforms differ, overrides ``analysis``, ``_hyper_analysis`` or
    ``_synthesis_transform``. The ``_y_*`` hooks have no stubs here because
    they may come from a backbone class later in the MRO.
    """

    lambdas: Tuple[float, ...]
    gain: LatentGains
    #: ``forward`` / ``analysis`` / ``compress`` take ``qmap=`` (``gained-scgain``).
    takes_qmap: bool = False

    def _init_gains(self, lambdas: Sequence[float], M: int, N: int) -> None:
        self.lambdas = validate_lambdas(lambdas)
        self.gain = LatentGains(len(self.lambdas), M, N)
        from ..entropy import use_table_conditional

        use_table_conditional(self)  # one-pass scale indexes (same bitstreams as CompressAI's)

    @property
    def levels(self) -> int:
        return len(self.lambdas)

    def quality_tensor(self, level: Union[int, Tensor, None] = None, quality: Optional[QualityLike] = None) -> Tensor:
        """Validated float quality from exactly one of ``level`` or ``quality``."""
        if (level is None) == (quality is None):
            raise ValueError("pass exactly one of level= (0-based index) or quality= (float in [1, L])")
        q = level_to_quality(level) if level is not None else quality
        return check_quality(q, self.levels)

    def scalar_quality(self, quality: QualityLike) -> Tensor:
        q = check_quality(quality, self.levels)
        if q.dim() != 0:
            raise ValueError("compress/decompress take one quality for the whole batch")
        return q

    def update(self, scale_table=None, force: bool = False, **kwargs) -> bool:
        """CompressAI's ``update()`` with gainedvae's finer default scale table
        (:data:`gainedvae.entropy.SCALE_TABLE_LEVELS` levels)."""
        if scale_table is None:
            from ..entropy import scale_table as default_table

            scale_table = default_table()
        return super().update(scale_table=scale_table, force=force, **kwargs)

    #: State-dict key prefixes of modules that are not part of the CompressAI
    #: backbone; subclasses append theirs (e.g. spatial feature transforms).
    extra_key_prefixes: Tuple[str, ...] = ("gain.",)

    def load_backbone_state_dict(self, state_dict: Dict[str, Tensor]) -> None:
        """Load a CompressAI state dict of the same backbone; gains are reset to 1.

        Keys under :attr:`extra_key_prefixes` may be absent (gains are then
        reset to 1, other extra modules keep their initial values) or present
        (e.g. a gained model's weights loaded into a model that extends it).

        Raises:
            KeyError: when backbone keys are missing or keys are unexpected.
        """
        extra = tuple(self.extra_key_prefixes)
        own = {k for k in self.state_dict() if not k.startswith(extra)}
        missing = sorted(own - set(state_dict))
        unexpected = sorted(set(state_dict) - set(self.state_dict()))
        if missing or unexpected:
            raise KeyError(
                f"state dict does not match the {type(self).__name__} backbone: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        merged = dict(state_dict)
        for k, v in self.state_dict().items():
            if k not in merged:  # an extra key the state dict lacks
                merged[k] = torch.zeros_like(v) if k.startswith("gain.") else v
        self.load_state_dict(merged)

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
            f = self.downsampling_factor
            size = tuple(-(-int(n) // f) * f for n in x.shape[-2:])
            return tiled(self.g_a, x, self.analysis_tiling, size=size, prepare=to_float_image)
        return self.g_a(pad_to_multiple(x, self.downsampling_factor))

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
        y = self.analysis(x, **analysis_kwargs) * self.gain.y(q)
        z = self._hyper_analysis(y) * self.gain.z(q)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        z_dec = z_hat * self.gain.z_inv(q)
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
        y = y * self.gain.y(q)
        z = self._hyper_analysis(y) * self.gain.z(q)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        y_strings = self._y_compress(y, self._coding_params(z_hat, q))
        return {"strings": [y_strings, z_strings], "shape": (int(shape[0]), int(shape[1]))}

    def decompress(self, strings, shape: Sequence[int], quality: QualityLike):
        """Decode :meth:`compress`'s ``strings`` for an image of ``shape = (H, W)``."""
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("strings must be [y_strings, z_strings] as returned by compress()")
        if len(strings[0]) != len(strings[1]):
            raise ValueError(f"got {len(strings[0])} y strings but {len(strings[1])} z strings")
        q = self.scalar_quality(quality)
        h, w = int(shape[0]), int(shape[1])
        z_hat = self.entropy_bottleneck.decompress(strings[1], self.latent_shape((h, w)))
        z_dec = z_hat * self.gain.z_inv(q)
        y_hat = self._y_decompress(strings[0], self._coding_params(z_hat, q))
        x_hat = self._synthesis_transform(y_hat * self.gain.y_inv(q), z_dec).clamp_(0, 1)
        return {"x_hat": x_hat[..., :h, :w]}

    def latent_shape(self, shape: Sequence[int]) -> Tuple[int, int]:
        """Spatial size of ``z`` for an image of ``shape = (H, W)``."""
        if len(shape) != 2 or min(int(s) for s in shape) < 1:
            raise ValueError(f"shape must be the image size (H, W) with H, W >= 1, got {tuple(shape)}")
        f = self.downsampling_factor
        return (math.ceil(int(shape[0]) / f), math.ceil(int(shape[1]) / f))
