"""rANS helpers and guards around CompressAI's coder (:mod:`compressai.ans`).

CompressAI's rANS coder trusts its input. Its decoder does not bounds-check
the stream and reads past its end when the stream is too short for the
symbols it is asked for (a truncated, empty or garbage stream crashes the
process for large enough images); its encoder writes backwards into a buffer
of one 32-bit word per symbol, which latents far outside the entropy model's
range overflow, and hangs on symbols of :data:`MAX_SYMBOL` or more. This
module holds everything gainedvae does about that, for every coding path:

* :func:`rans_padding`: zero bytes appended to a stream before decoding (a
  valid stream decodes from exactly its own bytes; garbage runs into zeros
  instead of unmapped memory); :func:`rans_decoder` for the ``decode_stream``
  coders of the context models;
* :func:`check_encodable`: refuses symbols before encoding;
* :func:`check_stream_length`: refuses a stream too short for its symbols;
* :func:`guard_entropy_coders`: puts all three on a model's entropy coders;
* :func:`encode_symbols` / :func:`decode_symbols`: one guarded stream coded in slices of
  :data:`CHUNK_SYMBOLS` (the conditionals of ``y``: bounded Python lists at any image size).

It depends on numpy and CompressAI's coder only (errors are
:class:`~gainedvae.container.CodecError`, from the torch-free container).
"""

from __future__ import annotations

import array
import math
from typing import Optional

import numpy as np
from compressai.ans import BufferedRansEncoder, RansDecoder

from .container import CodecError

__all__ = [
    "CHUNK_SYMBOLS",
    "MAX_SYMBOL",
    "MIN_STREAM_FRACTION",
    "check_encodable",
    "check_stream_length",
    "chunks",
    "decode_symbols",
    "encode_symbols",
    "guard_entropy_coders",
    "min_stream_bits",
    "rans_decoder",
    "rans_padding",
]

#: Symbols whose magnitude reaches this are refused before rANS encoding.
#: CompressAI's encoder escape-codes a symbol outside its table as
#: ``raw = 2 |value| (- 1)`` (``value`` = symbol - table offset, int32) and
#: counts its 4-bit digits with ``while (raw >> (4 * n)) != 0: n += 1``; for
#: ``raw >= 2**28`` the shift reaches 32 bits, which is undefined for int32
#: (x86 takes it mod 32) and the loop never ends. For a table that contains 0
#: (every gainedvae table: Gaussian, asymmetric, GMM window, bottleneck)
#: ``raw < 2 |symbol|``, so ``|symbol| < 2**27`` is exactly what the coder can
#: code. Measured with CompressAI 1.2.8: ``2**27 - 10`` codes and decodes,
#: ``2**27 + 10`` hangs the process. (The two limits this replaces, ``2**28``
#: for latents and ``2**29`` for symbols, let such symbols through to the
#: hang; nothing they accepted below ``2**27`` is refused now.)
MAX_SYMBOL = 1 << 27

#: A stream must hold at least this fraction of the bits that its symbols
#: cost at the least (:func:`min_stream_bits`); a shorter stream cannot have
#: been written by the encoder for the announced image size.
MIN_STREAM_FRACTION = 0.5


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


def _nibbles(m: np.ndarray) -> np.ndarray:
    """Number of 4-bit digits of the non-negative integers ``m`` (0 for 0)."""
    bits = np.zeros(m.shape, dtype=np.int64)
    nz = m > 0
    bits[nz] = np.floor(np.log2(m[nz].astype(np.float64))).astype(np.int64) + 1
    return (bits + 3) // 4


#: Symbols per slice of the checks' temporaries (int64 / float64 copies of a slice only, so a
#: 24 MP latent of 9 M symbols needs a few 8 MB arrays instead of several 72 MB ones) and of the
#: entropy models' coding (:meth:`gainedvae.entropy.TableGaussianConditional.compress`).
CHUNK_SYMBOLS = 1 << 20


def chunks(n: int, size: Optional[int] = None):
    """``(start, stop)`` of consecutive slices of ``range(n)`` of at most ``size`` elements
    (default :data:`CHUNK_SYMBOLS`, read at call time)."""
    size = size or CHUNK_SYMBOLS
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def _as_int32(symbols) -> np.ndarray:
    """``symbols`` (a sequence of ints or an ``int32`` array, taken as is) as an ``int32`` array."""
    if isinstance(symbols, np.ndarray) and symbols.dtype == np.int32:
        return symbols
    try:
        return np.frombuffer(array.array("i", symbols), dtype=np.int32)
    except OverflowError:
        raise CodecError("latent symbols overflow int32 (cannot be rANS-coded)") from None


def _escape_bound_bits(sym32: np.ndarray) -> int:
    """Bits of the symbols if every one escaped: ``16 + 4 * (1 + nibbles(2|s|))`` each (0 costs 16)."""
    m = 2 * np.abs(sym32.astype(np.int64))
    return 16 * len(sym32) + int(np.sum(np.where(m > 0, 4 * (1 + _nibbles(m)), 0)))


def _exact_bits(sym32: np.ndarray, indexes, cdfs, cdfs_sizes, offsets, table: np.ndarray) -> float:
    """The encoder's exact cost of the symbols, in bits (``table``: the CDFs as one padded array)."""
    sym = sym32.astype(np.int64)
    idx = np.asarray(indexes, dtype=np.int64)
    off = np.asarray(offsets, dtype=np.int64)[idx]
    max_value = np.asarray(cdfs_sizes, dtype=np.int64)[idx] - 2
    value = sym - off
    escape = (value < 0) | (value >= max_value)
    coded = np.where(escape, max_value, value)
    freq = table[idx, coded + 1] - table[idx, coded]
    if (freq <= 0).any():
        raise CodecError("invalid entropy model tables (a symbol has zero frequency)")
    raw = np.where(value < 0, -2 * value - 1, 2 * (value - max_value))[escape]
    n_bypass = _nibbles(raw)
    return float(np.sum(16 - np.log2(freq))) + float(np.sum(4 * (n_bypass + n_bypass // 15 + 1)))


def check_encodable(symbols, indexes, cdfs, cdfs_sizes, offsets) -> None:
    """Refuse symbols that CompressAI's rANS encoder cannot code safely.

    ``RansEncoder.encode_with_indexes`` writes backwards into a buffer of one
    32-bit word per symbol without a bounds check; symbols far outside the
    entropy model's tables (escape-coded with up to 52 bits each) overflow it
    and silently corrupt the heap, and a symbol of :data:`MAX_SYMBOL` or more
    makes its escape loop spin forever. This computes an upper bound of the bits the encoder
    will write (exact per-symbol cost when a cheap bound is not enough) and
    raises :class:`CodecError` when it does not fit.

    ``symbols`` / ``indexes``: sequences of ints or ``int32`` arrays (not copied); the bounds
    are summed over slices of :data:`CHUNK_SYMBOLS`, so the temporaries stay bounded.
    """
    n = len(symbols)
    if n == 0:
        return
    sym32 = _as_int32(symbols)
    largest = max(int(sym32.max()), -int(sym32.min()))
    if largest >= MAX_SYMBOL:
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
        if sum(_escape_bound_bits(sym32[a:b]) for a, b in chunks(n)) / 8 <= limit:
            return
    # Exact cost of every symbol.
    table = np.zeros((len(cdfs), max(map(len, cdfs))), dtype=np.int64)  # rows may be cut to their lengths
    for i, row in enumerate(cdfs):
        table[i, : len(row)] = row
    bits = sum(_exact_bits(sym32[a:b], indexes[a:b], cdfs, cdfs_sizes, offsets, table) for a, b in chunks(n))
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
    escape bits and the 8-byte flush are not counted). ``indexes``: a sequence of
    ints or an integer array, read in slices of :data:`CHUNK_SYMBOLS`."""
    hit = _MIN_BITS_CACHE.pop(id(cdfs), None)
    if hit is None or hit[0] is not cdfs:
        hit = (cdfs, np.maximum(_table_min_bits(cdfs, cdfs_sizes) - _RANS_ROUNDING_BITS, 0.0))
    _MIN_BITS_CACHE[id(cdfs)] = hit  # most recent last
    while len(_MIN_BITS_CACHE) > 4:
        _MIN_BITS_CACHE.pop(next(iter(_MIN_BITS_CACHE)))
    per_table = hit[1]
    if len(indexes) == 0:
        return 0.0
    counts = np.zeros(len(per_table), dtype=np.int64)
    for a, b in chunks(len(indexes)):  # int64 copies of one slice at a time
        idx = np.asarray(indexes[a:b], dtype=np.int64)
        if idx.min() < 0 or idx.max() >= len(per_table):
            raise CodecError(f"entropy table index out of range (0..{len(per_table) - 1})")
        counts += np.bincount(idx, minlength=len(per_table))
    return float(counts @ per_table)


def _check_bytes(stream) -> None:
    if not isinstance(stream, (bytes, bytearray)):
        raise CodecError(f"a stream must be bytes, got {type(stream).__name__}")


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
        _check_bytes(encoded)
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


def guard_entropy_coders(net):
    """Make ``net``'s rANS coders safe for hostile streams (idempotent, in place).

    Wraps the ``entropy_coder`` of every CompressAI entropy model in ``net``
    with a proxy that pads streams before decoding and refuses latents that
    would overflow the encoder's buffer (see :func:`rans_padding` and
    :func:`check_encodable`). Valid streams code and decode exactly as before.
    :func:`gainedvae.codec.encode`, :func:`~gainedvae.codec.decode` and the rate control call this.
    """
    for module in net.modules():  # CompressAI's entropy models, the only modules with an entropy_coder
        coder = getattr(module, "entropy_coder", None)
        if (
            coder is not None
            and not isinstance(coder, _GuardedRansCoder)
            and getattr(coder, "name", None) == "ans"
            and hasattr(coder, "_encoder")
            and hasattr(coder, "_decoder")
        ):
            module.entropy_coder = _GuardedRansCoder(coder)
    return net


def rans_decoder(stream: bytes, n_symbols: int) -> RansDecoder:
    """A :class:`compressai.ans.RansDecoder` set to ``stream`` for decoding
    ``n_symbols`` symbols one call at a time (``decode_stream``).

    The stream is zero-padded by :func:`rans_padding` so that a corrupt stream
    cannot make the decoder read past its buffer (a valid one decodes exactly
    as without padding): the same guard :func:`guard_entropy_coders` puts on
    the entropy models' own ``decode_with_indexes``.
    """
    _check_bytes(stream)
    data = bytes(stream)
    decoder = RansDecoder()
    decoder.set_stream(data + bytes(rans_padding(data, n_symbols)))
    return decoder


def encode_symbols(symbols: np.ndarray, indexes: np.ndarray, cdfs, cdfs_sizes, offsets) -> bytes:
    """One rANS stream of the ``int32`` ``symbols`` coded with the tables ``indexes`` (``int32``).

    Checked first (:func:`check_encodable`), then handed to one
    :class:`~compressai.ans.BufferedRansEncoder` in slices of :data:`CHUNK_SYMBOLS` and flushed
    once: the same bytes as one ``encode_with_indexes`` call, but the Python lists the coder
    takes hold one slice (8 MB each) instead of the whole latent (72 MB each at 24 MP).
    """
    check_encodable(symbols, indexes, cdfs, cdfs_sizes, offsets)
    encoder = BufferedRansEncoder()
    for a, b in chunks(len(symbols)):
        encoder.encode_with_indexes(symbols[a:b].tolist(), indexes[a:b].tolist(), cdfs, cdfs_sizes, offsets)
    return encoder.flush()


def decode_symbols(stream: bytes, indexes: np.ndarray, cdfs, cdfs_sizes, offsets) -> np.ndarray:
    """The ``int32`` symbols of :func:`encode_symbols`'s ``stream``, coded with the tables ``indexes``.

    Guarded as ``decode_with_indexes`` is (:func:`check_stream_length`, zero padding by
    :func:`rans_decoder`), then decoded with one stream and ``decode_stream`` per slice of
    :data:`CHUNK_SYMBOLS` into one preallocated array: the same values as one call, with
    Python lists of one slice only.
    """
    _check_bytes(stream)
    check_stream_length(stream, indexes, cdfs, cdfs_sizes)
    out = np.empty(len(indexes), dtype=np.int32)
    if len(out) == 0:
        return out
    decoder = rans_decoder(stream, len(out))
    for a, b in chunks(len(out)):
        out[a:b] = decoder.decode_stream(indexes[a:b].tolist(), cdfs, cdfs_sizes, offsets)
    return out
