import copy
import dataclasses
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from compressai.layers import GDN
from PIL import Image

import gainedvae
from gainedvae import codec, ratecontrol
from gainedvae.checkpoint import hash_state_dict
from gainedvae.codec import CodecError, Container

from conftest import tiny_model

LAMBDAS = (0.0035, 0.013, 0.0483, 0.18)




def spread_model(reference=1e-4, seed=0, name="gained-mbt2018-mean"):
    """Tiny random model whose gains are spread so that the rate varies with quality."""
    torch.manual_seed(seed)
    net = gainedvae.get_model(name, N=16, M=16, lambdas=LAMBDAS)
    net.gain.init_from_lambdas(net.lambdas, reference=reference)
    net.update(force=True)
    return net.eval()


def toy_autoencoder(reference=3e-3):
    """Tiny model whose transforms are a block average / nearest upsampling of the
    colour channels (GDN = identity), so its PSNR grows with quality."""
    net = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, lambdas=LAMBDAS)
    with torch.no_grad():
        for seq, transposed in [(net.g_a, False), (net.g_s, True)]:
            for m in seq:
                if isinstance(m, GDN):
                    m.beta.copy_(m.beta_reparam.init(torch.ones_like(m.beta)))
                    m.gamma.copy_(m.gamma_reparam.init(torch.zeros_like(m.gamma)))
                else:
                    m.weight.zero_()
                    m.bias.zero_()
                    for c in range(3):
                        m.weight[c, c, 2:4, 2:4] = 1.0 if transposed else 0.25
    net.gain.init_from_lambdas(net.lambdas, reference=reference)
    net.update(force=True)
    return net.eval()


@pytest.fixture(scope="module")
def net():
    return spread_model()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    h, w = 64, 96
    smooth = np.kron(rng.random((h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
    return (255 * np.clip(smooth + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)).astype("uint8")


@pytest.fixture(scope="module")
def smooth_image():
    yy, xx = np.mgrid[0:64, 0:96]
    return np.stack([40 + 150 * xx / 96, 60 + 120 * yy / 64, 200 - 100 * (xx + yy) / 160], -1).round().astype(np.uint8)


def recrc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("quality", [1, 2.5, 3.37, 4])
@pytest.mark.parametrize("size", [(64, 64), (37, 70), (1, 1)])
def test_roundtrip_equals_net_decompress(quality, size):
    net = tiny_model()
    x = torch.rand(1, 3, *size)
    data = codec.encode(net, x, quality)
    c = Container.from_bytes(data)
    with torch.no_grad():
        enc = net.compress(x, quality)
        ref = net.decompress(enc["strings"], enc["shape"], quality)["x_hat"]
    assert c.streams == (enc["strings"][0][0], enc["strings"][1][0])
    assert (c.height, c.width, c.quality) == (*size, quality)
    dec = codec.decode(net, data)
    assert dec.shape == (1, 3, *size)
    assert torch.equal(dec, ref)


def test_encode_accepts_uint8_arrays_and_tensors(net, image):
    x = codec.image_to_tensor(image)
    assert x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    assert codec.encode(net, image, 2) == codec.encode(net, x, 2) == codec.encode(net, x[0], 2)
    assert np.array_equal(codec.tensor_to_image(x), image)
    with pytest.raises(CodecError, match="uint8"):
        codec.encode(net, image.astype(np.float32), 2)
    with pytest.raises(CodecError, match="outside the trained range"):
        codec.encode(net, image, 4.5)


def test_container_layout_is_as_documented(net, image):
    data = codec.encode(net, image, 2.75)
    name = b"gained-mbt2018-mean"
    n = len(name)
    assert data[:4] == b"GVAE" and data[4] == 3 and data[5] == 0 and data[6] == n
    assert data[7 : 7 + n] == name
    identity = codec.model_identity(net)
    assert data[7 + n : 23 + n].hex() == identity[1] and len(identity[1]) == 32
    h, w, q, k = struct.unpack(">IIdB", data[23 + n : 40 + n])
    assert (h, w, q, k) == (64, 96, 2.75, 2)
    ly, lz = struct.unpack(">II", data[40 + n : 48 + n])
    assert len(data) == 48 + n + ly + lz + 4 == 71 + ly + lz
    assert struct.unpack(">I", data[-4:])[0] == zlib.crc32(data[:-4])
    c = Container.from_bytes(data)
    assert c.nbytes == len(data) and c.bpp == len(data) * 8 / (64 * 96)
    assert c.to_bytes() == data
    assert Container.from_bytes(dataclasses.replace(c, nbytes=0).to_bytes()) == c


def test_loaded_checkpoint_identity_is_its_weights_hash(tmp_path, net, image):
    path = gainedvae.save_checkpoint(net, tmp_path / "m.pt")
    loaded = gainedvae.load_checkpoint(path)
    assert codec.model_identity(loaded) == ("gained-mbt2018-mean", loaded.weights_hash[:32])
    assert codec.model_identity(loaded) == codec.model_identity(net)
    data = codec.encode(loaded, image, 3)
    assert torch.equal(codec.decode(net, data), codec.decode(loaded, data))


# --------------------------------------------------------------------------- images


def _save(tmp_path, img, name):
    path = tmp_path / name
    img.save(path)
    return path


def test_image_modes_become_8bit_rgb(tmp_path, recwarn):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)

    out = codec.load_image(_save(tmp_path, Image.fromarray(gray, "L"), "l.png"))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8 and out.flags.writeable
    assert all(np.array_equal(out[..., c], gray) for c in range(3))

    p = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = codec.load_image(_save(tmp_path, p, "p.png"))
    assert np.array_equal(out, np.asarray(p.convert("RGB")))

    g16 = (gray.astype(np.uint16) * 257)
    g16[0, 0], g16[0, 1] = 65535, 128  # 128 / 257 rounds to 0
    out = codec.load_image(_save(tmp_path, Image.fromarray(g16), "i16.png"))
    expect = gray.copy()
    expect[0, 0], expect[0, 1] = 255, 0
    with Image.open(tmp_path / "i16.png") as img:
        assert img.mode.startswith("I")
    assert np.array_equal(out[..., 1], expect)

    out = codec.load_image(_save(tmp_path, Image.fromarray(g16.astype(np.int32), "I"), "i32.tiff"))
    assert np.array_equal(out[..., 0], expect)

    cmyk = Image.new("CMYK", (3, 2), (0, 0, 0, 0))
    out = codec.load_image(_save(tmp_path, cmyk, "c.tiff"))
    assert (out == 255).all()
    out = codec.load_image(_save(tmp_path, Image.new("1", (3, 2), 1), "b.png"))
    assert (out == 255).all()
    assert not [str(w.message) for w in recwarn], [str(w.message) for w in recwarn]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P+transparency"])
def test_alpha_is_dropped_with_a_warning(tmp_path, mode):
    rgb = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    if mode == "RGBA":
        img = Image.fromarray(np.dstack([rgb, np.full((4, 6), 7, np.uint8)]), "RGBA")
        expect = rgb
    elif mode == "LA":
        img = Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), "LA")
        expect = np.repeat(rgb[..., :1], 3, axis=2)
    else:
        img = Image.fromarray(rgb[..., 0] // 64, "L").convert("P")
        img.info["transparency"] = 0
        expect = None
    path = _save(tmp_path, img, "a.png")
    with pytest.warns(UserWarning, match=r"a\.png.*alpha"):
        out = codec.load_image(path)
    assert out.shape == (4, 6, 3)
    if expect is not None:
        assert np.array_equal(out, expect)


def test_unreadable_images_are_codec_errors(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, match in [("missing.png", "does not exist"), ("text.png", "not an image"), ("cut.png", "cannot read"),
                        ("empty.jpg", "cannot read"), (".", "directory")]:
        with pytest.raises(CodecError, match=match) as info:
            codec.load_image(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_save_image_is_atomic_png(tmp_path):
    x = torch.rand(1, 3, 9, 13)
    path = codec.save_image(x, tmp_path / "sub" / "out.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and np.array_equal(np.asarray(img), codec.tensor_to_image(x))
    assert np.array_equal(codec.load_image(path), codec.tensor_to_image(x))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.png"]
    codec.save_image(codec.tensor_to_image(x), tmp_path / "noext")
    with Image.open(tmp_path / "noext") as img:
        assert img.format == "PNG"


# --------------------------------------------------------------------------- rate control


def test_bpp_rate_control_hits_reachable_targets(net, image):
    lo = Container.from_bytes(codec.encode(net, image, 1)).bpp
    hi = Container.from_bytes(codec.encode(net, image, net.levels)).bpp
    assert hi > 3 * lo  # the fixture's rate really varies
    for target in [Container.from_bytes(codec.encode(net, image, 1.7)).bpp, math.sqrt(lo * hi), 0.97 * hi]:
        r = codec.encode_to_bpp(net, image, target)
        assert abs(r.bpp / target - 1) <= 0.02, (target, r)
        assert not r.clamped and r.converged and 1 <= r.quality <= net.levels
        assert r.bpp == len(r.data) * 8 / (64 * 96) and r.nbytes == len(r.data)
        assert r.data == codec.encode(net, image, r.quality)
        assert r.iterations <= 8 and r.seconds > 0
        assert "reached" in r.summary()


def test_bpp_rate_control_clamps_unreachable_targets(net, image):
    r = codec.encode_to_bpp(net, image, 0.01)
    assert r.clamped and r.quality == 1 and r.data == codec.encode(net, image, 1)
    r = codec.encode_to_bpp(net, image, 50.0)
    assert r.clamped and r.quality == net.levels and r.data == codec.encode(net, image, net.levels)
    assert "clamped" in r.summary()
    with pytest.raises(CodecError, match="positive"):
        codec.encode_to_bpp(net, image, -1)


def test_rate_control_runs_the_analysis_once(net, image, monkeypatch):
    calls = {"g_a": 0, "compress_analysed": 0}
    handle = net.g_a.register_forward_hook(lambda *a: calls.__setitem__("g_a", calls["g_a"] + 1))
    original = net.compress_analysed

    def counting(*args, **kwargs):
        calls["compress_analysed"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(net, "compress_analysed", counting)
    try:
        r = codec.encode_to_bpp(net, image, 0.7)
        assert r.iterations >= 2 and calls == {"g_a": 1, "compress_analysed": r.iterations}
        calls.update(g_a=0, compress_analysed=0)
        r = codec.encode_to_psnr(net, image, 30.0)
        assert calls == {"g_a": 1, "compress_analysed": r.iterations}
    finally:
        handle.remove()


def test_psnr_rate_control(smooth_image):
    net = toy_autoencoder()
    psnrs = [codec.psnr_8bit(smooth_image, codec.decode(net, codec.encode(net, smooth_image, q))) for q in (1, 4)]
    assert psnrs[1] > psnrs[0] + 10
    r = codec.encode_to_psnr(net, smooth_image, 20.0, tol=0.25)
    assert abs(r.psnr - 20.0) <= 0.25 and not r.clamped and r.converged
    assert r.psnr == codec.psnr_8bit(smooth_image, codec.decode(net, r.data))
    r = codec.encode_to_psnr(net, smooth_image, 60.0)
    assert r.clamped and r.quality == net.levels and r.psnr == pytest.approx(psnrs[1])
    r = codec.encode_to_psnr(net, smooth_image, 5.0)
    assert r.clamped and r.quality == 1


def test_search_handles_a_rate_jump():
    """A step in the rate: the tolerance cannot be met, the closest trial is returned."""
    def evaluate(q):
        v = 1.0 if q < 2.3 else 2.0
        return ratecontrol.Trial(q, b"", v, None, v)

    trial, iters, clamped, converged = ratecontrol.search(evaluate, 4, math.log, 1.5, lambda v: abs(v - 1.5) < 0.01, 0.3, 60)
    assert not clamped and not converged and iters < 60
    assert trial.value in (1.0, 2.0)


def test_search_starts_where_it_is_told_clipped_to_the_range():
    seen = []

    def evaluate(q):
        seen.append(q)
        return ratecontrol.Trial(q, b"", math.exp(q), None, math.exp(q))

    for start, first in ((3.3, 3.3), (-5.0, 1.0), (9.0, 4.0), (None, 2.5)):
        seen.clear()
        trial, _, clamped, converged = ratecontrol.search(
            evaluate, 4, math.log, math.exp(2.0), lambda v: abs(math.log(v) - 2.0) < 1e-3, 1.0, 30, start)
        assert seen[0] == first and converged and not clamped and trial.quality == pytest.approx(2.0, abs=1e-3)


# --------------------------------------------------------------------------- determinism / identity


def test_decoding_is_deterministic_across_threads_and_runs(net):
    """Files and decoded latents are identical whatever the thread count (the fixed-point
    hyper path); the float synthesis may differ in the last bits (docs/format.md), so the
    images are compared in 8 bits, within one level."""
    x = torch.rand(1, 3, 67, 93)
    files, images, latents = [], [], []
    inner = net._y_decompress
    try:
        net._y_decompress = lambda *a, **k: latents.append(inner(*a, **k)) or latents[-1]
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            files.append(codec.encode(net, x, 2.7))
            images.append(codec.tensor_to_image(codec.decode(net, files[0])).astype(int))
    finally:
        del net._y_decompress
    assert all(f == files[0] for f in files)
    assert all(torch.equal(v, latents[0]) for v in latents)
    assert all(abs(i - images[0]).max() <= 1 for i in images)


def test_other_weights_are_refused_naming_both(net, image):
    data = codec.encode(net, image, 2)
    other = spread_model(seed=1)
    with pytest.raises(CodecError) as info:
        codec.decode(other, data)
    own, theirs = codec.model_identity(net)[1], codec.model_identity(other)[1]
    assert own != theirs and own in str(info.value) and theirs in str(info.value)
    assert "gained-mbt2018-mean" in str(info.value)
    scale = spread_model(name="gained-bmshj2018-hyperprior")
    with pytest.raises(CodecError, match="gained-bmshj2018-hyperprior.*gained-mbt2018-mean|gained-mbt2018-mean.*gained-bmshj2018-hyperprior"):
        codec.decode(scale, data)


def test_single_rate_models_are_refused(image):
    plain = gainedvae.get_model("mbt2018-mean", N=16, M=16)
    plain.update(force=True)
    with pytest.raises(CodecError, match="single-rate"):
        codec.encode(plain, image, 1)
    with pytest.raises(CodecError, match="single-rate"):
        codec.encode_to_bpp(plain, image, 1)


# --------------------------------------------------------------------------- hostile input


@pytest.fixture(scope="module")
def sample(net):
    return codec.encode(net, torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(3)), 2.5)


def _fields(data):
    return Container.from_bytes(data)


def test_hostile_containers_give_clear_errors(net, sample):
    c = _fields(sample)
    n = len(c.model)
    cases = [
        (b"", "empty"),
        (b"PNG\x89" + sample[4:], "not a gainedvae file"),
        (b"GV", "not a gainedvae file"),
        (sample[:6], "truncated"),
        (recrc(sample[:4] + b"\x04" + sample[5:-4]), "file format version 4 is newer than this gainedvae supports \\(3\\)"),
        (recrc(sample[:4] + b"\x02" + sample[5:-4]), "version 2 .*fixed point.*re-encode"),
        (recrc(sample[:4] + b"\x01" + sample[5:-4]), "version 1 .*re-encode"),
        (recrc(sample[:4] + b"\x00" + sample[5:-4]), "version 0"),
        (sample[:-1], "truncated"),
        (sample + b"\0", "unexpected bytes"),
        (sample[:-5] + bytes([sample[-5] ^ 1]) + sample[-4:], "CRC32 mismatch"),
        (sample[:-4] + b"\0\0\0\0", "CRC32 mismatch"),
        (recrc(sample[: 23 + n] + struct.pack(">I", 0) + sample[27 + n : -4]), "outside"),
        (recrc(sample[: 27 + n] + struct.pack(">I", codec.MAX_DIM + 1) + sample[31 + n : -4]), "outside"),
        (recrc(sample[: 31 + n] + struct.pack(">d", float("nan")) + sample[39 + n : -4]), "not a finite"),
        (recrc(sample[:5] + b"\x80" + sample[6:-4]), "unknown flags"),
        (recrc(sample[:7] + b"\xff" + sample[8:-4]), "UTF-8"),
    ]
    for data, match in cases:
        with pytest.raises(CodecError, match=match):
            codec.decode(net, data)
    # every prefix of a file is refused
    for cut in range(len(sample)):
        with pytest.raises(CodecError):
            Container.from_bytes(sample[:cut])


def test_semantic_checks_at_decode(net, sample):
    c = _fields(sample)
    for changed, match in [
        (dataclasses.replace(c, quality=4.5), "outside the trained range"),
        (dataclasses.replace(c, quality=0.0), "outside the trained range"),
        (dataclasses.replace(c, flags=codec.FLAG_QUALITY_MAP), "gained-scgain"),
        (dataclasses.replace(c, streams=c.streams + (b"",)), "this one has 3"),
        (dataclasses.replace(c, height=4096, width=65536), "max_pixels"),
    ]:
        with pytest.raises(CodecError, match=match):
            codec.decode(net, dataclasses.replace(changed, nbytes=0).to_bytes())


#: a CodecError for a damaged file names what is wrong with it (one of these)
DAMAGE = ("corrupt", "truncated", "empty", "not a gainedvae file", "version")


def _valid_or_codec_error(net, data):
    try:
        out = codec.decode(net, data)
    except CodecError as err:
        message = str(err)
        assert "\n" not in message and any(word in message for word in DAMAGE), message
        return "error"
    c = Container.from_bytes(data)
    assert out.shape == (1, 3, c.height, c.width) and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    return "image"


def test_garbage_streams_that_crash_compressai_are_survived(net):
    """Empty / short streams for a large image make CompressAI's decoder read far
    past its buffer (a segfault without the codec's padding)."""
    c = _fields(codec.encode(net, torch.rand(1, 3, 64, 64), 2))
    rng = np.random.default_rng(0)
    for y, z in [(b"", b""), (rng.bytes(10), rng.bytes(3)), (b"\xff" * 50000, b"\xff" * 100)]:
        big = dataclasses.replace(c, height=1280, width=1280, streams=(y, z), nbytes=0)
        assert _valid_or_codec_error(net, big.to_bytes()) in ("image", "error")


@pytest.mark.slow
def test_fuzz_mutated_bitstreams():
    net = spread_model()
    net.weights_hash = hash_state_dict(net.state_dict())  # as a loaded checkpoint has (saves time per case)
    rng = np.random.default_rng(1234)
    seeds = [codec.encode(net, torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h)), q)
             for h, w, q in [(32, 48, 1.5), (17, 64, 3.9), (64, 32, 2.0)]]
    outcomes = {"error": 0, "image": 0}
    kinds = {}
    n_cases = 1000
    for i in range(n_cases):
        data = seeds[i % len(seeds)]
        kind = i % 6
        if kind == 0:  # truncation
            mutated = data[: int(rng.integers(0, len(data)))]
        elif kind == 1:  # bit flips
            b = bytearray(data)
            for _ in range(int(rng.integers(1, 9))):
                pos = int(rng.integers(0, len(b)))
                b[pos] ^= 1 << int(rng.integers(0, 8))
            mutated = bytes(b)
        elif kind == 2:  # byte overwrite
            b = bytearray(data)
            pos = int(rng.integers(0, len(b)))
            b[pos : pos + int(rng.integers(1, 16))] = rng.bytes(16)[: len(b[pos : pos + 16])]
            mutated = bytes(b)
        elif kind == 3:  # random bytes, sometimes with our magic
            mutated = rng.bytes(int(rng.integers(0, 400)))
            if rng.random() < 0.5:
                mutated = b"GVAE\x01" + mutated
        else:  # well-formed container, garbage (or damaged) streams, CRC recomputed
            c = _fields(data)
            streams = []
            for s in c.streams:
                r = rng.random()
                if r < 0.3:
                    s = rng.bytes(int(rng.integers(0, 2 * len(s) + 8)))
                elif r < 0.5:
                    s = s[: int(rng.integers(0, len(s) + 1))]
                elif r < 0.7:
                    b = bytearray(s)
                    if b:
                        b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
                    s = bytes(b)
                elif r < 0.8:
                    s = b"\xff" * int(rng.integers(0, 3 * len(s) + 8))
                streams.append(s)
            if kind == 5 and rng.random() < 0.3:
                streams.reverse()
            mutated = dataclasses.replace(c, streams=tuple(streams), nbytes=0).to_bytes()
        outcome = _valid_or_codec_error(net, mutated)
        outcomes[outcome] += 1
        kinds[(kind, outcome)] = kinds.get((kind, outcome), 0) + 1
    assert sum(outcomes.values()) == n_cases >= 1000
    assert outcomes["image"] > 100 and outcomes["error"] > 500, kinds  # both paths were exercised


def test_encoder_overflow_is_refused_not_corrupting_memory(image):
    wild = spread_model(reference=1e-14)  # gains ~ 1e6: latents far outside the tables
    with pytest.raises(CodecError, match="far outside"):
        codec.encode(wild, image, wild.levels)
    with pytest.raises(CodecError, match="far outside"):
        codec.check_encodable([1 << 29], [0], [[0, 1 << 16]], [2], [0])


def test_check_encodable_bound_holds(net):
    """The bound used by check_encodable never underestimates the encoder's output: every case it
    accepts fits CompressAI's buffer (4 bytes per symbol), some of them nearly filling it; the
    cases it refuses are not encoded (they would write past the buffer)."""
    from compressai import ans

    encoder = ans.RansEncoder()
    rng = np.random.default_rng(5)
    accepted, refused, fullest = 0, 0, 0.0
    for em in (net.gaussian_conditional, net.entropy_bottleneck):
        cdfs, sizes, offs = em._quantized_cdf.tolist(), em._cdf_length.tolist(), em._offset.tolist()
        for scale in (1, 30, 3000, 1e5, 1e7):
            for nonzero in (0.2, 1.0):
                n = 400
                idx = rng.integers(0, len(cdfs), n).tolist()
                sym = np.round(rng.normal(0, scale, n) * (rng.random(n) < nonzero)).astype(int).tolist()
                try:
                    codec.check_encodable(sym, idx, cdfs, sizes, offs)
                except CodecError:
                    refused += 1
                    continue
                used = len(encoder.encode_with_indexes(sym, idx, cdfs, sizes, offs)) / (4 * n)
                assert used <= 1
                accepted, fullest = accepted + 1, max(fullest, used)
    assert accepted >= 15 and refused >= 1 and fullest > 0.9  # the bound was tried close to the buffer's end


def test_guard_is_idempotent_and_transparent(net, sample):
    codec.guard_entropy_coders(net)
    codec.guard_entropy_coders(net)
    coder = net.gaussian_conditional.entropy_coder
    assert isinstance(coder, codec._GuardedRansCoder) and not isinstance(coder._inner, codec._GuardedRansCoder)
    assert isinstance(coder._encoder, codec._GuardedEncoder) and isinstance(coder._decoder, codec._GuardedDecoder)
    assert coder.name == "ans"
    clone = copy.deepcopy(net)  # CompressAI pickles the coder by name
    assert torch.equal(codec.decode(clone, sample), codec.decode(net, sample))
    assert codec.rans_padding(b"", 10) == 8 + 40 + 256 + 65536
    assert codec.rans_padding(b"\x00\xff\xff\xff\x01", 0) == 8 + 16 * 19 + 65536


def test_scgain_quality_map_through_the_codec(tmp_path):
    net = gainedvae.get_model("gained-scgain", N=16, M=16, lambdas=(0.0067, 0.025, 0.0932))
    net.gain.init_from_lambdas(net.lambdas, reference=0.025)
    with torch.no_grad():  # a fresh model ignores the map (zero-initialised SFT outputs)
        for name, p in net.named_parameters():
            if name.startswith(("sft_", "cond_")):
                p.normal_(0, 0.2)
    net.update(force=True)
    net.eval()
    img = (np.random.default_rng(1).random((48, 80, 3)) * 255).astype(np.uint8)
    mask = tmp_path / "roi.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 40).astype(np.uint8), (24, 1))).save(mask)  # other size: resized
    data = codec.encode(net, img, 2.5, qmap=str(mask))
    c = codec.Container.from_bytes(data)
    assert c.flags & codec.FLAG_QUALITY_MAP
    x = codec.image_to_tensor(img)
    with torch.no_grad():
        expected = net.decompress(net.compress(x, 2.5, str(mask))["strings"], (48, 80), 2.5)["x_hat"]
    assert torch.equal(codec.decode(net, data), expected)  # no map needed to decode
    assert codec.encode(net, img, 2.5, qmap=0.0) != codec.encode(net, img, 2.5, qmap=1.0)
    r = codec.encode_to_bpp(net, img, 1.0, qmap=str(mask))
    assert codec.Container.from_bytes(r.data).flags & codec.FLAG_QUALITY_MAP
    with pytest.raises(CodecError, match="quality map"):
        codec.encode(net, img, 2.5, qmap=-0.5)
