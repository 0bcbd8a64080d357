"""The ``.gvae`` container: byte layout, parsing and validation, without torch.

Split out of :mod:`gainedvae.codec` (which re-exports its public names) so that
``gainedvae info`` and the command line's start-up need neither torch nor
CompressAI; the byte layout is documented in ``docs/format.md``. Also the size
rules every layer shares: images are padded to multiples of :data:`PAD_FACTOR`
(:func:`padded_size`, the one rounding rule) and limited in padded pixels
(:func:`check_pixels`). Imports the standard library only.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

__all__ = [
    "CodecError",
    "Container",
    "DECODE_BYTES_PER_PIXEL",
    "TILED_BYTES_PER_PIXEL",
    "TILED_FIXED_BYTES",
    "DEFAULT_MAX_PIXELS",
    "FLAG_QUALITY_MAP",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_DIM",
    "MAX_FILE_BYTES",
    "NON_FINITE",
    "PAD_FACTOR",
    "check_pixels",
    "decode_memory_bytes",
    "padded_pixels",
    "padded_size",
    "read_container",
]

PathLike = Union[str, os.PathLike]

#: First four bytes of every ``.gvae`` file.
MAGIC = b"GVAE"
#: Newest container version this module writes and reads. Version 1 coded the Gaussian
#: latents with CompressAI's 64-level scale table; version 2 used gainedvae's 256-level table
#: (gainedvae.entropy.SCALE_TABLE_LEVELS) with entropy parameters from the float ``h_s``;
#: version 3 computes them in fixed point (gainedvae.exact), bit-identical on every machine.
#: Older streams would decode wrongly (other CDFs, other means) and are refused.
FORMAT_VERSION = 3
#: ``flags`` bit 0: the image was coded with a spatial quality map
#: (``gained-scgain``). Informational: the decoder needs no map.
FLAG_QUALITY_MAP = 0x01
KNOWN_FLAGS = FLAG_QUALITY_MAP
#: Largest image height or width a container may announce.
MAX_DIM = 65535 * 4
#: Bytes of the weights hash stored in a container (32 hex characters).
HASH_BYTES = 16
#: Default limit on the *padded* image size (``H`` and ``W`` rounded up to the
#: model's downsampling factor, 64) for :func:`decode` and :func:`load_image`: 2^26
#: = 67.1 MP (e.g. 8192x8192; a 24 MP camera photo fits). It bounds the decoding
#: time of a file (about 80 s at 67 MP with the shipped model on one core); memory
#: has its own check (:func:`decode_memory_bytes`). Pass ``max_pixels=None`` to lift
#: it (``--max-pixels 0`` on the command line).
DEFAULT_MAX_PIXELS = 1 << 26
#: Decoding memory beyond the loaded model (measured with the shipped gained-mbt2018-mean,
#: see docs/format.md and results/benchmarks/large_images.md). A model whose ``g_a`` / ``g_s``
#: run in tiles (:mod:`gainedvae.tiling`) needs one tile's buffers, ``TILED_FIXED_BYTES``, and
#: ``TILED_BYTES_PER_PIXEL`` per padded pixel (the 8-bit image, latents, symbols, indexes);
#: an untiled one (``gained-scgain``, the cheng2020 models) ``DECODE_BYTES_PER_PIXEL``.
DECODE_BYTES_PER_PIXEL = 250
TILED_FIXED_BYTES = 600_000_000
TILED_BYTES_PER_PIXEL = 16
#: Largest ``.gvae`` file :func:`read_container` reads (larger files, and
#: anything that is not a regular file, are refused before reading).
MAX_FILE_BYTES = 1 << 28

_HEAD = struct.Struct(">4sBBB")  # magic, version, flags, name length
_DIMS = struct.Struct(">IIdB")  # height, width, quality, number of streams
_U32 = struct.Struct(">I")
_CRC = struct.Struct(">I")


class CodecError(ValueError):
    """An image or ``.gvae`` file that cannot be coded or decoded."""


#: The message of a payload whose streams decode to NaN (``codec.decode``, ``decode_image``).
NON_FINITE = "corrupt payload: the streams decode to non-finite values"


# ---------------------------------------------------------------------------
# Image sizes
# ---------------------------------------------------------------------------

#: Spatial downsampling factor of every gained model: images are padded to a multiple of it.
PAD_FACTOR = 64


def padded_size(n: int, factor: int = PAD_FACTOR) -> int:
    """``n`` rounded up to a multiple of ``factor``: ``ceil(n / factor) * factor``.

    The one rounding rule of the library: the models pad their input to it
    (:func:`gainedvae.models.rate.pad_to_multiple`), their latents are
    ``padded_size(n, f) / f`` long, and the size limits below count padded pixels.
    """
    return -(-int(n) // factor) * factor


def padded_pixels(height: int, width: int, factor: int = PAD_FACTOR) -> int:
    """Pixels of a ``height x width`` image padded to multiples of ``factor``."""
    return padded_size(height, factor) * padded_size(width, factor)


def decode_memory_bytes(height: int, width: int, tiled: bool = True) -> int:
    """About how many bytes decoding a ``height x width`` image needs beyond the loaded model:

    ``min(250 P, 6e8 + 16 P)`` bytes for ``P`` padded pixels with a tiled model (an image
    smaller than one tile costs what it costs untiled), ``250 P`` with an untiled one.
    """
    pixels = padded_pixels(height, width)
    untiled = DECODE_BYTES_PER_PIXEL * pixels
    return min(untiled, TILED_FIXED_BYTES + TILED_BYTES_PER_PIXEL * pixels) if tiled else untiled


def gigabytes(nbytes: float) -> str:
    """``nbytes`` as ``"1.2 GB"`` for messages."""
    return f"{nbytes / 1e9:.1f} GB"


def check_pixels(height: int, width: int, max_pixels: Optional[int], what: str, tiled: bool = True) -> None:
    """:class:`CodecError` when the padded ``height x width`` exceeds ``max_pixels`` (None: no limit);
    the message gives the memory decoding it needs (``tiled``: with a tiled model, as the shipped one)."""
    if max_pixels is None:
        return
    padded = padded_pixels(height, width)
    if padded > max_pixels:
        raise CodecError(
            f"{what} is {height}x{width} pixels ({padded} when padded to multiples of {PAD_FACTOR}), more than "
            f"max_pixels={max_pixels}; decoding it needs about {gigabytes(decode_memory_bytes(height, width, tiled))} "
            "(raise the limit with max_pixels= / --max-pixels if this machine has the memory)"
        )


# ---------------------------------------------------------------------------
# Container
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """The parsed content of a ``.gvae`` file (see ``docs/format.md``).

    ``weights_hash`` is the 32-hex-character prefix of the SHA-256 of the
    weights that made the file; ``streams`` are the entropy-coded streams in
    the model's order (``[y, z]`` for the hyperprior models). ``nbytes`` is
    the size of the serialised file (0 until it was packed or parsed).
    """

    model: str
    weights_hash: str
    height: int
    width: int
    quality: float
    streams: Tuple[bytes, ...]
    flags: int = 0
    version: int = FORMAT_VERSION
    nbytes: int = field(default=0, compare=False)

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file (header and checksum included)."""
        size = self.nbytes or len(self.to_bytes())
        return size * 8 / (self.height * self.width)

    def to_bytes(self) -> bytes:
        """Serialise (big-endian, CRC32 over everything before the last 4 bytes)."""
        name = self.model.encode("utf-8")
        if not 1 <= len(name) <= 255:
            raise CodecError(f"model name {self.model!r} must be 1..255 bytes of UTF-8")
        digest = _hash_prefix_bytes(self.weights_hash)
        if not (1 <= self.height <= MAX_DIM and 1 <= self.width <= MAX_DIM):
            raise CodecError(f"image size {self.height}x{self.width} is outside 1..{MAX_DIM}")
        if not 0 <= self.flags <= 255 or not 0 <= self.version <= 255:
            raise CodecError("flags and version must fit in one byte")
        if len(self.streams) > 255:
            raise CodecError(f"at most 255 streams fit in a container, got {len(self.streams)}")
        if any(len(s) > 0xFFFFFFFF for s in self.streams):
            raise CodecError("a stream is longer than 4 GiB")
        parts = [
            _HEAD.pack(MAGIC, self.version, self.flags, len(name)),
            name,
            digest,
            _DIMS.pack(self.height, self.width, float(self.quality), len(self.streams)),
            *(_U32.pack(len(s)) for s in self.streams),
            *self.streams,
        ]
        body = b"".join(parts)
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "input") -> "Container":
        """Parse and validate ``data``; raises :class:`CodecError` naming ``source``.

        Every length is checked against the bytes that are left before it is
        used, so truncated or inflated fields give a clear error, never an
        exception from slicing or unpacking.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CodecError(f"{source}: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        size = len(data)
        if size == 0:
            raise CodecError(f"{source} is empty (0 bytes), not a gainedvae file")
        if size < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
            raise CodecError(
                f"{source} is not a gainedvae file (expected magic bytes {MAGIC!r}, got {data[:4]!r})"
            )
        if size < _HEAD.size:
            raise CodecError(f"{source} is truncated ({size} bytes, the header alone needs {_HEAD.size})")
        _, version, flags, name_len = _HEAD.unpack_from(data, 0)
        if version > FORMAT_VERSION:
            raise CodecError(
                f"{source}: file format version {version} is newer than this gainedvae supports ({FORMAT_VERSION})"
            )
        if version < 1:
            raise CodecError(f"{source}: invalid file format version {version}")
        if version == 1:
            raise CodecError(
                f"{source}: file format version 1 (64-level scale table, gainedvae before 2026-11-23) "
                "cannot be decoded by this gainedvae; re-encode the image"
            )
        if version == 2:
            raise CodecError(
                f"{source}: file format version 2 (float entropy parameters, gainedvae before 2026-12-01) "
                "cannot be decoded by this gainedvae (version 3 computes them in fixed point); re-encode the image"
            )

        pos = _HEAD.size
        fixed = name_len + HASH_BYTES + _DIMS.size
        if size - pos < fixed:
            raise CodecError(f"{source} is truncated ({size} bytes, header needs at least {pos + fixed + 4})")
        name_raw = data[pos : pos + name_len]
        pos += name_len
        digest = data[pos : pos + HASH_BYTES]
        pos += HASH_BYTES
        height, width, quality, n_streams = _DIMS.unpack_from(data, pos)
        pos += _DIMS.size
        if size - pos < 4 * n_streams:
            raise CodecError(f"{source} is truncated ({size} bytes, cut inside the stream table)")
        lengths = [_U32.unpack_from(data, pos + 4 * i)[0] for i in range(n_streams)]
        pos += 4 * n_streams
        expected = pos + sum(lengths) + _CRC.size
        if size < expected:
            raise CodecError(
                f"{source} is truncated or corrupt: its header announces {expected} bytes, the file has {size}"
            )
        if size > expected:
            raise CodecError(
                f"{source} is corrupt: {size - expected} unexpected bytes after the end of the container "
                f"(header announces {expected} bytes, the file has {size})"
            )
        stored_crc = _CRC.unpack_from(data, size - _CRC.size)[0]
        actual_crc = zlib.crc32(memoryview(data)[: size - _CRC.size])
        if stored_crc != actual_crc:
            raise CodecError(
                f"{source} is corrupt: CRC32 mismatch (stored {stored_crc:08x}, computed {actual_crc:08x})"
            )
        # The checksum holds: now validate the values themselves.
        try:
            name = name_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError(f"{source}: model name is not valid UTF-8") from None
        if not name or not name.isprintable():
            raise CodecError(f"{source}: invalid model name {name!r}")
        if flags & ~KNOWN_FLAGS:
            raise CodecError(f"{source}: unknown flags 0x{flags:02x} (this gainedvae knows 0x{KNOWN_FLAGS:02x})")
        if not (1 <= height <= MAX_DIM and 1 <= width <= MAX_DIM):
            raise CodecError(f"{source}: image size {height}x{width} is outside 1..{MAX_DIM}")
        if not math.isfinite(quality):
            raise CodecError(f"{source}: quality {quality!r} is not a finite number")
        streams = []
        for n in lengths:
            streams.append(data[pos : pos + n])
            pos += n
        return cls(
            model=name,
            weights_hash=digest.hex(),
            height=height,
            width=width,
            quality=quality,
            streams=tuple(streams),
            flags=flags,
            version=version,
            nbytes=size,
        )


def read_container(path: PathLike, max_bytes: Optional[int] = MAX_FILE_BYTES) -> Container:
    """Read and validate a ``.gvae`` file (no model needed).

    Refuses anything that is not a regular file (a device such as
    ``/dev/zero``, a FIFO) and files larger than ``max_bytes`` before reading.
    """
    data = _read_file(path, what="file", max_bytes=max_bytes)
    return Container.from_bytes(data, source=str(path))


def _read_file(path: PathLike, what: str, max_bytes: Optional[int] = MAX_FILE_BYTES) -> bytes:
    try:
        with open(path, "rb") as f:
            return _read_bounded(f, path, what, max_bytes)
    except FileNotFoundError:
        raise CodecError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CodecError(f"{what} {path} is a directory") from None
    except OSError as err:
        raise CodecError(f"cannot read {what} {path}: {err.strerror or err}") from None


def _read_bounded(f, path: PathLike, what: str, max_bytes: Optional[int]) -> bytes:
    """Read an open file that must be a regular file of at most ``max_bytes`` bytes."""
    import stat

    info = os.fstat(f.fileno())
    if not stat.S_ISREG(info.st_mode):
        raise CodecError(f"{what} {path} is not a regular file (a device, FIFO or socket); refusing to read it")
    if max_bytes is not None and info.st_size > max_bytes:
        raise CodecError(f"{what} {path} is {info.st_size} bytes, larger than the limit of {max_bytes} bytes")
    data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:  # grew while being read
        raise CodecError(f"{what} {path} is larger than the limit of {max_bytes} bytes")
    return data


def _hash_prefix_bytes(weights_hash: str) -> bytes:
    try:
        raw = bytes.fromhex(weights_hash[: 2 * HASH_BYTES])
    except (TypeError, ValueError):
        raise CodecError(f"weights hash {weights_hash!r} is not a hex string") from None
    if len(raw) != HASH_BYTES:
        raise CodecError(f"weights hash {weights_hash!r} is shorter than {2 * HASH_BYTES} hex characters")
    return raw
