"""Model registry: gained models and CompressAI's single-rate baselines by name."""

from __future__ import annotations

from typing import Dict, Type

from compressai.models import JointAutoregressiveHierarchicalPriors, MeanScaleHyperprior, ScaleHyperprior
from torch import nn

from .base import GainedModel
from .cheng2020 import Cheng2020AttentionGMM, GainedCheng2020AttentionGMM
from .context import GainedCheckerboard, GainedContextModel, GainedJointAutoregressive
from .hyperprior import GainedHyperprior, GainedMeanScaleHyperprior, GainedScaleHyperprior
from .rate import (
    DEFAULT_LAMBDAS,
    Coded,
    RateModel,
    SingleRate,
    code,
    pad_to_multiple,
    rate_model,
    stream_bytes,
    takes_qmap,
    validate_lambdas,
)
from .scgain import SCGainedMeanScaleHyperprior
from .vbr import MeanScaleHyperpriorVbr

#: Registry name -> class. Names without ``gained-`` are CompressAI's own
#: single-rate classes (identical to ``compressai.zoo`` architectures).
MODEL_CLASSES: Dict[str, Type[nn.Module]] = {
    "gained-bmshj2018-hyperprior": GainedScaleHyperprior,
    "gained-mbt2018-mean": GainedMeanScaleHyperprior,
    "gained-scgain": SCGainedMeanScaleHyperprior,  # + quality maps (spatial gain)
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
    "mbt2018-mean-vbr": MeanScaleHyperpriorVbr,
    # context models (gainedvae.models.context / .cheng2020)
    "gained-mbt2018": GainedJointAutoregressive,
    "gained-mbt2018-checkerboard": GainedCheckerboard,
    "gained-cheng2020-attn": GainedCheng2020AttentionGMM,  # Gaussian mixture, K = 3
    "mbt2018": JointAutoregressiveHierarchicalPriors,
    "cheng2020-attn-gmm": Cheng2020AttentionGMM,  # single-rate twin of gained-cheng2020-attn
}

MODELS = tuple(MODEL_CLASSES)


def get_model(name: str, **kwargs) -> nn.Module:
    """Build a model by registry name, e.g. ``get_model("gained-mbt2018-mean", N=128, M=192)``.

    Variable-rate models (gained, VBR) accept ``lambdas``; single-rate models only ``N`` and ``M``.
    """
    try:
        cls = MODEL_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}") from None
    if not is_variable_rate(name):
        kwargs.pop("lambdas", None)
    return cls(**kwargs)


def model_name(model: nn.Module) -> str:
    """Registry name of ``model``'s class."""
    for name, cls in MODEL_CLASSES.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered gainedvae model")


def is_gained(model_or_name) -> bool:
    """A model with gain units (ours)."""
    if isinstance(model_or_name, str):
        return issubclass(MODEL_CLASSES[model_or_name], GainedModel)
    return isinstance(model_or_name, GainedModel)


def is_variable_rate(model_or_name) -> bool:
    """A model that codes several levels and a continuous quality: a
    :class:`~gainedvae.models.rate.RateModel` (gained models and CompressAI's VBR peer).
    Single-rate models get the same interface from :func:`rate_model`."""
    cls = MODEL_CLASSES[model_or_name] if isinstance(model_or_name, str) else type(model_or_name)
    return issubclass(cls, RateModel)


__all__ = [
    "Cheng2020AttentionGMM",
    "Coded",
    "DEFAULT_LAMBDAS",
    "GainedCheckerboard",
    "GainedCheng2020AttentionGMM",
    "GainedContextModel",
    "GainedJointAutoregressive",
    "GainedHyperprior",
    "GainedMeanScaleHyperprior",
    "GainedModel",
    "GainedScaleHyperprior",
    "MeanScaleHyperpriorVbr",
    "MODELS",
    "MODEL_CLASSES",
    "RateModel",
    "SingleRate",
    "SCGainedMeanScaleHyperprior",
    "code",
    "get_model",
    "is_gained",
    "is_variable_rate",
    "model_name",
    "pad_to_multiple",
    "rate_model",
    "stream_bytes",
    "takes_qmap",
    "validate_lambdas",
]
