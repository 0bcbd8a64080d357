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


class GainedModel:
    """Mixin for gained models; use it before the CompressAI class in the bases.

    A gained model codes ``L = len(lambdas)`` trained levels; ``quality`` is a
    float in ``[1, L]`` (1 = lowest rate) and ``level`` a 0-based index into
    ``lambdas`` (``quality = level + 1``).
    """

    lambdas: Tuple[float, ...]
    gain: LatentGains

    def _init_gains(self, lambdas: Sequence[float], M: int, N: int) -> None:
        self.lambdas = validate_lambdas(lambdas)
        self.gain = LatentGains(len(self.lambdas), M, N)

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

    def latent_shape(self, shape: Sequence[int]) -> Tuple[int, int]:
        """Spatial size of ``z`` for an image of ``shape = (H, W)``."""
        if len(shape) != 2 or min(int(s) for s in shape) < 1:
            raise ValueError(f"shape must be the image size (H, W) with H, W >= 1, got {tuple(shape)}")
        f = self.downsampling_factor
        return (math.ceil(int(shape[0]) / f), math.ceil(int(shape[1]) / f))
