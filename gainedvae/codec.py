"""Image codec: encode an image to a ``.gvae`` file and decode it, with rate control.

A ``.gvae`` file holds one image coded by a gained model at one quality; the
byte layout is documented in ``docs/format.md`` (:mod:`gainedvae.container`).
Typical use::

    net = gainedvae.load_checkpoint("model.pt")
    x = load_image("photo.png")                  # uint8 HxWx3, any PIL mode
    data = encode(net, x, quality=4.5)           # bytes of a .gvae file
    x_hat = decode(net, data)                    # (1, 3, H, W) float in [0, 1]
    save_image(decode_image(net, data), "photo_decoded.png")  # uint8 HxWx3, atomic write

    result = encode_to_bpp(net, x, target_bpp=0.5)      # rate control
    result.quality, result.bpp, result.data

Everything that can go wrong with a file (unreadable image, truncated or
corrupted container, other weights) raises :class:`CodecError`, a
``ValueError`` with a message that names the problem.

This module is the data flow of one file; each concern below it has its own module,
whose public names are re-exported here:

============================ ==========================================================
:mod:`gainedvae.container`   byte layout, parsing, size limits (torch-free)
:mod:`gainedvae.imageio`     image files and arrays <-> 8-bit RGB (``load_image``, ...)
:mod:`gainedvae.rans`        guards for CompressAI's rANS coder (hostile streams)
:mod:`gainedvae.ratecontrol` the quality search of :func:`encode_to_bpp` / :func:`encode_to_psnr`
============================ ==========================================================

Encode: image -> ``net.analysis`` (quality-independent) -> ``net.compress_analysed``
at ``q`` -> ``[y, z]`` streams -> :class:`Container` bytes. Decode: bytes ->
:class:`Container` (checked: model, weights, quality, size, memory) ->
``net.decompress`` -> image. Both run with :func:`guard_entropy_coders` on the model.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import hash_state_dict
from .container import (  # re-exported: the codec's public names
    DECODE_BYTES_PER_PIXEL,
    DEFAULT_MAX_PIXELS,
    FLAG_QUALITY_MAP,
    FORMAT_VERSION,
    HASH_BYTES,
    KNOWN_FLAGS,
    MAGIC,
    MAX_DIM,
    MAX_FILE_BYTES,
    NON_FINITE,
    PAD_FACTOR,
    CodecError,
    Container,
    check_pixels,
    decode_memory_bytes,
    gigabytes,
    padded_pixels,
    read_container,
)
from .gain import check_quality
from .imageio import ImageLike, image_to_tensor, load_image, psnr_8bit, save_image, tensor_to_image
from .models import MODELS, is_gained, model_name
from .qmap import lambda_scale, prepare_qmap
from .rans import (  # re-exported: the codec's rANS guards (tests and benchmarks reach them here)
    _RANS_ROUNDING_BITS,
    MAX_SYMBOL,
    MIN_STREAM_FRACTION,
    _GuardedDecoder,
    _GuardedEncoder,
    _GuardedRansCoder,
    check_encodable,
    check_stream_length,
    guard_entropy_coders,
    min_stream_bits,
    rans_padding,
)
from .ratecontrol import RateControlResult, Trial, check_target, control

__all__ = [
    "CodecError",
    "Container",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_DIM",
    "RateControlResult",
    "decode",
    "decode_image",
    "encode",
    "encode_to_bpp",
    "encode_to_psnr",
    "guard_entropy_coders",
    "check_encodable",
    "check_pixels",
    "check_stream_length",
    "DEFAULT_MAX_PIXELS",
    "MAX_FILE_BYTES",
    "min_stream_bits",
    "image_to_tensor",
    "load_image",
    "model_identity",
    "psnr_8bit",
    "rans_padding",
    "read_container",
    "require_gained",
    "save_image",
    "tensor_to_image",
]


# ---------------------------------------------------------------------------
# Model identity
# ---------------------------------------------------------------------------


def require_gained(net: nn.Module) -> str:
    """Registry name of ``net``; :class:`CodecError` unless it is a gained model."""
    try:
        name = model_name(net)
    except ValueError as err:
        raise CodecError(str(err)) from None
    if not is_gained(net):
        levels = len(getattr(net, "lambdas", None) or ())
        kind = "a single-rate CompressAI model" if levels <= 1 else "a variable-rate model without gain units"
        supported = ", ".join(n for n in MODELS if is_gained(n))
        raise CodecError(f"the gainedvae codec needs a gained model ({supported}); {name!r} is {kind}")
    return name


def model_identity(net: nn.Module) -> Tuple[str, str]:
    """``(registry name, 32-hex-char weights hash prefix)`` stored in containers.

    Uses ``net.weights_hash`` (set by :func:`gainedvae.load_checkpoint`) when
    present, else hashes the current state dict.
    """
    name = require_gained(net)
    full = net.weights_hash or hash_state_dict(net.state_dict())
    return name, full[: 2 * HASH_BYTES]


def _describe(name: str, hash_prefix: str) -> str:
    return f"{name} (weights {hash_prefix})"


# ---------------------------------------------------------------------------
# Encode
# ---------------------------------------------------------------------------


def _model_device(net: nn.Module) -> torch.device:
    try:
        return next(net.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _check_size(h: int, w: int) -> None:
    if not (1 <= h <= MAX_DIM and 1 <= w <= MAX_DIM):
        raise CodecError(f"image size {h}x{w} is outside 1..{MAX_DIM}")


def _prepare(net: nn.Module, image: ImageLike) -> Tensor:
    x = image_to_tensor(image)
    h, w = x.shape[-2:]
    _check_size(h, w)
    if not torch.isfinite(x).all():
        raise CodecError("image contains NaN or infinite values")
    return x.to(_model_device(net), torch.float32)


def _prepare_uint8(net: nn.Module, image: ImageLike) -> Optional[Tensor]:
    """A ``uint8`` array as a ``(1, 3, H, W)`` ``uint8`` view for a model whose analysis tiles
    (it converts each tile to float: no float copy of the whole image); None otherwise."""
    if getattr(net, "analysis_tiling", None) is None or not isinstance(image, np.ndarray):
        return None
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return None  # image_to_tensor's message
    h, w = image.shape[:2]
    _check_size(h, w)
    if not image.flags.writeable:
        image = np.array(image)
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).to(_model_device(net))


def _check_quality(net: nn.Module, quality: float, source: Optional[str] = None) -> float:
    try:
        check_quality(quality, net.levels)
    except (TypeError, ValueError) as err:
        raise CodecError(f"{source}: {err}" if source else str(err)) from None
    return float(quality.item() if isinstance(quality, Tensor) else quality)


def _qmap_kwargs(net: nn.Module, qmap) -> dict:
    """``{"qmap": qmap}`` for a model that takes a quality map, ``{}`` without a map."""
    if qmap is None:
        return {}
    if not net.takes_qmap:
        raise CodecError(f"a quality map needs a gained-scgain model; {model_name(net)!r} has channel gains only")
    return {"qmap": qmap}


def _pack(identity: Tuple[str, str], shape: Sequence[int], quality: float, enc, flags: int = 0) -> bytes:
    y_strings, z_strings = enc["strings"]
    if len(y_strings) != 1 or len(z_strings) != 1:
        raise CodecError(f"a container holds one image, got a batch of {len(y_strings)}")
    return Container(
        model=identity[0],
        weights_hash=identity[1],
        height=int(shape[0]),
        width=int(shape[1]),
        quality=float(quality),
        streams=(y_strings[0], z_strings[0]),
        flags=flags,
    ).to_bytes()


def encode(net: nn.Module, image: ImageLike, quality: float, qmap=None, refine: int = 0,
           progress: Optional[Callable[[int, float], None]] = None) -> bytes:
    """Code one image at ``quality`` (float in ``[1, net.levels]``) into a ``.gvae`` file.

    Args:
        net: a gained model with updated entropy tables (e.g. from
            :func:`gainedvae.load_checkpoint`).
        image: ``uint8`` ``(H, W, 3)`` array (see :func:`load_image`) or float
            tensor ``(1, 3, H, W)`` / ``(3, H, W)`` in ``[0, 1]``.
        quality: the rate knob; 1 = lowest rate.
        qmap: optional spatial quality map for ``gained-scgain`` (tensor, number
            in ``[0, 1]`` or grayscale image path; sets flag bit 0).
        refine: steps of encoder-side latent refinement (:mod:`gainedvae.refine`; 0: none).
            The file decodes with the ordinary decoder; encoding takes ``refine`` forward and
            backward passes of the synthesis (``benchmarks/refine.py``).
        progress: called as ``progress(step, loss)`` after each refinement step.
    """
    identity = model_identity(net)
    q = _check_quality(net, quality)
    kw = _qmap_kwargs(net, qmap)
    if refine:
        enc = _refined(net, image, q, refine, kw, progress)
        return _pack(identity, enc["shape"], q, enc, FLAG_QUALITY_MAP if kw else 0)
    x = _prepare_uint8(net, image) if not kw else None  # a tiling model reads uint8 tiles
    if x is None:
        x = _prepare(net, image)
    guard_entropy_coders(net)
    with torch.inference_mode():
        try:
            y = net.analysis(x, **kw)
        except ValueError as err:
            raise CodecError(f"quality map: {err}") from None
        enc = net.compress_analysed(y, q, tuple(x.shape[-2:]))
    return _pack(identity, x.shape[-2:], q, enc, FLAG_QUALITY_MAP if kw else 0)


def _refined(net: nn.Module, image: ImageLike, q: float, steps: int, kw: dict, progress=None):
    """:func:`encode`'s streams with ``steps`` of :func:`gainedvae.refine.refine`."""
    from .refine import refine

    _check_refine(steps)
    x = _prepare(net, image)
    check_refine_memory(*x.shape[-2:])
    guard_entropy_coders(net)
    maps = {}
    if kw:  # the map's weighting of the distortion, as gained-scgain was trained
        try:
            m = prepare_qmap(kw["qmap"], x)
        except (TypeError, ValueError) as err:
            raise CodecError(f"quality map: {err}") from None
        maps = {"qmap": m, "lambda_scale": lambda_scale(m)}
    try:
        refined = refine(net, x, q, steps, progress=progress, **maps)
    except NotImplementedError as err:  # a context model or the GMM conditional
        raise CodecError(f"latent refinement needs a gained hyperprior model with a Gaussian conditional: {err}") from None
    with torch.inference_mode():
        return net.compress_latents(refined.y, refined.z, q, tuple(x.shape[-2:]))


def _check_refine(steps) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise CodecError(f"refinement steps must be an integer >= 0, got {steps!r}")


#: Peak memory of :func:`gainedvae.refine.refine` per (padded) image pixel with the shipped model
#: (N = 64, M = 192, float32): ``benchmarks/refine.py`` measured 801 at 768x512, rounded up.
REFINE_BYTES_PER_PIXEL = 1000


def check_refine_memory(height: int, width: int) -> None:
    """Refuse a refinement whose gradients would not fit (they need the whole image's graph)."""
    need = padded_pixels(height, width) * REFINE_BYTES_PER_PIXEL
    have = available_memory_bytes()
    if have is not None and need > have:
        raise CodecError(
            f"latent refinement of a {height}x{width} image needs about {gigabytes(need)} of memory, "
            f"{gigabytes(have)} is available; encode it without refinement"
        )


# ---------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------


def available_memory_bytes() -> Optional[int]:
    """Memory this process may still use: ``MemAvailable`` and the address-space
    limit (``RLIMIT_AS``, less what is mapped); None when unknown."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limits.append(max(0, soft - mapped))
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return min(limits) if limits else None


def _tiled(net: nn.Module) -> bool:
    """Whether ``net`` decodes in tiles (its memory is bounded, :func:`decode_memory_bytes`)."""
    return getattr(net, "synthesis_tiling", None) is not None


def check_memory(height: int, width: int, tiled: bool = True) -> None:
    """:class:`CodecError` when decoding ``height x width`` (with a tiled model or not) needs more
    memory than is available."""
    need, have = decode_memory_bytes(height, width, tiled), available_memory_bytes()
    if have is not None and need > have:
        raise CodecError(
            f"not enough memory to decode the file's {height}x{width} image: it needs about {gigabytes(need)}, "
            f"{gigabytes(have)} are available"
        )


def _is_allocation_failure(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, RuntimeError) and ("allocate" in text or "out of memory" in text.lower())


def _memory_error(height: int, width: int, tiled: bool) -> CodecError:
    return CodecError(
        f"not enough memory to decode the file's {height}x{width} image: it needs about "
        f"{gigabytes(decode_memory_bytes(height, width, tiled))}"
    )


def _decompressed(net: nn.Module, data: Union[bytes, Container], max_pixels: Optional[int], run: Callable):
    """``(container, run(streams, (H, W), quality))`` of a checked ``.gvae`` file (see :func:`decode`)."""
    c = data if isinstance(data, Container) else Container.from_bytes(data)
    name, hash_prefix = model_identity(net)
    if c.flags & FLAG_QUALITY_MAP and not net.takes_qmap:
        raise CodecError(
            f"this file was coded with a spatial quality map (flag bit 0), which only gained-scgain "
            f"models write; the loaded model {name!r} has no quality-map support"
        )
    if c.model != name or c.weights_hash != hash_prefix:
        where = net.checkpoint_path
        raise CodecError(
            f"the file was made with {_describe(c.model, c.weights_hash)} but the loaded model is "
            f"{_describe(name, hash_prefix)}{f' from {where}' if where else ''}; decode it with the same checkpoint"
        )
    q = _check_quality(net, c.quality, source="file quality")
    if len(c.streams) != 2:
        raise CodecError(f"{name} files have 2 streams (y, z), this one has {len(c.streams)}")
    tiled = _tiled(net)
    check_pixels(c.height, c.width, max_pixels, "the file's image", tiled)
    check_memory(c.height, c.width, tiled)
    guard_entropy_coders(net)
    y_stream, z_stream = c.streams
    try:
        with torch.inference_mode():
            return c, run([[y_stream], [z_stream]], (c.height, c.width), q)
    except CodecError:
        raise
    except MemoryError:
        raise _memory_error(c.height, c.width, tiled) from None
    except (RuntimeError, ValueError, OverflowError, IndexError, TypeError) as err:
        if _is_allocation_failure(err):
            raise _memory_error(c.height, c.width, tiled) from None
        raise CodecError(f"corrupt payload: decoding failed ({type(err).__name__}: {err})") from None


def decode(net: nn.Module, data: Union[bytes, Container], max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Tensor:
    """Decode a ``.gvae`` file to a float image ``(1, 3, H, W)`` in ``[0, 1]``.

    The result equals ``net.decompress(...)["x_hat"]`` for the stored streams. For an 8-bit
    image (to save or show) :func:`decode_image` gives the same pixels in less memory.

    Raises:
        CodecError: malformed/corrupt container, a file made with other
            weights (both identities are named), a quality outside the
            model's range, an image whose padded size exceeds ``max_pixels``
            (or that needs more memory than is available), a stream too short
            for the announced image (:func:`check_stream_length`), or a
            payload that does not decode to a finite image.
    """
    c, x_hat = _decompressed(net, data, max_pixels, lambda *args: net.decompress(*args)["x_hat"])
    if x_hat.shape != (1, 3, c.height, c.width):
        raise CodecError(f"corrupt payload: decoded shape {tuple(x_hat.shape)}")
    if not torch.isfinite(x_hat).all():
        raise CodecError(NON_FINITE)
    return x_hat


def decode_image(net: nn.Module, data: Union[bytes, Container], max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ``.gvae`` file to a ``uint8`` ``(H, W, 3)`` image: the pixels of
    ``tensor_to_image(decode(net, data))``, checked and refused as :func:`decode` does.

    The synthesis writes 8-bit tiles into the result as it produces them
    (``net.decompress_8bit``): no float image of the full size exists (at 6000x4000: the
    72 MB result instead of a 288 MB float image and its conversion).
    """
    return _decompressed(net, data, max_pixels, net.decompress_8bit)[1].cpu().numpy()


# ---------------------------------------------------------------------------
# Rate control (the search itself: gainedvae.ratecontrol)
# ---------------------------------------------------------------------------


def _rate_control(
    net: nn.Module, image: ImageLike, metric: str, target: float, tol: float, max_iter: int, qmap=None,
    refine: int = 0, progress=None,
) -> RateControlResult:
    start = time.perf_counter()
    check_target(metric, target, tol)
    identity = model_identity(net)
    x = _prepare(net, image)
    kw = _qmap_kwargs(net, qmap)
    _check_refine(refine)
    guard_entropy_coders(net)
    shape = tuple(x.shape[-2:])
    pixels = shape[0] * shape[1]

    def trial(q: float, enc: dict) -> Trial:
        data = _pack(identity, shape, q, enc, FLAG_QUALITY_MAP if kw else 0)
        bpp = len(data) * 8 / pixels
        psnr = None
        if metric == "psnr":
            with torch.inference_mode():
                x_hat = net.decompress(enc["strings"], enc["shape"], q)["x_hat"]
            psnr = psnr_8bit(x, x_hat)
        return Trial(q, data, bpp, psnr, _searched(metric, bpp, psnr))

    with torch.inference_mode():
        try:
            y = net.analysis(x, **kw)  # the quality-independent transform, once
        except ValueError as err:
            raise CodecError(f"quality map: {err}") from None

        def evaluate(q: float) -> Trial:
            return trial(q, net.compress_analysed(y, q, shape))

        plain = control(evaluate, net.levels, net.lambdas, metric, float(target), tol, max_iter, started=start)
        if not refine:
            return plain
        slope, probes = _local_slope(evaluate, plain, net.levels)
    refined = control(lambda q: trial(q, _refined(net, x, q, refine, kw, progress)), net.levels, net.lambdas, metric,
                      float(target), tol, min(max_iter, REFINED_TRIALS), started=start, start=plain.quality,
                      slope=slope)
    return dataclasses.replace(refined, iterations=plain.iterations + probes + refined.iterations,
                               refine=refine, refined=refined.iterations)


#: At most this many refined trial codings in rate control with refinement (each costs ``refine``
#: steps); the search starts at the plain encoder's answer, so two usually suffice.
REFINED_TRIALS = 4


def _local_slope(evaluate: Callable[[float], Trial], plain: RateControlResult, levels: int) -> Tuple[Optional[float], int]:
    """``(slope, trials)``: d(log bpp)/dq (dB/q for PSNR) of the plain encoder half a quality
    step from ``plain``'s quality (None where it does not increase); ``trials`` is 1."""
    q0 = plain.quality
    q1 = q0 - 0.5 if q0 - 0.5 >= 1 else min(q0 + 0.5, float(levels))
    if q1 == q0:
        return None, 0
    transform = math.log if plain.metric == "bpp" else (lambda v: v)  # as control() searches
    here = _searched(plain.metric, plain.bpp, plain.psnr)
    slope = (transform(evaluate(q1).value) - transform(here)) / (q1 - q0)
    return (slope if math.isfinite(slope) and slope > 0 else None), 1


def _searched(metric: str, bpp: float, psnr: Optional[float]) -> float:
    """The value rate control searches on: the bpp, or the PSNR capped at 200 dB (a lossless trial)."""
    return bpp if metric == "bpp" else min(psnr, 200.0)


def encode_to_bpp(
    net: nn.Module, image: ImageLike, target_bpp: float, tol: float = 0.02, max_iter: int = 30, qmap=None,
    refine: int = 0, progress: Optional[Callable[[int, float], None]] = None,
) -> RateControlResult:
    """Encode at the quality whose file size is within ``tol`` (relative) of
    ``target_bpp`` (bits of the whole ``.gvae`` file per pixel).

    The analysis transform runs once; each iteration is one
    ``net.compress_analysed`` at a trial quality. A target below the rate of
    quality 1 (above that of quality ``L``) gives quality 1 (``L``) with
    ``clamped=True``.

    ``refine``: steps of latent refinement (as :func:`encode`) for the file
    written. The plain encoder's search comes first; a second search starts at
    its quality, with its local slope, and refines every trial (at most
    :data:`REFINED_TRIALS`, each ``refine`` steps; ``result.refined`` counts them).
    ``progress(step, loss)`` is called after each of their steps.
    """
    return _rate_control(net, image, "bpp", target_bpp, tol, max_iter, qmap, refine, progress)


def encode_to_psnr(
    net: nn.Module, image: ImageLike, target_psnr: float, tol: float = 0.1, max_iter: int = 30, qmap=None,
    refine: int = 0, progress: Optional[Callable[[int, float], None]] = None,
) -> RateControlResult:
    """Encode at the quality whose 8-bit reconstruction PSNR is within ``tol``
    dB of ``target_psnr``.

    As :func:`encode_to_bpp`, but each iteration also decodes the trial
    streams to measure the PSNR of the rounded reconstruction.
    """
    return _rate_control(net, image, "psnr", target_psnr, tol, max_iter, qmap, refine, progress)
