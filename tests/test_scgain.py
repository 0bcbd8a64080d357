"""gained-scgain: quality maps on top of channel gains (model, maps, training, evaluation)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compressai.models import MeanScaleHyperprior
from PIL import Image

import gainedvae
from gainedvae.metrics import psnr, to_uint8
from gainedvae.models import GainedMeanScaleHyperprior, SCGainedMeanScaleHyperprior
from gainedvae.qmap import check_lambda_range, gradient_qmap, lambda_scale, load_qmap, prepare_qmap, random_qmaps
from gainedvae.train import TrainConfig, TrainingError, configure_optimizers, rate_distortion, train

from conftest import tiny_model

LAMBDAS = (0.0067, 0.013, 0.025, 0.0483)


def sc_model():
    """A tiny gained-scgain model with random gains and random (non-identity) SFTs."""
    net = tiny_model("gained-scgain")
    with torch.no_grad():
        for sft in list(net.sft_a) + list(net.sft_s):
            sft.gamma_beta.weight.normal_(0, 0.05)
            sft.gamma_beta.bias.normal_(0, 0.05)
    return net.eval()


def n_bytes(enc):
    return sum(len(s) for group in enc["strings"] for s in group)


# ---------------------------------------------------------------------------
# model


def test_registered_and_shapes():
    net = gainedvae.get_model("gained-scgain", N=16, M=24, lambdas=LAMBDAS)
    assert isinstance(net, SCGainedMeanScaleHyperprior) and isinstance(net, GainedMeanScaleHyperprior)
    assert gainedvae.model_name(net) == "gained-scgain" and gainedvae.is_gained(net) and net.levels == 4
    for size in [(64, 64), (65, 47)]:
        x = torch.rand(2, 3, *size)
        out = net(x, level=torch.tensor([0, 3]), qmap=torch.rand(2, 1, *size))
        hp, wp = math.ceil(size[0] / 64), math.ceil(size[1] / 64)
        assert out["x_hat"].shape == x.shape
        assert out["likelihoods"]["y"].shape == (2, 24, 4 * hp, 4 * wp)
        assert out["likelihoods"]["z"].shape == (2, 16, hp, wp)


@pytest.mark.parametrize("quality", [1, 2.5, 4])
@pytest.mark.parametrize("size", [(64, 64), (65, 47)])
@pytest.mark.parametrize("kind", ["batch", "shared", "scalar"])
def test_roundtrip_with_map_equals_encoder_reconstruction(quality, size, kind):
    net = sc_model()
    x = torch.rand(2, 3, *size)
    qmap = {"batch": torch.rand(2, 1, *size), "shared": torch.rand(*size), "scalar": 0.8}[kind]
    with torch.no_grad():
        enc = net.compress(x, quality, qmap)
        dec = net.decompress(enc["strings"], enc["shape"], quality)["x_hat"]  # no map on the decoder side
        ref = net(x, quality=quality, qmap=qmap)["x_hat"].clamp(0, 1)
    assert enc["shape"] == size and dec.shape == x.shape
    assert torch.equal(dec, ref)
    assert all(isinstance(s, bytes) and s for s in enc["strings"][0] + enc["strings"][1])


def test_map_changes_the_latent_and_default_is_uniform_half():
    net = sc_model()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(net.analysis(x, 0.0), net.analysis(x, 1.0))
        assert torch.equal(net(x, quality=2)["x_hat"], net(x, quality=2, qmap=0.5)["x_hat"])
        assert net.compress(x, 2)["strings"] == net.compress(x, 2, torch.full((64, 64), 0.5))["strings"]


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_constant_maps_0_and_1_decode(value):
    net = sc_model()
    x = torch.rand(1, 3, 70, 90)
    for qmap in (value, torch.full((1, 1, 70, 90), value)):
        with torch.no_grad():
            enc = net.compress(x, 1.5, qmap)
            dec = net.decompress(enc["strings"], enc["shape"], 1.5)["x_hat"]
            assert dec.shape == x.shape and torch.isfinite(dec).all()
            assert torch.equal(dec, net(x, quality=1.5, qmap=qmap)["x_hat"].clamp(0, 1))


def test_map_file_of_another_size_is_resized(tmp_path):
    arr = np.zeros((20, 30), dtype=np.uint8)
    arr[:, :15] = 255  # left half white = high quality
    Image.fromarray(arr).save(tmp_path / "mask.png")
    x = torch.rand(1, 3, 64, 80)
    m = prepare_qmap(tmp_path / "mask.png", x)
    assert m.shape == (1, 1, 64, 80) and m.dtype == x.dtype
    assert float(m[..., :, :30].min()) > 0.99 and float(m[..., :, 50:].max()) < 0.01
    assert float(m.min()) >= 0 and float(m.max()) <= 1
    # the same file, a 16-bit version and a gray image saved as RGB give the same map
    Image.fromarray(arr.astype(np.uint16) * 257).save(tmp_path / "mask16.png")
    Image.fromarray(np.repeat(arr[..., None], 3, axis=2)).save(tmp_path / "mask_rgb.png")
    for other in ("mask16.png", "mask_rgb.png"):
        torch.testing.assert_close(prepare_qmap(str(tmp_path / other), x), m)
    net = sc_model()
    with torch.no_grad():
        enc = net.compress(x, 3, str(tmp_path / "mask.png"))
        assert enc["strings"] == net.compress(x, 3, m)["strings"]
        assert net.decompress(enc["strings"], enc["shape"], 3)["x_hat"].shape == x.shape


@pytest.mark.parametrize(
    "qmap,match",
    [
        (-0.1 * torch.ones(64, 64), r"\[0, 1\].*-0.1"),
        (torch.full((1, 1, 64, 64), 1.5), r"\[0, 1\].*1.5"),
        (torch.full((64, 64), float("nan")), "NaN"),
        (torch.rand(3, 64, 64), "one channel.*3 channels"),
        (torch.rand(1, 3, 64, 64), "one channel.*3 channels"),
        (torch.rand(3, 1, 64, 64), "3 quality maps for a batch of 2"),
        (torch.rand(2, 1, 1, 64, 64), "shape"),
        (torch.rand(0, 64), "empty"),
        (1.2, r"\[0, 1\]"),
        (-1, r"\[0, 1\]"),
    ],
)
def test_invalid_maps_are_clear_value_errors(qmap, match):
    net = sc_model()
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match=match):
        net.compress(x, 2, qmap)
    with pytest.raises(ValueError, match=match):
        net(x, quality=2, qmap=qmap)


def test_invalid_map_files(tmp_path):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        prepare_qmap(tmp_path / "nope.png", x)
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(tmp_path / "red.png")
    with pytest.raises(ValueError, match="colour image.*grayscale"):
        prepare_qmap(tmp_path / "red.png", x)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read quality map"):
        load_qmap(tmp_path / "junk.png")
    with pytest.raises(TypeError):
        prepare_qmap(True, x)


def test_backbone_checkpoints_load_and_start_as_the_backbone(tmp_path):
    plain = MeanScaleHyperprior(16, 24)
    plain.update(force=True)
    sc = gainedvae.get_model("gained-scgain", N=16, M=24, lambdas=LAMBDAS)
    sc.load_backbone_state_dict(plain.state_dict())
    plain.eval(), sc.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # fresh SFTs are the identity: the map has no effect until trained
        for qmap in (0.0, 1.0, torch.rand(64, 64)):
            torch.testing.assert_close(sc(x, quality=2.5, qmap=qmap)["x_hat"], plain(x)["x_hat"], atol=1e-6, rtol=0)
    # a channel-gain model's weights (gains included) load too: shared start from a gained model
    gained = tiny_model()
    sc2 = gainedvae.get_model("gained-scgain", N=16, M=16, lambdas=LAMBDAS)
    sc2.load_backbone_state_dict(gained.state_dict())
    sc2.update(force=True)
    sc2.eval()
    with torch.no_grad():
        torch.testing.assert_close(sc2(x, quality=3.3, qmap=0.9)["x_hat"], gained(x, quality=3.3)["x_hat"])
    with pytest.raises(KeyError, match="missing"):
        sc.load_backbone_state_dict({k: v for k, v in plain.state_dict().items() if not k.startswith("g_s.")})
    # a CompressAI state-dict file with the registry name
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    loaded = gainedvae.load_checkpoint(tmp_path / "plain.pth", model="gained-scgain")
    assert isinstance(loaded, SCGainedMeanScaleHyperprior) and (loaded.N, loaded.M) == (16, 24)


def test_checkpoint_roundtrip(tmp_path):
    net = sc_model()
    path = gainedvae.save_checkpoint(net, tmp_path / "sc.pt")
    loaded = gainedvae.load_checkpoint(path)
    assert type(loaded) is SCGainedMeanScaleHyperprior and loaded.lambdas == net.lambdas
    x = torch.rand(1, 3, 64, 64)
    qmap = gradient_qmap(64, 64, "vertical")
    with torch.no_grad():
        enc = net.compress(x, 2.2, qmap)
        assert loaded.compress(x, 2.2, qmap)["strings"] == enc["strings"]
        assert torch.equal(loaded.decompress(enc["strings"], enc["shape"], 2.2)["x_hat"],
                           net.decompress(enc["strings"], enc["shape"], 2.2)["x_hat"])


# ---------------------------------------------------------------------------
# maps and lambda


def test_lambda_scale_is_log_linear_and_configurable():
    q = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(lambda_scale(q), torch.tensor([0.25, 1.0, 4.0]))
    torch.testing.assert_close(lambda_scale(q, (0.1, 10)), torch.tensor([0.1, 1.0, 10.0]))
    torch.testing.assert_close(lambda_scale(q, (1, 1)), torch.ones(3))
    for bad in [(0, 4), (4, 1), (1,), (float("inf"), 1)]:
        with pytest.raises(ValueError, match="LOW"):
            check_lambda_range(bad)


def test_random_maps_are_seeded_in_range_and_varied():
    a = random_qmaps(12, 48, 64, torch.Generator().manual_seed(3))
    b = random_qmaps(12, 48, 64, torch.Generator().manual_seed(3))
    c = random_qmaps(12, 48, 64, torch.Generator().manual_seed(4))
    assert a.shape == (12, 1, 48, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    spread = a.flatten(1).std(1)
    assert (spread < 1e-6).any() and (spread > 0.01).any()  # uniform maps and spatially varying ones
    for kind in ("uniform", "gradient", "blobs"):
        m = random_qmaps(3, 32, 32, torch.Generator().manual_seed(0), kinds=(kind,))
        assert float(m.min()) >= 0 and float(m.max()) <= 1
    with pytest.raises(ValueError, match="kind"):
        random_qmaps(1, 8, 8, torch.Generator(), kinds=("stripes",))


def test_pixelwise_rate_distortion():
    x = torch.rand(2, 3, 8, 8)
    out = {"x_hat": x + 0.1 * torch.randn(2, 3, 8, 8), "likelihoods": {"y": torch.full((2, 4, 2, 2), 0.5)}}
    lmap = torch.rand(2, 1, 8, 8)
    r = rate_distortion(out, x, lmap)
    bpp = 2 * 4 * 2 * 2 / 2 / 64
    expect = (lmap * 255**2 * (out["x_hat"] - x) ** 2).mean() + bpp
    torch.testing.assert_close(r["loss"], expect)
    # a uniform map equals the scalar lambda
    torch.testing.assert_close(rate_distortion(out, x, torch.full((1, 1, 8, 8), 0.01))["loss"],
                               rate_distortion(out, x, torch.tensor(0.01))["loss"])
    with pytest.raises(TrainingError, match="mse"):
        rate_distortion(out, x, lmap, metric="ms-ssim")


# ---------------------------------------------------------------------------
# training and evaluation integration


def test_train_gain_runs_scgain_and_writes_a_loadable_checkpoint(image_dir, tmp_path):
    from train_gain import config_from_args, parse_args

    args = parse_args(["-d", str(image_dir), "-m", "gained-scgain", "--qmap-lambda-range", "0.5", "2"])
    assert config_from_args(args).qmap_lambda_range == (0.5, 2.0)
    cfg = TrainConfig(data=(str(image_dir),), model="gained-scgain", N=16, M=16, lambdas=(0.01, 0.05), steps=2,
                      batch_size=2, patch_size=64, val_size=64, save_every=2, val_every=2, log_every=1,
                      save_dir=str(tmp_path / "run"), lr=1e-3, qmap_lambda_range=(0.5, 2.0))
    final = train(cfg, progress=False)
    net = gainedvae.load_checkpoint(final)
    assert isinstance(net, SCGainedMeanScaleHyperprior)
    assert gainedvae.read_checkpoint(final)["train_config"]["qmap_lambda_range"] == (0.5, 2.0)
    x = torch.rand(1, 3, 40, 40)
    enc = net.compress(x, 1.5, gradient_qmap(40, 40))
    assert net.decompress(enc["strings"], enc["shape"], 1.5)["x_hat"].shape == x.shape
    with pytest.raises(TrainingError, match="metric mse"):
        train(TrainConfig(**{**cfg.__dict__, "metric": "ms-ssim", "patch_size": 192, "val_size": 192,
                             "save_dir": str(tmp_path / "r2")}), progress=False)
    with pytest.raises(TrainingError, match="qmap-lambda-range"):
        train(TrainConfig(**{**cfg.__dict__, "qmap_lambda_range": (2.0, 1.0), "save_dir": str(tmp_path / "r3")}),
              progress=False)


def test_scgain_training_resumes_bit_identically(image_dir, tmp_path):
    """The random maps are a function of (seed, step, rank), like the batches."""
    def cfg(d):
        return TrainConfig(data=(str(image_dir),), model="gained-scgain", N=16, M=16, lambdas=(0.01, 0.05), steps=4,
                           batch_size=2, patch_size=64, val_size=64, save_every=2, val_every=100, log_every=1,
                           save_dir=str(d), lr=1e-3, keep=5)

    train(cfg(tmp_path / "full"), progress=False)
    train(cfg(tmp_path / "part"), progress=False)
    (tmp_path / "part" / "ckpt-0000004.pt").unlink()
    train(cfg(tmp_path / "part"), resume="latest", progress=False)
    a, b = ([json.loads(ln)["loss"] for ln in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
            for d in ("full", "part"))
    assert a == b and len(a) == 4


def test_eval_gain_scgain_mode(tmp_path, capsys):
    from eval_gain import main

    from gainedvae.evaluate_scgain import run_scgain

    rng = np.random.default_rng(1)
    d = tmp_path / "imgs"
    d.mkdir()
    smooth = np.kron(rng.random((5, 6, 3)), np.ones((16, 16, 1)))[:72, :88]
    Image.fromarray((255 * smooth).astype("uint8")).save(d / "a.png")
    mask = np.zeros((36, 44), dtype=np.uint8)
    mask[8:28, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "roi.png")
    sc = gainedvae.save_checkpoint(sc_model(), tmp_path / "sc.pt")
    gained = gainedvae.save_checkpoint(tiny_model(), tmp_path / "gained.pt")
    out = tmp_path / "out"
    code = main(["--mode", "scgain", "--checkpoint", str(sc), "-d", str(d), "--qmap", str(tmp_path / "roi.png"),
                 "--qmap-values", "0,1", "--gain-checkpoint", str(gained), "--step", "1", "--output-dir", str(out),
                 "--no-progress"])
    assert code == 0
    uni = json.loads((out / "gained-scgain-uniform.json").read_text())["results"]
    assert uni["qmap"] == [0.0] * 4 + [1.0] * 4 and uni["quality"] == [1.0, 2.0, 3.0, 4.0] * 2
    assert all(math.isfinite(v) and v > 0 for v in uni["bpp"] + uni["psnr-rgb"])
    rows = json.loads((out / "gained-scgain-maps.json").read_text())["rows"]
    roi = [r for r in rows if r["map"] == "roi:roi.png"]
    assert len(roi) == 4 and all(r["psnr_inside"] and r["psnr_outside"] for r in roi)
    assert {r["map"] for r in rows} == {"uniform", "gradient-h", "gradient-v", "roi:roi.png"}
    assert len((out / "gained-scgain-per-image.csv").read_text().splitlines()) == 1 + 5 * 4
    assert "PSNR inside" in (out / "gained-scgain-maps.md").read_text()
    assert json.loads((out / "gained-mbt2018-mean.json").read_text())["results"]["bpp"]
    assert json.loads((out / "bd.json").read_text())["rows"][0]["baseline"] == "gained-mbt2018-mean"
    for name in ("rd-psnr.png", "rd-ms-ssim.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    # the wrong kind of checkpoint, or map flags without --mode scgain, are clear errors: the library
    # raises, the script turns it into exit status 2 and a one-line message
    with pytest.raises(ValueError, match="needs a gained-scgain checkpoint"):
        run_scgain(gained, [d / "a.png"], "one image", out, progress=False)
    capsys.readouterr()
    assert main(["--mode", "scgain", "--checkpoint", str(gained), "-d", str(d), "--no-progress"]) == 2
    assert "eval_gain.py: error: --mode scgain needs a gained-scgain checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--mode scgain"):
        main(["--checkpoint", str(gained), "-d", str(d), "--qmap", str(tmp_path / "roi.png"), "--no-progress"])


# ---------------------------------------------------------------------------
# a briefly trained tiny model puts the bits where the map asks


def _smooth_images(g, n, h, w, cell=16):
    base = torch.rand(n, 3, h // cell + 2, w // cell + 2, generator=g)
    x = F.interpolate(base, size=(h + 2 * cell, w + 2 * cell), mode="bicubic", align_corners=False)
    return x[..., cell : cell + h, cell : cell + w].clamp(0, 1)


def _half_maps(g, n, size=64):
    """One half of each map q = 1 (left, right, top or bottom), the other q = 0."""
    m = torch.zeros(n, 1, size, size)
    for i, k in enumerate(torch.randint(0, 4, (n,), generator=g).tolist()):
        sl = [(..., slice(None), slice(0, size // 2)), (..., slice(None), slice(size // 2, None)),
              (..., slice(0, size // 2), slice(None)), (..., slice(size // 2, None), slice(None))][k]
        m[i][sl] = 1
    return m


@pytest.fixture(scope="module")
def trained_tiny():
    """200 steps (a few seconds of CPU) of a tiny model on four smooth images, 64x64 crops,
    half-and-half maps, pixel-wise lambda ``0.01 * 0.05 ** (1 - q) * 20 ** q``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the per-test 1-thread fixture: same numerics everywhere
    try:
        return _train_tiny()
    finally:
        torch.set_num_threads(threads)


def _train_tiny():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    pool = _smooth_images(g, 4, 64, 128)
    net = gainedvae.get_model("gained-scgain", N=16, M=16, lambdas=(0.01, 0.02))
    opt, aux_opt = configure_optimizers(net, 3e-3, 1e-3)
    for _ in range(200):
        idx = torch.randint(0, 4, (4,), generator=g).tolist()
        off = torch.randint(0, 65, (4,), generator=g).tolist()
        x = torch.stack([pool[i, :, :, o : o + 64] for i, o in zip(idx, off)])
        qmap = _half_maps(g, 4)
        out = net(x, level=0, qmap=qmap)
        loss = rate_distortion(out, x, 0.01 * lambda_scale(qmap, (0.05, 20.0)))["loss"]
        opt.zero_grad()
        aux_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        net.aux_loss().backward()
        aux_opt.step()
    net.update(force=True)
    return net.eval(), pool[:1]


@pytest.mark.slow
def test_trained_tiny_model_psnr_is_higher_where_q_is_1(trained_tiny):
    net, x = trained_tiny
    ref = to_uint8(x)
    left = torch.zeros(1, 1, 64, 128)
    left[..., :64] = 1
    res = {}
    for name, qmap in (("left=1", left), ("left=0", 1 - left)):
        with torch.no_grad():
            enc = net.compress(x, 1, qmap)
            rec = to_uint8(net.decompress(enc["strings"], enc["shape"], 1)["x_hat"])
        res[name] = (psnr(ref[..., :64], rec[..., :64]), psnr(ref[..., 64:], rec[..., 64:]))
    print("PSNR (left half, right half) [dB]:", {k: tuple(round(v, 2) for v in p) for k, p in res.items()})
    # the check: inside the q = 1 region PSNR exceeds the q = 0 region of the same image
    assert res["left=1"][0] > res["left=1"][1]
    # and with content held fixed: each half is better when its map value is 1
    assert res["left=1"][0] > res["left=0"][0]
    assert res["left=0"][1] > res["left=1"][1]
