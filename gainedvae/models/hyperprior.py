"""Gained hyperprior models on CompressAI's ``ScaleHyperprior`` and
``MeanScaleHyperprior``.

The two classes differ only where CompressAI's backbones differ (the
hyper-analysis input and the entropy parameters); the gained data flow is
written once, in :class:`GainedHyperprior`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from torch import Tensor

from ..entropy import configure_entropy_model, split_entropy_params
from ..gain import QualityLike
from .base import DEFAULT_LAMBDAS, GainedModel, pad_to_multiple


class GainedHyperprior(GainedModel):
    r"""Gained data flow for any CompressAI hyperprior backbone.

    .. code-block:: none

                  ┌───┐  y  ┌────┐     ┌───┐  z  ┌────┐     ┌───┐ z_hat ┌─────┐     ┌───┐
            x ──►─┤g_a├──►──┤×G_y├──┬──┤h_a├──►──┤×G_z├──►──┤ Q ├───►───┤×IG_z├──►──┤h_s├─┐
                  └───┘     └────┘  │  └───┘     └────┘     └───┘  EB   └─────┘     └───┘ │
                                    ▼                                                     │
                                  ┌─┴─┐                                                   │
                                  │ Q │ GC ◄──────────────────────────────────────────────┘
                                  └─┬─┘            scales_hat (means_hat)
                         ┌─────┐    │
        x_hat ──◄──┤g_s├─┤×IG_y├─◄──┘ y_hat
                   └───┘ └─────┘

        G_y, IG_y, G_z, IG_z = gain / inverse-gain vectors at the quality q
        EB = entropy bottleneck, GC = Gaussian conditional (or the asymmetric
        Gaussian / GMM of ``entropy_model``, see :mod:`gainedvae.entropy`)

    Subclasses provide ``_hyper_analysis(y)`` and ``_entropy_params(z_hat)``.
    """

    def config_extra(self):
        """Constructor arguments beyond N, M, lambdas that a checkpoint records
        (nothing for the default Gaussian, so such checkpoints stay as they were)."""
        kind = getattr(self, "entropy_model", "gaussian")
        return {} if kind == "gaussian" else {"entropy_model": kind}

    def _hyper_analysis(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _entropy_params(self, z_hat: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        raise NotImplementedError

    def forward(self, x: Tensor, level: Union[int, Tensor, None] = None, quality: Optional[QualityLike] = None):
        """Training / estimation pass.

        Args:
            x: images ``(B, 3, H, W)`` in ``[0, 1]``; any size (padded internally).
            level: 0-based level index, an int for the batch or a ``(B,)``
                LongTensor per sample.
            quality: alternatively a float quality in ``[1, L]`` (scalar or ``(B,)``).

        Returns:
            ``{"x_hat", "likelihoods": {"y", "z"}}`` as in CompressAI; ``x_hat``
            is cropped to ``x``'s size, the likelihoods cover the padded latents.
        """
        q = self.quality_tensor(level, quality)
        if q.dim() == 1 and q.numel() != x.size(0):
            raise ValueError(f"got {q.numel()} levels/qualities for a batch of {x.size(0)} images")
        h, w = x.shape[-2:]
        y = self.g_a(pad_to_multiple(x, self.downsampling_factor)) * self.gain.y(q)
        z = self._hyper_analysis(y) * self.gain.z(q)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales_hat, means_hat = self._entropy_params(z_hat * self.gain.z_inv(q))
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales_hat, means=means_hat)
        x_hat = self.g_s(y_hat * self.gain.y_inv(q))
        return {
            "x_hat": x_hat[..., :h, :w],
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
        }

    def analysis(self, x: Tensor) -> Tensor:
        """The quality-independent part of the encoder: ``g_a`` on the padded image."""
        return self.g_a(pad_to_multiple(x, self.downsampling_factor))

    def compress(self, x: Tensor, quality: QualityLike):
        """Entropy-code ``x`` at ``quality`` into rANS bitstreams.

        Returns:
            ``{"strings": [y_strings, z_strings], "shape": (H, W)}`` where
            ``shape`` is the image size (unlike CompressAI, which returns the
            latent size) so that :meth:`decompress` can crop the padding back.
        """
        return self.compress_analysed(self.analysis(x), quality, tuple(x.shape[-2:]))

    def compress_analysed(self, y: Tensor, quality: QualityLike, shape: Sequence[int]):
        """:meth:`compress` from the output of :meth:`analysis` (rate control
        runs the analysis once and only this gain-dependent part per try)."""
        q = self.scalar_quality(quality)
        y = y * self.gain.y(q)
        z = self._hyper_analysis(y) * self.gain.z(q)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        scales_hat, means_hat = self._entropy_params(z_hat * self.gain.z_inv(q))
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        y_strings = self.gaussian_conditional.compress(y, indexes, means=means_hat)
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
        scales_hat, means_hat = self._entropy_params(z_hat * self.gain.z_inv(q))
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        y_hat = self.gaussian_conditional.decompress(strings[0], indexes, z_hat.dtype, means=means_hat)
        x_hat = self.g_s(y_hat * self.gain.y_inv(q)).clamp_(0, 1)
        return {"x_hat": x_hat[..., :h, :w]}


class GainedScaleHyperprior(GainedHyperprior, ScaleHyperprior):
    r"""Scale hyperprior (Ballé et al., "Variational Image Compression with a
    Scale Hyperprior", ICLR 2018) with gain units (Cui et al., CVPR 2021).

    Registry name ``gained-bmshj2018-hyperprior``. Backbone identical to
    CompressAI's ``bmshj2018-hyperprior``; see :class:`GainedHyperprior` for
    the data flow.

    Args:
        N (int): channels of the transforms and of ``z``
        M (int): channels of ``y``
        lambdas (sequence of float): one lambda per level, increasing
        entropy_model (str): ``"gaussian"`` (CompressAI's), ``"asymmetric"``
            or ``"gmm"``; zero-mean here (see :func:`gainedvae.entropy.configure_entropy_model`)
    """

    def __init__(
        self, N: int = 128, M: int = 192, lambdas: Sequence[float] = DEFAULT_LAMBDAS, entropy_model: str = "gaussian", **kwargs
    ):
        super().__init__(N=N, M=M, **kwargs)
        self._init_gains(lambdas, M, N)
        configure_entropy_model(self, entropy_model, M, with_means=False)

    def _hyper_analysis(self, y: Tensor) -> Tensor:
        return self.h_a(torch.abs(y))

    def _entropy_params(self, z_hat: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        return split_entropy_params(self, self.h_s(z_hat))


class GainedMeanScaleHyperprior(GainedHyperprior, MeanScaleHyperprior):
    r"""Mean-scale hyperprior (Minnen et al., "Joint Autoregressive and
    Hierarchical Priors for Learned Image Compression", NeurIPS 2018) with
    gain units (Cui et al., CVPR 2021).

    Registry name ``gained-mbt2018-mean``. Backbone identical to CompressAI's
    ``mbt2018-mean``; see :class:`GainedHyperprior` for the data flow.

    Args:
        N (int): channels of the transforms and of ``z``
        M (int): channels of ``y``
        lambdas (sequence of float): one lambda per level, increasing
        entropy_model (str): ``"gaussian"`` (CompressAI's), ``"asymmetric"``
            or ``"gmm"`` (K = 3), see :mod:`gainedvae.entropy`
    """

    def __init__(
        self, N: int = 128, M: int = 192, lambdas: Sequence[float] = DEFAULT_LAMBDAS, entropy_model: str = "gaussian", **kwargs
    ):
        super().__init__(N=N, M=M, **kwargs)
        self._init_gains(lambdas, M, N)
        configure_entropy_model(self, entropy_model, M, with_means=True)

    def _hyper_analysis(self, y: Tensor) -> Tensor:
        return self.h_a(y)

    def _entropy_params(self, z_hat: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        return split_entropy_params(self, self.h_s(z_hat))
