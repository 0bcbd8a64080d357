"""Gained hyperprior models on CompressAI's ``ScaleHyperprior`` and
``MeanScaleHyperprior``.

The two classes differ only where CompressAI's backbones differ (the
hyper-analysis input and the entropy parameters); the gained data flow is
written once, in :class:`~gainedvae.models.base.GainedModel`, and
:class:`GainedHyperprior` codes ``y`` with a conditional entropy model.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from compressai.ops import quantize_ste
from torch import Tensor

from .. import exact, tiling
from ..entropy import configure_entropy_model, widen_gaussian_state
from .base import GainedModel
from .rate import DEFAULT_LAMBDAS


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

    The data flow itself is :class:`~gainedvae.models.base.GainedModel`'s;
    this class codes ``y`` with the conditional chosen by ``entropy_model``.
    """

    analysis_tiling = tiling.ANALYSIS
    synthesis_tiling = tiling.SYNTHESIS
    #: How :meth:`_coding_params` tiles ``z_hat`` (:data:`gainedvae.tiling.HYPER_SYNTHESIS`); ``None``: whole.
    hyper_synthesis_tiling: Optional[tiling.Tiling] = tiling.HYPER_SYNTHESIS

    #: ``h_s`` predicts means as well as scales (mean-scale hyperprior).
    entropy_with_means: bool

    @property
    def entropy_model(self) -> str:
        """The ``entropy_model`` option: the conditional's ``kind`` (:data:`gainedvae.entropy.CONDITIONALS`)."""
        return self.gaussian_conditional.kind

    def config_extra(self):
        """Constructor arguments beyond N, M, lambdas that a checkpoint records
        (nothing for the default Gaussian, so such checkpoints stay as they were)."""
        kind = self.entropy_model
        return {} if kind == "gaussian" else {"entropy_model": kind}

    def _backbone_state(self, state_dict):
        """A Gaussian backbone also loads into the asymmetric / GMM variants, which then
        start as that Gaussian (:func:`~gainedvae.entropy.widen_gaussian_state`)."""
        return widen_gaussian_state(self, state_dict)

    def _coding_params(self, z_hat: Tensor, q: Tensor) -> Tensor:
        """The entropy parameters for coding: ``h_s(z_hat × IG_z(q))`` in fixed point
        (:func:`gainedvae.exact.coding_params`), so that the decoder picks the
        encoder's CDFs and means on every machine. ``forward()`` stays float.

        Run over tiles of ``z_hat`` (:attr:`hyper_synthesis_tiling`): the fixed-point layers'
        float64 buffers grow with the image (1 GB at 6000x4000 whole, about 80 MB a tile);
        integer arithmetic, so the result is exactly the untiled one."""
        if self.hyper_synthesis_tiling is None:
            return exact.coding_params(self, z_hat, q)
        return tiling.tiled(lambda z: exact.coding_params(self, z, q), z_hat, self.hyper_synthesis_tiling)

    def _entropy_params(self, params: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """``(scales, means)`` of the conditional from the hyper-synthesis output."""
        return self.gaussian_conditional.conditional_params(params, self.entropy_with_means)

    QUANTIZERS = ("noise", "ste")  # GainedModel.quantizer: both

    # y coding for GainedModel's data flow: a (Gaussian / asymmetric / GMM) conditional
    def _y_forward(self, y: Tensor, params: Tensor):
        scales_hat, means_hat = self._entropy_params(params)
        y_hat, likelihoods = self.gaussian_conditional(y, scales_hat, means=means_hat)
        if self.training and self.quantizer == "ste":  # what the coder decodes, straight-through
            y_hat = self._y_rounded(y, means_hat, quantize_ste)
        return y_hat, likelihoods

    def _y_rounded(self, y: Tensor, means_hat: Optional[Tensor], rounding) -> Tensor:
        """``y`` rounded as the coder rounds it: about the means, or about zero where the
        conditional has none (scale-only, and the GMM, whose coder rounds ``y`` itself)."""
        if means_hat is None:
            return rounding(y)
        return rounding(y - means_hat) + means_hat

    def _y_relaxed(self, y: Tensor, params: Tensor, rounding):
        """``y`` rounded about the means (zero without) as CompressAI's ``compress`` does, with
        ``rounding``; likelihoods of the conditional (bounded as in training). Not for the GMM,
        whose coder rounds ``y`` itself against several means."""
        gc = self.gaussian_conditional
        if self.entropy_model == "gmm":
            raise NotImplementedError("the GMM conditional has no relaxed coder (latent refinement)")
        scales_hat, means_hat = self._entropy_params(params)
        y_hat = self._y_rounded(y, means_hat, rounding)
        likelihoods = gc._likelihood(y_hat, scales_hat, means_hat)
        if gc.use_likelihood_bound:
            likelihoods = gc.likelihood_lower_bound(likelihoods)
        return y_hat, likelihoods

    def _y_compress(self, y: Tensor, params: Tensor):
        scales_hat, means_hat = self._entropy_params(params)
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        return self.gaussian_conditional.compress(y, indexes, means=means_hat)

    def _y_decompress(self, strings, params: Tensor) -> Tensor:
        scales_hat, means_hat = self._entropy_params(params)
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        return self.gaussian_conditional.decompress(strings, indexes, params.dtype, means=means_hat)


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

    entropy_with_means = False  # zero-mean: h_s predicts scales only

    def __init__(
        self, N: int = 128, M: int = 192, lambdas: Sequence[float] = DEFAULT_LAMBDAS, entropy_model: str = "gaussian", **kwargs
    ):
        super().__init__(N=N, M=M, **kwargs)
        self._init_gains(lambdas, M, N)
        configure_entropy_model(self, entropy_model, M)

    def _hyper_analysis(self, y: Tensor) -> Tensor:
        return self.h_a(torch.abs(y))


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

    entropy_with_means = True

    def __init__(
        self, N: int = 128, M: int = 192, lambdas: Sequence[float] = DEFAULT_LAMBDAS, entropy_model: str = "gaussian", **kwargs
    ):
        super().__init__(N=N, M=M, **kwargs)
        self._init_gains(lambdas, M, N)
        configure_entropy_model(self, entropy_model, M)

