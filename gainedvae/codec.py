"""Image codec: ``.gvae`` container files, image I/O and rate control.

A ``.gvae`` file holds one image coded by a gained model at one quality; the
byte layout is documented in ``docs/format.md``. Typical use::

    net = gainedvae.load_checkpoint("model.pt")
    x = load_image("photo.png")                  # uint8 HxWx3, any PIL mode
    data = encode(net, x, quality=4.5)           # bytes of a .gvae file
    x_hat = decode(net, data)                    # (1, 3, H, W) float in [0, 1]
    save_image(x_hat, "photo_decoded.png")       # atomic write

    result = encode_to_bpp(net, x, target_bpp=0.5)      # rate control
    result.quality, result.bpp, result.data

Everything that can go wrong with a file (unreadable image, truncated or
corrupted container, other weights) raises :class:`CodecError`, a
``ValueError`` with a message that names the problem.

Hostile payloads: CompressAI's rANS decoder does not bounds-check its input
and reads past the end of a stream that is too short for the symbols it is
asked for (a truncated, empty or garbage stream crashes the process with a
segfault for large enough images), and its encoder writes past the start of
its buffer when the latent is far outside the entropy model's range. The
codec wraps the model's coders (:func:`guard_entropy_coders`): streams get
zero bytes appended before decoding (:func:`rans_padding`; a valid stream is
decoded from exactly its own bytes, so this changes nothing for it, and a
garbage stream runs into zeros instead of unmapped memory), and symbols are
checked before encoding (:func:`check_encodable`).
"""

from __future__ import annotations

import array
import inspect
import io
import math
import os
import struct
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

from .checkpoint import atomic_write_bytes, hash_state_dict
from .container import (  # the torch-free container, re-exported here
    _CRC,
    _DIMS,
    _HEAD,
    _U32,
    DECODE_BYTES_PER_PIXEL,
    DEFAULT_MAX_PIXELS,
    FLAG_QUALITY_MAP,
    FORMAT_VERSION,
    HASH_BYTES,
    KNOWN_FLAGS,
    MAGIC,
    MAX_DIM,
    MAX_FILE_BYTES,
    CodecError,
    Container,
    _hash_prefix_bytes,
    _read_bounded,
    _read_file,
    read_container,
)
from .gain import check_quality
from .models import MODELS, is_gained, model_name

__all__ = [
    "CodecError",
    "Container",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_DIM",
    "RateControlResult",
    "decode",
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

PathLike = Union[str, os.PathLike]
ImageLike = Union[np.ndarray, Tensor]

#: A stream must hold at least this fraction of the bits that its symbols
#: cost at the least (:func:`min_stream_bits`); a shorter stream cannot have
#: been written by the encoder for the announced image size.
MIN_STREAM_FRACTION = 0.5


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
    full = getattr(net, "weights_hash", None) or hash_state_dict(net.state_dict())
    return name, full[: 2 * HASH_BYTES]


def _describe(name: str, hash_prefix: str) -> str:
    return f"{name} (weights {hash_prefix})"


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def load_image(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as 8-bit RGB, ``uint8`` array of shape ``(H, W, 3)``.

    Grayscale, palette, CMYK, YCbCr, ... are converted to RGB; 16-bit images
    (``I;16*``, and ``I`` with values above 255) are scaled to 8 bits
    (``round(v / 257)``); an alpha channel is dropped with a warning naming
    the file; the EXIF orientation is applied; of an animated image (GIF,
    WebP, APNG) only the first frame is read, with a warning naming the frame
    count. The size in the file's header is checked against ``max_pixels``
    (padded to 64, as for :func:`decode`) before any pixel is decoded.
    Raises :class:`CodecError` for missing, unreadable, non-image or too
    large files.
    """
    path = Path(path)
    if not path.exists():
        raise CodecError(f"image {path} does not exist")
    if path.is_dir():
        raise CodecError(f"image {path} is a directory")
    try:
        with Image.open(path) as img:
            check_pixels(img.height, img.width, max_pixels, f"image {path}")
            _warn_if_animated(img, path)
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # malformed EXIF: keep the stored orientation
                pass
            return _to_rgb8(img, path)
    except CodecError:
        raise
    except UnidentifiedImageError:
        raise CodecError(f"cannot read image {path}: not an image file (or a format PIL cannot read)") from None
    except Image.DecompressionBombError as err:
        raise CodecError(f"cannot read image {path}: {err}") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as err:
        raise CodecError(f"cannot read image {path}: {type(err).__name__}: {err}") from None


def _warn_if_animated(img: Image.Image, path: Path) -> None:
    frames = getattr(img, "n_frames", 1)
    if isinstance(frames, int) and frames > 1:
        warnings.warn(
            f"{path}: animated image with {frames} frames; only the first frame is coded", UserWarning, stacklevel=3
        )


#: Spatial downsampling factor of every gained model: images are padded to a multiple of it.
PAD_FACTOR = 64


def padded_pixels(height: int, width: int, factor: int = PAD_FACTOR) -> int:
    """Pixels of a ``height x width`` image padded to multiples of ``factor``."""
    return (-(-int(height) // factor) * factor) * (-(-int(width) // factor) * factor)


def decode_memory_bytes(height: int, width: int) -> int:
    """About how many bytes :func:`decode` needs for a ``height x width`` image."""
    return DECODE_BYTES_PER_PIXEL * padded_pixels(height, width)


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB"


def check_pixels(height: int, width: int, max_pixels: Optional[int], what: str) -> None:
    """:class:`CodecError` when the padded ``height x width`` exceeds ``max_pixels`` (None: no limit)."""
    if max_pixels is None:
        return
    padded = padded_pixels(height, width)
    if padded > max_pixels:
        raise CodecError(
            f"{what} is {height}x{width} pixels ({padded} when padded to multiples of {PAD_FACTOR}), more than "
            f"max_pixels={max_pixels}; coding it needs about {_gb(decode_memory_bytes(height, width))} "
            "(raise the limit with max_pixels= / --max-pixels if this machine has the memory)"
        )


def _to_rgb8(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        warnings.warn(f"{path}: dropping the alpha channel ({mode} image coded as RGB)", UserWarning, stacklevel=3)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        if mode == "I" and arr.size and arr.max() <= 255 and arr.min() >= 0:
            gray = arr  # 8-bit values stored in a 32-bit image
        else:
            gray = np.clip(arr, 0, 65535) / 257.0
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif mode == "F":
        gray = np.asarray(img, dtype=np.float64)
        gray = np.nan_to_num(gray, nan=0.0)
        if gray.size and gray.max() <= 1.0:
            gray = gray * 255.0  # float images in [0, 1]
        rgb = np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    else:
        rgb = np.asarray(img.convert("RGB"))
    rgb = np.array(rgb, dtype=np.uint8, order="C")  # a writable copy
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise CodecError(f"cannot read image {path}: unexpected decoded shape {rgb.shape}")
    return rgb


def image_to_tensor(image: ImageLike) -> Tensor:
    """``uint8`` ``(H, W, 3)`` array (or a float tensor) -> float ``(1, 3, H, W)`` in [0, 1]."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise CodecError(f"expected a uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}")
        if not image.flags.writeable or not image.flags.c_contiguous:
            image = np.array(image, dtype=np.uint8, order="C")
        return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div_(255)
    if isinstance(image, Tensor):
        x = image.unsqueeze(0) if image.dim() == 3 else image
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise CodecError(f"expected an image tensor of shape (1, 3, H, W) or (3, H, W), got {tuple(image.shape)}")
        if not x.is_floating_point():
            raise CodecError(f"expected a float image tensor in [0, 1], got {x.dtype}")
        return x
    raise CodecError(f"expected an image array or tensor, got {type(image).__name__}")


def tensor_to_image(x: Tensor) -> np.ndarray:
    """Float ``(1, 3, H, W)`` / ``(3, H, W)`` in [0, 1] -> ``uint8`` ``(H, W, 3)`` (rounded)."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise CodecError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise CodecError(f"expected an image tensor of shape (3, H, W), got {tuple(x.shape)}")
    x = x.detach()
    out = torch.empty(x.shape[1], x.shape[2], 3, dtype=torch.uint8)
    rows = max(1, (1 << 22) // max(1, x.shape[2]))  # ~4 M values per chunk: no full-size float temporaries
    for r in range(0, x.shape[1], rows):
        out[r : r + rows] = x[:, r : r + rows].float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu()
    return out.numpy()


def save_image(image: ImageLike, path: PathLike) -> Path:
    """Write an image atomically (temp file + ``os.replace``).

    The format follows the file extension when PIL knows it, PNG otherwise.
    """
    arr = image if isinstance(image, np.ndarray) else tensor_to_image(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise CodecError(f"expected a uint8 (H, W, 3) image, got {arr.dtype} {arr.shape}")
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    buf = io.BytesIO()
    try:
        Image.fromarray(arr, "RGB").save(buf, format=fmt)
    except (OSError, KeyError, ValueError) as err:
        raise CodecError(f"cannot write {path} as {fmt}: {err}") from None
    atomic_write_bytes(path, buf.getvalue())
    return path


def psnr_8bit(x: ImageLike, x_hat: ImageLike) -> float:
    """PSNR (dB) between two images after rounding both to 8 bits (inf if equal)."""
    a = image_to_tensor(x) if isinstance(x, np.ndarray) else x
    b = image_to_tensor(x_hat) if isinstance(x_hat, np.ndarray) else x_hat
    a8 = a.detach().double().clamp(0, 1).mul(255).round()
    b8 = b.detach().double().clamp(0, 1).mul(255).round().to(a8.device)
    if a8.shape != b8.shape:
        raise CodecError(f"PSNR of images with different shapes {tuple(a8.shape)} and {tuple(b8.shape)}")
    mse = torch.mean((a8 - b8) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# ---------------------------------------------------------------------------
# Encode / decode
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
    if "qmap" not in inspect.signature(net.analysis).parameters:
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


def encode(net: nn.Module, image: ImageLike, quality: float, qmap=None) -> bytes:
    """Code one image at ``quality`` (float in ``[1, net.levels]``) into a ``.gvae`` file.

    Args:
        net: a gained model with updated entropy tables (e.g. from
            :func:`gainedvae.load_checkpoint`).
        image: ``uint8`` ``(H, W, 3)`` array (see :func:`load_image`) or float
            tensor ``(1, 3, H, W)`` / ``(3, H, W)`` in ``[0, 1]``.
        quality: the rate knob; 1 = lowest rate.
        qmap: optional spatial quality map for ``gained-scgain`` (tensor, number
            in ``[0, 1]`` or grayscale image path; sets flag bit 0).
    """
    identity = model_identity(net)
    q = _check_quality(net, quality)
    kw = _qmap_kwargs(net, qmap)
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


def _longest_run(stream: bytes, value: int = 0xFF) -> int:
    if not stream:
        return 0
    hits = np.frombuffer(stream, dtype=np.uint8) == value
    if not hits.any():
        return 0
    edges = np.diff(np.concatenate(([0], hits.view(np.int8), [0])))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def rans_padding(stream: bytes, n_symbols: int) -> int:
    """Zero bytes to append to ``stream`` before CompressAI's rANS decoder
    decodes ``n_symbols`` symbols from it, so that it cannot read past the
    end of its buffer however corrupt the stream is.

    CompressAI's ``RansDecoder.decode_with_indexes`` never checks the stream
    length: it reads 8 bytes to start, at most one 32-bit word per decoded
    symbol, and in its escape ("bypass") path a count of 4-bit nibbles that
    only ends at a nibble below 15 -- a run of ``0xFF`` bytes lets one symbol
    read about 15 times the length of that run. A valid stream is decoded
    from exactly its own bytes (padding never changes its result); for
    garbage the padding bounds the over-read:

    * ``8 + 4 * n_symbols``: initial state and one word per symbol;
    * ``16 * (longest 0xFF run + 16)``: the escape amplification of the one
      symbol that can straddle the end of the real data (inside the zeros a
      nibble run is limited by the 64-bit state);
    * 64 KiB for escapes decoded inside the zeros (at most about 140 bytes
      each, with probability ~2**-16 per symbol for CompressAI's tables).
    """
    return 8 + 4 * int(n_symbols) + 16 * (_longest_run(stream) + 16) + 65536


#: Symbols whose magnitude reaches this are refused before rANS encoding
#: (the C++ encoder computes ``2 * value`` in int32 and can loop forever).
_MAX_SYMBOL = 1 << 29


def _nibbles(m: np.ndarray) -> np.ndarray:
    """Number of 4-bit digits of the non-negative integers ``m`` (0 for 0)."""
    bits = np.zeros(m.shape, dtype=np.int64)
    nz = m > 0
    bits[nz] = np.floor(np.log2(m[nz].astype(np.float64))).astype(np.int64) + 1
    return (bits + 3) // 4


def check_encodable(symbols, indexes, cdfs, cdfs_sizes, offsets) -> None:
    """Refuse symbols that CompressAI's rANS encoder cannot code safely.

    ``RansEncoder.encode_with_indexes`` writes backwards into a buffer of one
    32-bit word per symbol without a bounds check; symbols far outside the
    entropy model's tables (escape-coded with up to 52 bits each) overflow it
    and silently corrupt the heap, and ``|value| >= 2**30`` makes its escape
    loop spin forever. This computes an upper bound of the bits the encoder
    will write (exact per-symbol cost when a cheap bound is not enough) and
    raises :class:`CodecError` when it does not fit.
    """
    n = len(symbols)
    if n == 0:
        return
    try:
        sym32 = np.frombuffer(array.array("i", symbols), dtype=np.int32)
    except OverflowError:
        raise CodecError("latent symbols overflow int32 (cannot be rANS-coded)") from None
    largest = max(int(sym32.max()), -int(sym32.min()))
    if largest >= _MAX_SYMBOL:
        raise CodecError(
            f"latent symbol {largest} is far outside the entropy model's range "
            "(cannot be rANS-coded; is the model trained and its gains sane?)"
        )
    limit = 4 * n - 12 - n / 1000  # bytes: buffer minus the 8-byte flush and rounding slack
    # Cheap bounds, valid when every table's symbol range contains 0: an
    # escaped symbol s costs at most 16 + 4 * (1 + nibbles(2|s|)) bits.
    contains_zero = all(off <= 0 <= off + size - 3 for off, size in zip(offsets, cdfs_sizes))
    if contains_zero:
        worst = 16 + 4 * (1 + int(_nibbles(np.array([2 * largest]))[0]))
        if n * worst / 8 <= limit:  # even if every symbol escaped
            return
        sym = sym32.astype(np.int64)
        m = 2 * np.abs(sym)
        bits = 16 * n + int(np.sum(np.where(m > 0, 4 * (1 + _nibbles(m)), 0)))
        if bits / 8 <= limit:
            return
    sym = sym32.astype(np.int64)
    # Exact cost of every symbol.
    idx = np.fromiter(indexes, dtype=np.int64, count=n)
    off = np.asarray(offsets, dtype=np.int64)[idx]
    max_value = np.asarray(cdfs_sizes, dtype=np.int64)[idx] - 2
    value = sym - off
    escape = (value < 0) | (value >= max_value)
    coded = np.where(escape, max_value, value)
    table = np.zeros((len(cdfs), max(map(len, cdfs))), dtype=np.int64)  # rows may be cut to their lengths
    for i, row in enumerate(cdfs):
        table[i, : len(row)] = row
    freq = table[idx, coded + 1] - table[idx, coded]
    if (freq <= 0).any():
        raise CodecError("invalid entropy model tables (a symbol has zero frequency)")
    raw = np.where(value < 0, -2 * value - 1, 2 * (value - max_value))[escape]
    n_bypass = _nibbles(raw)
    bits = float(np.sum(16 - np.log2(freq))) + float(np.sum(4 * (n_bypass + n_bypass // 15 + 1)))
    if bits / 8 > limit:
        raise CodecError(
            f"the latent needs about {bits / 8:.0f} bytes for {n} symbols, more than CompressAI's rANS encoder "
            f"can hold ({4 * n} bytes): its values are far outside the entropy model's range "
            "(is the model trained and its gains sane?)"
        )


class _Proxy:
    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)


class _GuardedEncoder(_Proxy):
    """``RansEncoder`` that refuses symbols overflowing its buffer (:func:`check_encodable`)."""

    def encode_with_indexes(self, symbols, indexes, cdfs, cdfs_sizes, offsets, *args, **kwargs):
        check_encodable(symbols, indexes, cdfs, cdfs_sizes, offsets)
        return self._inner.encode_with_indexes(symbols, indexes, cdfs, cdfs_sizes, offsets, *args, **kwargs)


#: Information an rANS coding step can lose to rounding, in bits per symbol: the
#: 64-bit state ``x >= 2**15 * freq`` maps to ``(x // freq) * 2**16 + ...``, at
#: least ``x * 2**16 / freq * (1 - 2**-15)``.
_RANS_ROUNDING_BITS = -math.log2(1 - 2.0**-15)


def _table_min_bits(cdfs, cdfs_sizes) -> np.ndarray:
    """Cheapest symbol of every rANS table, in bits: ``log2(total / largest frequency)``."""
    costs = np.empty(len(cdfs), dtype=np.float64)
    for i, (row, size) in enumerate(zip(cdfs, cdfs_sizes)):
        cdf = np.asarray(row[: int(size)], dtype=np.int64)
        freq = np.diff(cdf)
        costs[i] = math.log2(cdf[-1] / freq.max()) if freq.size and freq.max() > 0 and cdf[-1] > 0 else 0.0
    return costs


_MIN_BITS_CACHE: dict = {}  # id(cdfs) -> (cdfs, its costs); the few most recently used tables


def min_stream_bits(indexes, cdfs, cdfs_sizes) -> float:
    """A lower bound of the bits CompressAI's rANS encoder writes for symbols coded
    with the tables ``indexes`` (every symbol the most probable one of its table,
    less the coder's rounding loss, :data:`_RANS_ROUNDING_BITS` per symbol;
    escape bits and the 8-byte flush are not counted)."""
    hit = _MIN_BITS_CACHE.pop(id(cdfs), None)
    if hit is None or hit[0] is not cdfs:
        hit = (cdfs, np.maximum(_table_min_bits(cdfs, cdfs_sizes) - _RANS_ROUNDING_BITS, 0.0))
    _MIN_BITS_CACHE[id(cdfs)] = hit  # most recent last
    while len(_MIN_BITS_CACHE) > 4:
        _MIN_BITS_CACHE.pop(next(iter(_MIN_BITS_CACHE)))
    per_table = hit[1]
    idx = np.asarray(indexes, dtype=np.int64)
    if idx.size == 0:
        return 0.0
    if idx.min() < 0 or idx.max() >= len(per_table):
        raise CodecError(f"entropy table index out of range (0..{len(per_table) - 1})")
    return float(np.bincount(idx, minlength=len(per_table)) @ per_table)


def check_stream_length(stream: bytes, indexes, cdfs, cdfs_sizes) -> None:
    """Refuse a stream too short for its symbols (an edited image size, a truncated stream).

    A valid stream holds at least :func:`min_stream_bits` bits; one with fewer
    than :data:`MIN_STREAM_FRACTION` of them was not written by the encoder for
    this many symbols, and decoding it would only produce garbage, at the full
    cost of the announced size.
    """
    need = MIN_STREAM_FRACTION * min_stream_bits(indexes, cdfs, cdfs_sizes) / 8
    if len(stream) < need:
        raise CodecError(
            f"a stream of {len(stream)} bytes cannot code {len(indexes)} latent symbols (at least {math.ceil(need)} "
            "bytes expected): the file is truncated or its image size was edited"
        )


class _GuardedDecoder(_Proxy):
    """``RansDecoder`` whose ``decode_with_indexes`` refuses streams too short for
    their symbols (:func:`check_stream_length`) and pads the stream (:func:`rans_padding`).

    ``set_stream`` / ``decode_stream`` (not used by the hyperprior models)
    are passed through unguarded: the symbol count is unknown when the
    stream is set.
    """

    def decode_with_indexes(self, encoded, indexes, *args, **kwargs):
        if not isinstance(encoded, (bytes, bytearray)):
            raise CodecError(f"a stream must be bytes, got {type(encoded).__name__}")
        if len(args) >= 2:
            check_stream_length(encoded, indexes, args[0], args[1])
        padded = bytes(encoded) + bytes(rans_padding(encoded, len(indexes)))
        return self._inner.decode_with_indexes(padded, indexes, *args, **kwargs)


class _GuardedRansCoder(_Proxy):
    """Proxy for CompressAI's ``_EntropyCoder`` (``ans``) that pads streams
    before decoding and checks symbols before encoding, also through its
    ``_encoder`` / ``_decoder`` attributes; transparent for valid data."""

    def __init__(self, inner):
        super().__init__(inner)
        self._encoder = _GuardedEncoder(inner._encoder)
        self._decoder = _GuardedDecoder(inner._decoder)

    def encode_with_indexes(self, *args, **kwargs):
        return self._encoder.encode_with_indexes(*args, **kwargs)

    def decode_with_indexes(self, *args, **kwargs):
        return self._decoder.decode_with_indexes(*args, **kwargs)


def guard_entropy_coders(net: nn.Module) -> nn.Module:
    """Make ``net``'s rANS coders safe for hostile streams (idempotent, in place).

    Wraps the ``entropy_coder`` of every CompressAI entropy model in ``net``
    with a proxy that pads streams before decoding and refuses latents that
    would overflow the encoder's buffer (see :func:`rans_padding` and
    :func:`check_encodable`). Valid streams code and decode exactly as before.
    :func:`encode`, :func:`decode` and the rate control call this.
    """
    from compressai.entropy_models import EntropyModel

    for module in net.modules():
        if isinstance(module, EntropyModel):
            coder = module.entropy_coder
            if (
                not isinstance(coder, _GuardedRansCoder)
                and getattr(coder, "name", None) == "ans"
                and hasattr(coder, "_encoder")
                and hasattr(coder, "_decoder")
            ):
                module.entropy_coder = _GuardedRansCoder(coder)
    return net


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


def check_memory(height: int, width: int) -> None:
    """:class:`CodecError` when decoding ``height x width`` needs more memory than is available."""
    need, have = decode_memory_bytes(height, width), available_memory_bytes()
    if have is not None and need > have:
        raise CodecError(
            f"not enough memory to decode the file's {height}x{width} image: it needs about {_gb(need)}, "
            f"{_gb(have)} are available"
        )


def _is_allocation_failure(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, RuntimeError) and ("allocate" in text or "out of memory" in text.lower())


def _memory_error(height: int, width: int) -> CodecError:
    return CodecError(
        f"not enough memory to decode the file's {height}x{width} image: it needs about "
        f"{_gb(decode_memory_bytes(height, width))}"
    )


def decode(net: nn.Module, data: Union[bytes, Container], max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Tensor:
    """Decode a ``.gvae`` file to a float image ``(1, 3, H, W)`` in ``[0, 1]``.

    The result equals ``net.decompress(...)["x_hat"]`` for the stored streams.

    Raises:
        CodecError: malformed/corrupt container, a file made with other
            weights (both identities are named), a quality outside the
            model's range, an image whose padded size exceeds ``max_pixels``
            (or that needs more memory than is available), a stream too short
            for the announced image (:func:`check_stream_length`), or a
            payload that does not decode to a finite image.
    """
    c = data if isinstance(data, Container) else Container.from_bytes(data)
    name, hash_prefix = model_identity(net)
    if c.flags & FLAG_QUALITY_MAP and "qmap" not in inspect.signature(net.analysis).parameters:
        raise CodecError(
            f"this file was coded with a spatial quality map (flag bit 0), which only gained-scgain "
            f"models write; the loaded model {name!r} has no quality-map support"
        )
    if c.model != name or c.weights_hash != hash_prefix:
        where = getattr(net, "checkpoint_path", None)
        raise CodecError(
            f"the file was made with {_describe(c.model, c.weights_hash)} but the loaded model is "
            f"{_describe(name, hash_prefix)}{f' from {where}' if where else ''}; decode it with the same checkpoint"
        )
    q = _check_quality(net, c.quality, source="file quality")
    if len(c.streams) != 2:
        raise CodecError(f"{name} files have 2 streams (y, z), this one has {len(c.streams)}")
    check_pixels(c.height, c.width, max_pixels, "the file's image")
    check_memory(c.height, c.width)
    guard_entropy_coders(net)
    y_stream, z_stream = c.streams
    try:
        with torch.inference_mode():
            x_hat = net.decompress([[y_stream], [z_stream]], (c.height, c.width), q)["x_hat"]
    except CodecError:
        raise
    except MemoryError:
        raise _memory_error(c.height, c.width) from None
    except (RuntimeError, ValueError, OverflowError, IndexError, TypeError) as err:
        if _is_allocation_failure(err):
            raise _memory_error(c.height, c.width) from None
        raise CodecError(f"corrupt payload: decoding failed ({type(err).__name__}: {err})") from None
    if x_hat.shape != (1, 3, c.height, c.width):
        raise CodecError(f"corrupt payload: decoded shape {tuple(x_hat.shape)}")
    if not torch.isfinite(x_hat).all():
        raise CodecError("corrupt payload: the streams decode to non-finite values")
    return x_hat


# ---------------------------------------------------------------------------
# Rate control
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RateControlResult:
    """Outcome of :func:`encode_to_bpp` / :func:`encode_to_psnr`.

    ``data`` is the ``.gvae`` file; ``bpp`` its size in bits per pixel;
    ``psnr`` the 8-bit PSNR of its reconstruction (``encode_to_psnr`` only);
    ``iterations`` the number of trial codings (``net.compress_analysed``
    calls); ``clamped`` is True when the target lies outside what the model
    reaches and the result is the end of the quality range; ``converged`` is
    False when the tolerance could not be met inside the range (a jump in
    rate), the result is then the closest trial.
    """

    data: bytes
    quality: float
    bpp: float
    psnr: Optional[float]
    metric: str
    target: float
    iterations: int
    seconds: float
    clamped: bool
    converged: bool

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def summary(self) -> str:
        got = f"{self.bpp:.4f} bpp" + (f", {self.psnr:.2f} dB" if self.psnr is not None else "")
        unit = "bpp" if self.metric == "bpp" else "dB"
        if self.clamped:
            state = f"target {self.target:g} {unit} unreachable, clamped to quality {self.quality:g}"
        elif not self.converged:
            state = f"target {self.target:g} {unit} not met within tolerance, closest quality {self.quality:.4f}"
        else:
            state = f"target {self.target:g} {unit} reached at quality {self.quality:.4f}"
        return f"{self.nbytes} bytes, {got}; {state} ({self.iterations} iterations, {self.seconds:.2f} s)"


@dataclass
class _Trial:
    quality: float
    data: bytes
    bpp: float
    psnr: Optional[float]
    value: float  # bpp or psnr


def _search(
    evaluate: Callable[[float], _Trial],
    levels: int,
    transform: Callable[[float], float],
    target: float,
    accept: Callable[[float], bool],
    slope: float,
    max_iter: int,
) -> Tuple[_Trial, int, bool, bool]:
    """Find ``q`` in ``[1, levels]`` with ``accept(value(q))`` for a value that
    increases with ``q``: bisection on a bracket, accelerated by interpolation.

    ``g(q) = transform(value(q)) - transform(target)``. While only one side of
    the root is known, a secant step (slope from the last two trials, else
    ``slope``) is taken towards it, clipped to the range; the ends 1 and
    ``levels`` are only evaluated when a step lands there, and a wrong sign
    there ends the search as *clamped*. Once the root is bracketed, the
    Illinois variant of regula falsi is used, kept at least 1/16 of the
    bracket away from its ends; whenever the bracket did not halve over the
    last two trials the next one is the midpoint, so the search is never
    slower than every other step of a bisection.

    Returns ``(trial, iterations, clamped, converged)``.
    """
    lo, hi = 1.0, float(levels)
    g_lo: Optional[float] = None  # g at lo once evaluated (negative)
    g_hi: Optional[float] = None  # g at hi once evaluated (positive)
    last_side = 0
    trials: List[Tuple[float, float, _Trial]] = []
    widths: List[float] = []  # bracket width after every trial
    cache = {}
    q = (1.0 + levels) / 2.0
    for _ in range(max_iter):
        if q in cache:
            break
        t = evaluate(q)
        g = transform(t.value) - transform(target)
        cache[q] = t
        trials.append((q, g, t))
        if accept(t.value):
            return t, len(trials), False, True
        if g < 0:
            if q >= levels:
                return t, len(trials), True, False
            if last_side == -1 and g_hi is not None:
                g_hi /= 2  # Illinois: the same end moved twice, damp the other one
            lo, g_lo, last_side = q, g, -1
        else:
            if q <= 1:
                return t, len(trials), True, False
            if last_side == 1 and g_lo is not None:
                g_lo /= 2
            hi, g_hi, last_side = q, g, 1
        width = hi - lo
        widths.append(width)
        if width <= 1e-7:
            break
        if g_lo is not None and g_hi is not None:
            cand = lo + width * (-g_lo) / (g_hi - g_lo)
            margin = width / 16
            if not math.isfinite(cand) or (len(widths) >= 3 and width > widths[-3] / 2):
                cand = lo + width / 2  # not halving every two steps: bisect
            else:
                cand = min(max(cand, lo + margin), hi - margin)
        else:
            s = slope
            if len(trials) >= 2:
                (q1, g1, _), (q2, g2, _) = trials[-2], trials[-1]
                if q2 != q1 and math.isfinite(g1) and math.isfinite(g2):
                    est = (g2 - g1) / (q2 - q1)
                    if est > 0:
                        s = est
            cand = q - g / s if math.isfinite(g) else (lo if g > 0 else hi)
            cand = min(max(cand, lo), hi)
            if g_lo is not None and cand <= lo:
                cand = lo + width / 2
            if g_hi is not None and cand >= hi:
                cand = lo + width / 2
        q = float(cand)
    # Tolerance not met: the closest trial (in the transformed domain).
    best = min(trials, key=lambda item: abs(item[1]) if math.isfinite(item[1]) else math.inf)
    return best[2], len(trials), False, False


def _mean_log_lambda_step(net: nn.Module) -> float:
    lambdas = getattr(net, "lambdas", None) or (1.0, 2.0)
    steps = [math.log(b / a) for a, b in zip(lambdas, lambdas[1:])]
    return sum(steps) / len(steps) if steps else math.log(2.0)


def _rate_control(
    net: nn.Module, image: ImageLike, metric: str, target: float, tol: float, max_iter: int, qmap=None
) -> RateControlResult:
    start = time.perf_counter()
    identity = model_identity(net)
    x = _prepare(net, image)
    kw = _qmap_kwargs(net, qmap)
    guard_entropy_coders(net)
    shape = tuple(x.shape[-2:])
    pixels = shape[0] * shape[1]
    with torch.inference_mode():
        try:
            y = net.analysis(x, **kw)  # the quality-independent transform, once
        except ValueError as err:
            raise CodecError(f"quality map: {err}") from None

        def evaluate(q: float) -> _Trial:
            enc = net.compress_analysed(y, q, shape)
            data = _pack(identity, shape, q, enc, FLAG_QUALITY_MAP if kw else 0)
            bpp = len(data) * 8 / pixels
            psnr = None
            if metric == "psnr":
                x_hat = net.decompress(enc["strings"], enc["shape"], q)["x_hat"]
                psnr = psnr_8bit(x, x_hat)
            return _Trial(q, data, bpp, psnr, bpp if metric == "bpp" else min(psnr, 200.0))

        step = _mean_log_lambda_step(net)
        if metric == "bpp":
            trial, iters, clamped, converged = _search(
                evaluate, net.levels, math.log, target, lambda v: abs(v - target) <= tol * target, 0.5 * step, max_iter
            )
        else:
            trial, iters, clamped, converged = _search(
                evaluate, net.levels, lambda v: v, target, lambda v: abs(v - target) <= tol, 2.0 * step, max_iter
            )
    return RateControlResult(
        data=trial.data,
        quality=trial.quality,
        bpp=trial.bpp,
        psnr=trial.psnr,
        metric=metric,
        target=float(target),
        iterations=iters,
        seconds=time.perf_counter() - start,
        clamped=clamped,
        converged=converged,
    )


def encode_to_bpp(
    net: nn.Module, image: ImageLike, target_bpp: float, tol: float = 0.02, max_iter: int = 30, qmap=None
) -> RateControlResult:
    """Encode at the quality whose file size is within ``tol`` (relative) of
    ``target_bpp`` (bits of the whole ``.gvae`` file per pixel).

    The analysis transform runs once; each iteration is one
    ``net.compress_analysed`` at a trial quality. A target below the rate of
    quality 1 (above that of quality ``L``) gives quality 1 (``L``) with
    ``clamped=True``.
    """
    if not (isinstance(target_bpp, (int, float)) and math.isfinite(target_bpp) and target_bpp > 0):
        raise CodecError(f"target bpp must be a positive number, got {target_bpp!r}")
    if not 0 < tol < 1:
        raise CodecError(f"tol must be in (0, 1), got {tol!r}")
    return _rate_control(net, image, "bpp", float(target_bpp), tol, max_iter, qmap)


def encode_to_psnr(
    net: nn.Module, image: ImageLike, target_psnr: float, tol: float = 0.1, max_iter: int = 30, qmap=None
) -> RateControlResult:
    """Encode at the quality whose 8-bit reconstruction PSNR is within ``tol``
    dB of ``target_psnr``.

    As :func:`encode_to_bpp`, but each iteration also decodes the trial
    streams to measure the PSNR of the rounded reconstruction.
    """
    if not (isinstance(target_psnr, (int, float)) and math.isfinite(target_psnr) and target_psnr > 0):
        raise CodecError(f"target PSNR must be a positive number of dB, got {target_psnr!r}")
    if not tol > 0:
        raise CodecError(f"tol must be positive, got {tol!r}")
    return _rate_control(net, image, "psnr", float(target_psnr), tol, max_iter, qmap)
