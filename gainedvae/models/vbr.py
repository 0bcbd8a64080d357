"""CompressAI's variable-rate mean-scale hyperprior behind the gained-model API.

The peer our gain units are measured against: Kamisli, Racapé and Choi,
"Variable-Rate Learned Image Compression with Multi-Objective Optimization and
Quantization-Reconstruction Offsets", DCC 2024 (``compressai.models.vbr``).

This subclass adds nothing to the network; it gives CompressAI's model the
interface the training loop, the evaluation and the codec use for every
variable-rate model (:class:`~gainedvae.models.rate.RateModel`: ``lambdas``,
``levels``, ``forward(x, level=|quality=)``, ``compress(x, quality)``,
``decompress(strings, shape, quality)``, any image size). The quantiser gain of a fractional quality is the exponential
interpolation of the two neighbouring ``Gain`` entries, computed by the same
function as the gain units (:func:`gainedvae.gain.interpolate_log_gains`).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Union

import torch
from compressai.entropy_models import EntropyBottleneckVbr
from compressai.models import MeanScaleHyperpriorVbr as _CompressAIVbr
from compressai.models.utils import update_registered_buffers
from torch import Tensor

from ..gain import QualityLike, interpolate_log_gains
from .rate import DEFAULT_LAMBDAS, RateModel

# CompressAI's EntropyBottleneckVbr still uses the pre-1.2 parameter names.
_OLD_EB_NAMES = {"matrices": "_matrix", "biases": "_bias", "factors": "_factor"}


class _EagerEntropyBottleneckVbr(EntropyBottleneckVbr):
    """CompressAI's ``EntropyBottleneckVbr``, its ``forward`` left out of ``torch.compile``.

    Its forward builds the channel-first permutation with a numpy swap
    (``perm[0], perm[1] = perm[1], perm[0]``); traced by dynamo, which runs numpy as tensors,
    the two sides alias and the permutation becomes ``(1, 1, 2, 3)`` ("permute(): duplicate
    dims are not allowed"). Same parameters and state-dict names as the parent.
    """

    @torch.compiler.disable
    def forward(self, *args, **kwargs):
        return super().forward(*args, **kwargs)


class MeanScaleHyperpriorVbr(RateModel, _CompressAIVbr):
    r"""``mbt2018-mean-vbr``: CompressAI's ``MeanScaleHyperpriorVbr`` (DCC 2024) with the
    variable-rate hyper-latent (``vr_entbttlnck=True``, as CompressAI's published model).

    .. code-block:: none

              ┌───┐  y   ┌───┐  z  ┌──────────────┐ z_hat  ┌───┐ means, scales
        x ──►─┤g_a├──┬──►─┤h_a├──►──┤ Q(step(gain))├───►───┤h_s├──────┐
              └───┘  │   └───┘     └──────────────┘  EB    └───┘      │
                     ▼                                                ▼
               (y - mean) × gain ──► Q ──► + offset(scale, gain) ──► / gain + mean
                                                                     │ y_hat
                                                          x_hat ◄─┤g_s├

    ``gain`` is ``Gain[level]`` (fixed during training, as upstream), or for a
    fractional quality the exponential interpolation of its neighbours.
    Training (``stage=2``) uses CompressAI's straight-through quantiser with
    quantisation-reconstruction offsets; the single-rate ``stage=1`` start is a
    plain ``mbt2018-mean`` checkpoint (:meth:`load_backbone_state_dict`).

    Args:
        N, M (int): widths as ``mbt2018-mean``.
        lambdas (sequence of float): one per level; ``Gain`` starts at
            ``sqrt(lambda / max(lambdas))``, which for CompressAI's eight MSE
            lambdas is CompressAI's own table (0.1 ... 1.0).
    """

    def __init__(self, N: int = 128, M: int = 192, lambdas: Sequence[float] = DEFAULT_LAMBDAS, **kwargs):
        super().__init__(N=N, M=M, vr_entbttlnck=True, **kwargs)
        self.entropy_bottleneck = _EagerEntropyBottleneckVbr(N)  # runs eagerly under torch.compile
        self._init_rate(lambdas)
        self.lmbda = list(self.lambdas)
        self.levels = len(self.lambdas)
        top = max(self.lambdas)
        with torch.no_grad():
            self.Gain.data = torch.tensor([math.sqrt(v / top) for v in self.lambdas])
        self._eb_scale: Optional[float] = None

    #: An attribute here, not :class:`RateModel`'s property: CompressAI's constructor assigns it.
    levels: int = 0

    # -- quality -> quantiser gain ------------------------------------------

    def quality_tensor(self, level=None, quality: Optional[QualityLike] = None) -> Tensor:
        """:meth:`RateModel.quality_tensor`, one level or quality for the whole batch."""
        if isinstance(level, Tensor) and level.dim() > 0:
            raise ValueError("mbt2018-mean-vbr codes one level per batch (CompressAI's design); use --level-sampling batch")
        q = super().quality_tensor(level, quality)
        if q.dim() != 0:
            raise ValueError("mbt2018-mean-vbr takes one quality for the whole batch")
        return q

    def scale_for(self, q: Tensor) -> Tensor:
        """Quantiser gain (1 / step size) at a validated quality, shape ``(1,)``."""
        return interpolate_log_gains(self.Gain.detach().abs().log()[:, None], q).view(1)

    # -- API ------------------------------------------------------------------

    def forward(self, x: Tensor, level: Union[int, Tensor, None] = None, quality: Optional[QualityLike] = None):
        q = self.quality_tensor(level, quality)
        h, w = x.shape[-2:]
        xp = self.pad(x)
        if self.training:
            s = int(round(float(q))) - 1  # integer levels only in training (upstream: Gain[s])
            out = super().forward(xp, stage=2, s=s)
        else:
            out = super().forward(xp, stage=2, s=0, inputscale=self.scale_for(q))
        out["x_hat"] = out["x_hat"][..., :h, :w]
        return out

    def _prepare(self, scale: Tensor) -> None:
        # The variable-rate entropy bottleneck needs its CDFs for this step size.
        if self._eb_scale != float(scale):
            self.update(force=True, scale=scale)
            self._eb_scale = float(scale)

    def analysis(self, x: Tensor) -> Tensor:
        return self.pad(x)  # the model's g_a runs inside compress

    def compress(self, x: Tensor, quality: QualityLike):
        return self.compress_analysed(self.analysis(x), quality, tuple(x.shape[-2:]))

    def compress_analysed(self, xp: Tensor, quality: QualityLike, shape: Sequence[int]):
        scale = self.scale_for(self.quality_tensor(quality=quality))
        self._prepare(scale)
        out = super().compress(xp, stage=2, s=0, inputscale=scale)
        return {"strings": out["strings"], "shape": (int(shape[0]), int(shape[1]))}

    def decompress(self, strings, shape: Sequence[int], quality: QualityLike):
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("strings must be [y_strings, z_strings] as returned by compress()")
        scale = self.scale_for(self.quality_tensor(quality=quality))
        self._prepare(scale)
        h, w = int(shape[0]), int(shape[1])
        x_hat = super().decompress(list(strings), self.latent_shape((h, w)), stage=2, s=0, inputscale=scale)["x_hat"]
        return {"x_hat": x_hat[..., :h, :w]}

    def update(self, scale_table=None, force=False, scale=None):
        """:meth:`RateModel.update` (gainedvae's scale table); ``scale``: the variable-rate
        bottleneck's quantiser gain its CDFs are built for."""
        self._eb_scale = None if scale is None else float(scale)
        return super().update(scale_table=scale_table, force=force, scale=scale)

    def load_state_dict(self, state_dict, strict: bool = True):
        """CompressAI's ``load_state_dict`` resizes the coder tables of ``EntropyBottleneck`` and
        ``GaussianConditional`` before loading, but not those of ``EntropyBottleneckVbr``: without
        this, a model saved after :meth:`update` would not load again."""
        for name, module in self.named_modules():
            if isinstance(module, EntropyBottleneckVbr) and f"{name}._quantized_cdf" in state_dict:
                update_registered_buffers(module, name, ["_quantized_cdf", "_offset", "_cdf_length"], state_dict)
        return super().load_state_dict(state_dict, strict=strict)

    # -- shared start -----------------------------------------------------------

    #: The VBR-only modules, which keep their initial values when starting from ``mbt2018-mean``.
    extra_key_prefixes = ("Gain", "QuantABCD.", "gayn2zqstep.", "lower_bound_zqstep.")

    def _backbone_state(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """A single-rate ``mbt2018-mean`` state dict (upstream's stage 1) with the entropy
        bottleneck's names mapped to the variable-rate bottleneck's."""
        mapped = {}
        for k, v in state_dict.items():
            parts = k.split(".")
            if len(parts) == 3 and parts[0] == "entropy_bottleneck" and parts[1] in _OLD_EB_NAMES:
                k = f"entropy_bottleneck.{_OLD_EB_NAMES[parts[1]]}{parts[2]}"
            mapped[k] = v
        return mapped
