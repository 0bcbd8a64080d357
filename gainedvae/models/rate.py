r"""The rate interface every model is used through: one calling convention, one ``code`` path.

A variable-rate model codes ``L = len(lambdas)`` trained levels and every
quality ``q`` in ``[1, L]`` between them (1 = lowest rate; ``level`` is the
0-based index, ``q = level + 1``)::

    out = net(x, level=l | quality=q)            # {"x_hat", "likelihoods"}, x_hat cropped to x
    enc = net.compress(x, q)                     # {"strings": [y, z], "shape": (H, W)}
    x_hat = net.decompress(enc["strings"], enc["shape"], q)["x_hat"]

``x`` is any size: the model pads it to a multiple of ``downsampling_factor``
(:func:`pad_to_multiple`) and crops the result; ``shape`` is the *image* size
(CompressAI passes the latent size), from which :meth:`RateModel.latent_shape`
recovers ``z``'s.

:class:`RateModel` is what the gained models (:class:`~gainedvae.models.base.GainedModel`)
and CompressAI's VBR peer (:class:`~gainedvae.models.vbr.MeanScaleHyperpriorVbr`)
share: lambdas, quality checks, padding, latent shape, gainedvae's scale table,
backbone loading, and the metadata a checkpoint gives a model.
:class:`SingleRate` puts CompressAI's single-rate models behind the same
convention with one level, and :func:`code` is the one encode-decode path
of the evaluation, the benchmarks and the rate-target search.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..container import padded_size
from ..entropy import scale_table as default_scale_table
from ..entropy import use_table_conditional
from ..gain import QualityLike, check_quality, level_to_quality

__all__ = ["DEFAULT_LAMBDAS", "Coded", "RateModel", "SingleRate", "code", "pad_to_multiple", "rate_model", "stream_bytes",
           "takes_qmap", "validate_lambdas"]


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
    """Replicate-pad ``x`` on the bottom/right to :func:`~gainedvae.container.padded_size` ``(n, factor)``."""
    if x.dim() != 4:
        raise ValueError(f"expected an image batch of shape (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got {h}x{w}")
    ph, pw = padded_size(h, factor) - h, padded_size(w, factor) - w
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def _latent_shape(shape: Sequence[int], factor: int) -> Tuple[int, int]:
    if len(shape) != 2 or min(int(s) for s in shape) < 1:
        raise ValueError(f"shape must be the image size (H, W) with H, W >= 1, got {tuple(shape)}")
    return (padded_size(shape[0], factor) // factor, padded_size(shape[1], factor) // factor)


class RateModel:
    """Mixin of the variable-rate models; use it before the CompressAI class in the bases.

    Subclasses call :meth:`_init_rate` in their constructor and implement
    ``forward(x, level=|quality=)``, ``compress(x, quality)``,
    ``compress_analysed(analysis(x), quality, shape)`` and
    ``decompress(strings, shape, quality)`` (see the module docstring).
    """

    #: One lambda per level, increasing (quality 1 = lowest rate).
    lambdas: Tuple[float, ...]
    #: ``forward`` / ``analysis`` / ``compress`` take ``qmap=`` (``gained-scgain``); see :func:`takes_qmap`.
    takes_qmap: bool = False
    #: SHA-256 of the weights a checkpoint held (set by :func:`gainedvae.load_checkpoint`;
    #: the codec writes it into every file); None for a model built in memory.
    weights_hash: Optional[str] = None
    #: The file the model was loaded from (:func:`gainedvae.load_checkpoint`), for messages.
    checkpoint_path: Optional[str] = None
    #: State-dict key prefixes of modules that are not part of the CompressAI
    #: backbone (:meth:`load_backbone_state_dict`); subclasses append theirs.
    extra_key_prefixes: Tuple[str, ...] = ()

    def _init_rate(self, lambdas: Sequence[float]) -> None:
        self.lambdas = validate_lambdas(lambdas)
        use_table_conditional(self)  # one-pass scale indexes (same bitstreams as CompressAI's)

    @property
    def levels(self) -> int:
        return len(self.lambdas)

    # -- quality --------------------------------------------------------------

    def quality_tensor(self, level: Union[int, Tensor, None] = None, quality: Optional[QualityLike] = None) -> Tensor:
        """Validated float quality from exactly one of ``level`` or ``quality``."""
        if (level is None) == (quality is None):
            raise ValueError("pass exactly one of level= (0-based index) or quality= (float in [1, L])")
        q = level_to_quality(level) if level is not None else quality
        return check_quality(q, self.levels)

    def scalar_quality(self, quality: QualityLike) -> Tensor:
        """Validated quality of a coding call: one for the whole batch."""
        q = check_quality(quality, self.levels)
        if q.dim() != 0:
            raise ValueError("compress/decompress take one quality for the whole batch")
        return q

    # -- sizes ------------------------------------------------------------------

    def pad(self, x: Tensor) -> Tensor:
        """``x`` padded to a multiple of ``downsampling_factor`` (:func:`pad_to_multiple`)."""
        return pad_to_multiple(x, self.downsampling_factor)

    def latent_shape(self, shape: Sequence[int]) -> Tuple[int, int]:
        """Spatial size of ``z`` for an image of ``shape = (H, W)``: ``ceil(H / f), ceil(W / f)``."""
        return _latent_shape(shape, self.downsampling_factor)

    # -- tables and weights -----------------------------------------------------

    def update(self, scale_table=None, force: bool = False, **kwargs) -> bool:
        """CompressAI's ``update()`` with gainedvae's finer default scale table
        (:data:`gainedvae.entropy.SCALE_TABLE_LEVELS` levels)."""
        if scale_table is None:
            scale_table = default_scale_table()
        return super().update(scale_table=scale_table, force=force, **kwargs)

    def _backbone_state(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """A CompressAI state dict in this model's key layout (default: unchanged)."""
        return state_dict

    def _fresh_value(self, key: str, value: Tensor) -> Tensor:
        """What an extra key absent from a backbone state dict is loaded as (default: its current value)."""
        return value

    def load_backbone_state_dict(self, state_dict: Dict[str, Tensor]) -> None:
        """Start from a CompressAI state dict of the same backbone (a shared start).

        Keys under :attr:`extra_key_prefixes` may be absent (they get
        :meth:`_fresh_value`) or present (e.g. a gained model's weights loaded
        into a model that extends it).

        Raises:
            KeyError: when backbone keys are missing or keys are unexpected.
        """
        state_dict = self._backbone_state(state_dict)
        own = self.state_dict()
        extra = tuple(self.extra_key_prefixes)
        missing = sorted(k for k in own if k not in state_dict and not k.startswith(extra))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise KeyError(
                f"state dict does not match the {type(self).__name__} backbone: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        self.load_state_dict({k: state_dict[k] if k in state_dict else self._fresh_value(k, v) for k, v in own.items()})


class SingleRate:
    """One-level adapter: a CompressAI single-rate model behind :class:`RateModel`'s convention.

    ``levels = 1``, the only quality is 1 (``level=0``); ``forward`` / ``compress``
    pad the image to ``downsampling_factor`` and the results are cropped back,
    ``compress`` returns the image size as ``shape`` and ``decompress`` turns it
    into CompressAI's latent size. The model itself is unchanged (same module,
    state dict and bitstreams); ``forward`` (the callable, default the model)
    runs the padded batch, so training can pass its DDP / compiled wrapper.
    """

    levels = 1
    takes_qmap = False

    def __init__(self, net: nn.Module, forward: Optional[Callable] = None):
        self.net = net
        self._forward = net if forward is None else forward  # not `or`: a compiled module has no truth value

    @property
    def lambdas(self) -> Tuple[float, ...]:
        """The one lambda the model was trained with (from its checkpoint), or ``()``."""
        return tuple(getattr(self.net, "lambdas", None) or ())

    def _check(self, level=None, quality: Optional[QualityLike] = None) -> None:
        if level is not None:
            check_quality(level_to_quality(level), 1)
        if quality is not None:
            check_quality(quality, 1)

    def __call__(self, x: Tensor, level: Union[int, Tensor, None] = None, quality: Optional[QualityLike] = None):
        self._check(level, quality)
        h, w = x.shape[-2:]
        out = self._forward(pad_to_multiple(x, self.net.downsampling_factor))
        out["x_hat"] = out["x_hat"][..., :h, :w]
        return out

    def compress(self, x: Tensor, quality: Optional[QualityLike] = None):
        self._check(quality=quality)
        enc = self.net.compress(pad_to_multiple(x, self.net.downsampling_factor))
        return {"strings": enc["strings"], "shape": tuple(int(s) for s in x.shape[-2:])}

    def decompress(self, strings, shape: Sequence[int], quality: Optional[QualityLike] = None):
        self._check(quality=quality)
        h, w = int(shape[0]), int(shape[1])
        x_hat = self.net.decompress(strings, _latent_shape((h, w), self.net.downsampling_factor))["x_hat"]
        return {"x_hat": x_hat[..., :h, :w]}


def rate_model(net: nn.Module):
    """``net`` itself for a variable-rate model, else ``net`` behind :class:`SingleRate`."""
    return net if isinstance(net, RateModel) else SingleRate(net)


def takes_qmap(net) -> bool:
    """Whether ``net`` takes a spatial quality map (``qmap=``): its :attr:`RateModel.takes_qmap`."""
    return bool(getattr(net, "takes_qmap", False))


def stream_bytes(strings) -> int:
    """Bytes of ``[y_strings, z_strings]`` (every stream of every image)."""
    return sum(len(s) for group in strings for s in group)


@dataclass
class Coded:
    """One image (or batch) through :func:`code`."""

    x_hat: Tensor  #: the decoded image, cropped to the input's size
    strings: List[List[bytes]]  #: ``[y_strings, z_strings]``
    nbytes: int  #: :func:`stream_bytes` of ``strings`` (no container)
    encode_s: float
    decode_s: float


@torch.inference_mode()
def code(net: nn.Module, x: Tensor, quality: Optional[QualityLike] = None) -> Coded:
    """Encode ``x`` at ``quality`` and decode it with any registry model (:func:`rate_model`);
    single-rate models take ``quality=None`` (or 1)."""
    m = rate_model(net)
    t0 = time.perf_counter()
    enc = m.compress(x, quality)
    t1 = time.perf_counter()
    x_hat = m.decompress(enc["strings"], enc["shape"], quality)["x_hat"]
    t2 = time.perf_counter()
    return Coded(x_hat, enc["strings"], stream_bytes(enc["strings"]), t1 - t0, t2 - t1)
