"""Issue 18: bounded work for any file (decompression bombs, huge inputs) and the
defects an independent fuzz found in the codec. Crafted headers only: no test
allocates more than a few MB."""

import dataclasses
import math
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import gainedvae
from gainedvae import codec, rans
from gainedvae.codec import CodecError, Container

from conftest import tiny_model


@pytest.fixture(scope="module")
def shipped():
    return gainedvae.load_checkpoint()


@pytest.fixture(scope="module")
def crop_file(shipped):
    """A real 96x128 file at the lowest quality (the reported bomb's source)."""
    rng = np.random.default_rng(5)
    img = (np.kron(rng.random((7, 9, 3)), np.ones((16, 16, 1)))[:96, :128] * 255).astype(np.uint8)
    return codec.encode(shipped, img, 1.0)


def with_size(data: bytes, height: int, width: int) -> bytes:
    """``data`` with its header's image size edited and the CRC recomputed (as an attacker would)."""
    n = data[6]
    body = data[: 23 + n] + struct.pack(">II", height, width) + data[31 + n : -4]
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize("size", [(96, 131200), (4096, 4096), (1, 262140), (11585, 11585)])
def test_edited_size_field_is_refused_fast(shipped, crop_file, size):
    """Reported: 96x131200 decoded (exit 0, garbage) after 48 s at 5.1 GB. Now the streams are
    found too short for the announced latent before anything large is allocated."""
    bomb = with_size(crop_file, *size)
    assert len(bomb) <= 4096
    start = time.perf_counter()
    # (11585x11585 needs ~34 GB: on a smaller machine the memory check refuses it first)
    with pytest.raises(CodecError, match="cannot code .* latent symbols|not enough memory"):
        codec.decode(shipped, bomb, max_pixels=None)
    assert time.perf_counter() - start < 10


def test_edited_size_with_padded_streams_is_refused(shipped, crop_file):
    """Garbage appended to the z stream passes the z bound; the decoded garbage z is then
    refused by the fixed-point hyper path (out of its range) or the y bound (from the
    tables the decoded z selects)."""
    c = Container.from_bytes(crop_file)
    z = c.streams[1] + np.random.default_rng(0).bytes(3000)
    bomb = dataclasses.replace(c, height=2048, width=2048, streams=(c.streams[0], z), nbytes=0).to_bytes()
    assert len(bomb) <= 4096
    y_symbols = shipped.M * (2048 // 16) ** 2  # y of a 2048x2048 image: M channels at 1/16 scale
    with pytest.raises(CodecError, match=f"cannot code {y_symbols} latent symbols|out of range for the fixed-point path"):
        codec.decode(shipped, bomb, max_pixels=None)


def _stream_bits(net, data):
    """``[(8 * len(stream), min_stream_bits)]`` of every stream decoded by ``codec.decode``."""
    seen = []
    original = rans.check_stream_length  # looked up there by the guarded decoder

    def spy(stream, indexes, cdfs, sizes):
        seen.append((8 * len(stream), codec.min_stream_bits(indexes, cdfs, sizes)))
        return original(stream, indexes, cdfs, sizes)

    rans.check_stream_length = spy
    try:
        codec.decode(net, data)
    finally:
        rans.check_stream_length = original
    return seen


@pytest.mark.parametrize("size", [(1, 1), (64, 64), (100, 37), (256, 256), (1, 700)])
def test_stream_bound_never_refuses_our_files(shipped, size):
    """Flat images at quality 1 are the cheapest files the encoder writes: every stream
    still holds at least the bound's bits (without its safety factor of 2)."""
    for colour in [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 90)]:
        data = codec.encode(shipped, np.full((*size, 3), colour, np.uint8), 1.0)
        seen = _stream_bits(shipped, data)
        assert len(seen) == 2
        for bits, bound in seen:
            assert bound > 0 and bits >= bound, (colour, bits, bound)


def test_stream_bound_holds_for_tiny_random_models():
    for name in ("gained-mbt2018-mean", "gained-bmshj2018-hyperprior"):
        net = tiny_model(name)
        for img in (np.zeros((64, 80, 3), np.uint8), (np.random.default_rng(0).random((33, 65, 3)) * 255).astype(np.uint8)):
            for q in (1.0, 4.0):
                for bits, bound in _stream_bits(net, codec.encode(net, img, q)):
                    assert bits >= bound


def test_truncated_stream_is_refused_not_decoded(shipped):
    img = (np.random.default_rng(1).random((128, 128, 3)) * 255).astype(np.uint8)
    c = Container.from_bytes(codec.encode(shipped, img, 1.0))
    cut = dataclasses.replace(c, streams=(c.streams[0][:16], c.streams[1]), nbytes=0).to_bytes()
    with pytest.raises(CodecError, match="truncated or its image size was edited"):
        codec.decode(shipped, cut)


def test_pixel_limit_applies_to_the_padded_size():
    """Reported: the limit was applied to H x W before padding to 64."""
    net = tiny_model()
    c = Container.from_bytes(codec.encode(net, np.zeros((8, 8, 3), np.uint8), 2))
    big = dataclasses.replace(c, height=8200, width=8180, nbytes=0).to_bytes()  # 67.08 M, padded 67.63 M
    assert 8200 * 8180 <= codec.DEFAULT_MAX_PIXELS == 1 << 26 < codec.padded_pixels(8200, 8180)
    # a tiled model: 6e8 + 16 x 67.63 M bytes
    with pytest.raises(CodecError, match=r"8200x8180 pixels \(67633152 when padded.*max_pixels=67108864.*needs about 1\.7 GB"):
        codec.decode(net, big)
    with pytest.raises(CodecError, match="max_pixels=1000"):
        codec.decode(net, dataclasses.replace(c, height=64, width=64, nbytes=0).to_bytes(), max_pixels=1000)


def test_a_24_megapixel_photo_is_within_the_default_limits():
    assert codec.padded_pixels(4000, 6000) <= codec.DEFAULT_MAX_PIXELS
    assert codec.decode_memory_bytes(4000, 6000) < 1.0e9  # tiled (the shipped model): measured +0.5 GB


def test_decode_memory_estimate_follows_the_tiling():
    """Tiled models: one tile's buffers plus a few bytes per pixel, never more than untiled;
    untiled models (scgain, cheng2020): 250 bytes per padded pixel."""
    from gainedvae.container import DECODE_BYTES_PER_PIXEL, TILED_BYTES_PER_PIXEL, TILED_FIXED_BYTES

    for h, w in ((64, 64), (768, 512), (2160, 3840), (4000, 6000)):
        p = codec.padded_pixels(h, w)
        assert codec.decode_memory_bytes(h, w, tiled=False) == DECODE_BYTES_PER_PIXEL * p
        assert codec.decode_memory_bytes(h, w) == min(DECODE_BYTES_PER_PIXEL * p, TILED_FIXED_BYTES + TILED_BYTES_PER_PIXEL * p)
    assert codec.decode_memory_bytes(768, 512) == codec.decode_memory_bytes(768, 512, tiled=False)  # one tile
    assert codec.decode_memory_bytes(4000, 6000) < codec.decode_memory_bytes(4000, 6000, tiled=False) / 6
    # the codec asks the model: a tiled tiny model is refused at the tiled estimate, an untiled one at 250 B/px
    tiled_net, untiled_net = tiny_model(), tiny_model("gained-scgain")
    assert tiled_net.synthesis_tiling is not None and untiled_net.synthesis_tiling is None
    have = codec.decode_memory_bytes(4000, 6000) + 1
    for net, refused in ((tiled_net, False), (untiled_net, True)):
        c = Container.from_bytes(codec.encode(net, np.zeros((8, 8, 3), np.uint8), 2))
        big = dataclasses.replace(c, height=4000, width=6000, nbytes=0).to_bytes()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(codec, "available_memory_bytes", lambda: have)
            with pytest.raises(CodecError) as err:
                codec.decode(net, big)
        assert ("not enough memory" in str(err.value)) == refused, str(err.value)


def test_memory_errors_are_reported_as_such(monkeypatch):
    """Reported: an allocation failure came out as "corrupt payload: decoding failed"."""
    net = tiny_model()
    data = codec.encode(net, np.zeros((40, 56, 3), np.uint8), 2)

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes")

    monkeypatch.setattr(net, "decompress", fail)
    with pytest.raises(CodecError, match=r"not enough memory to decode the file's 40x56 image: it needs about 0\.0 GB"):
        codec.decode(net, data)

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(net, "decompress", no_memory)
    with pytest.raises(CodecError, match="not enough memory"):
        codec.decode(net, data)


def test_decoding_is_refused_up_front_when_memory_is_short(monkeypatch):
    net = tiny_model()
    data = codec.encode(net, np.zeros((40, 56, 3), np.uint8), 2)
    called = []
    monkeypatch.setattr(codec, "available_memory_bytes", lambda: 1000)
    monkeypatch.setattr(net, "decompress", lambda *a, **k: called.append(1))
    with pytest.raises(CodecError, match=r"needs about .* GB, 0\.0 GB are available"):
        codec.decode(net, data)
    assert not called
    assert codec.available_memory_bytes is not None


def test_available_memory_is_measured():
    real = codec.__dict__["available_memory_bytes"]()
    assert real is None or real > 0


def test_reads_are_bounded(tmp_path):
    """Reported: ``gainedvae info /dev/zero`` grew to 5 GB, then "MemoryError:"."""
    with pytest.raises(CodecError, match="/dev/zero is not a regular file"):
        codec.read_container("/dev/zero")
    big = tmp_path / "big.gvae"
    big.write_bytes(b"GVAE" + bytes(200))
    with pytest.raises(CodecError, match=r"big.gvae is 204 bytes, larger than the limit of 100 bytes"):
        codec.read_container(big, max_bytes=100)
    assert codec.MAX_FILE_BYTES == 1 << 28


def _png_header_only(path, width, height):
    """A ~60-byte PNG whose IHDR claims ``width x height`` (no pixel data to speak of)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_load_image_checks_the_header_size_before_decoding(tmp_path, monkeypatch):
    """Reported: a 185-byte PNG claiming 9000x9000 ran 22 s to 7.9 GB in compress."""
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 9000, 9000)
    loads = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(1))
    with pytest.raises(CodecError, match=r"bomb.png is 9000x9000 pixels .*max_pixels=67108864"):
        codec.load_image(bomb)
    assert not loads
    with pytest.raises(CodecError, match="max_pixels=100"):
        codec.load_image(bomb, max_pixels=100)


def test_animated_images_warn_naming_the_frame_count(tmp_path):
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 120, 250)]
    for ext in ("gif", "webp"):
        path = tmp_path / f"anim.{ext}"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0, lossless=True)
        with pytest.warns(UserWarning, match="animated image with 3 frames; only the first frame is coded"):
            arr = codec.load_image(path)
        assert arr.shape == (8, 8, 3) and int(arr.max()) < 10
    with _no_warning():
        frames[0].save(tmp_path / "still.gif")
        codec.load_image(tmp_path / "still.gif")


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert not [w for w in self.caught if "frames" in str(w.message)]
        return False


def test_quality_in_messages_has_all_digits():
    """Reported: quality 0.9999999999 was reported as "quality 1 is outside [1, 8]"."""
    net = tiny_model()
    with pytest.raises(CodecError, match=r"quality 0\.9999999999 is outside"):
        codec.encode(net, np.zeros((8, 8, 3), np.uint8), 0.9999999999)


def test_min_stream_bits_is_the_cheapest_symbol_cost():
    cdfs = [[0, 32768, 65536], [0, 65535, 65536]]
    bits = codec.min_stream_bits([0, 0, 1], cdfs, [3, 3])
    per = [1.0 - codec._RANS_ROUNDING_BITS, max(0.0, math.log2(65536 / 65535) - codec._RANS_ROUNDING_BITS)]
    assert bits == pytest.approx(2 * per[0] + per[1])
    with pytest.raises(CodecError, match="out of range"):
        codec.min_stream_bits([2], cdfs, [3, 3])
