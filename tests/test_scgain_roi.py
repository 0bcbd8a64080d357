"""results/scgain_roi.py: ROI maps, the equal-size search and the script end to end (tiny models)."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import gainedvae
from gainedvae.qmap import ellipse_qmap, half_qmap
from results import scgain_roi as roi

from conftest import tiny_model

H, W = 64, 96


def roi_model():
    """A tiny gained-scgain model whose rate grows with the map: the last analysis SFT scales ``y``
    by ``exp(2 tanh(m / 2))`` of the centred map ``m = 2 q - 1`` (every other SFT is the identity)."""
    net = tiny_model("gained-scgain", seed=3, y_boost=1.5)
    sft = net.sft_a[3]
    with torch.no_grad():
        sft.shared[0].weight.zero_()
        sft.shared[0].bias.zero_()
        sft.shared[0].weight[0, -1, 1, 1] = 1.0  # hidden unit 0 = m + 1 >= 0 (the map channel is the last)
        sft.shared[0].bias[0] = 1.0
        sft.gamma_beta.weight[: net.M, 0, 1, 1] = 1.0  # gamma = m for every channel of y
        sft.gamma_beta.bias[: net.M] = -1.0
    net.update(force=True)
    return net.eval()


def photo(seed=0, h=H, w=W):
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.random((h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
    return (255 * np.clip(smooth + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)).astype("uint8")


def as_tensor(arr):
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float().div(255)


# ---------------------------------------------------------------------------
# maps


def test_ellipse_map_is_centred_binary_and_sized_by_the_factor():
    m = ellipse_qmap(H, W)
    assert m.shape == (1, 1, H, W) and m.dtype == torch.float32
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(m, m.flip(-1)) and torch.equal(m, m.flip(-2))  # centred
    assert m[0, 0, H // 2, W // 2] == 1 and m[0, 0, 0, 0] == 0 and m[0, 0, -1, -1] == 0
    # semi-axes: half of half the width / height -> the middle row / column is half the side
    assert int(m[0, 0, H // 2].sum()) == W // 2 and int(m[0, 0, :, W // 2].sum()) == H // 2
    assert float(m.mean()) == pytest.approx(math.pi / 4 * 0.5**2, rel=0.05)
    full = ellipse_qmap(H, W, factor=1.0)
    assert int(full[0, 0, H // 2].sum()) == W and int(full[0, 0, :, W // 2].sum()) == H
    assert float(full.mean()) == pytest.approx(math.pi / 4, rel=0.03)
    assert bool((full >= m).all())  # a larger factor contains the smaller ellipse
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="factor"):
            ellipse_qmap(H, W, bad)


def test_half_maps_are_exact():
    expected = torch.zeros(1, 1, H, W)
    expected[..., : H // 2, :] = 1
    assert torch.equal(half_qmap(H, W, "upper"), expected)
    assert torch.equal(half_qmap(H, W, "lower"), 1 - expected)
    odd = half_qmap(5, 4, "upper")[0, 0]
    assert odd[:2].eq(1).all() and odd[2:].eq(0).all()  # the odd middle row is outside
    left = half_qmap(H, W, "left")[0, 0]
    assert left[:, : W // 2].eq(1).all() and left[:, W // 2:].eq(0).all()
    with pytest.raises(ValueError, match="upper, lower, left or right"):
        half_qmap(H, W, "top")


def test_roi_map_names():
    assert torch.equal(roi.roi_map("ellipse", H, W, 0.3), ellipse_qmap(H, W, 0.3))
    assert torch.equal(roi.roi_map("upper-half", H, W), half_qmap(H, W, "upper"))
    with pytest.raises(ValueError, match="unknown ROI map 'circle'"):
        roi.roi_map("circle", H, W)


# ---------------------------------------------------------------------------
# the equal-size search


def smooth_sizes(v):
    return round(1000 * 4**v)  # 1000 bytes at v = 0 to 4000 at v = 1


def test_search_meets_the_tolerance_and_is_monotone():
    found = [roi.match_uniform_size(smooth_sizes, t, tol=0.01) for t in (1100, 2000, 3000, 3900)]
    for f, t in zip(found, (1100, 2000, 3000, 3900)):
        assert f.converged and not f.clamped and abs(f.nbytes - t) <= 0.01 * t
        assert f.nbytes == smooth_sizes(f.value) and 0 <= f.value <= 1 and f.iterations <= 30
        assert f.error == pytest.approx(f.nbytes / t - 1)
    assert [f.value for f in found] == sorted(f.value for f in found)
    assert found[1].value == pytest.approx(0.5, abs=0.01)


def test_search_out_of_range_or_a_jump_is_a_clear_error():
    with pytest.raises(roi.SizeMatchError, match="target 500 bytes beyond what uniform maps reach"):
        roi.match_uniform_size(smooth_sizes, 500)
    low = roi.match_uniform_size(smooth_sizes, 500, strict=False)
    assert low.clamped and not low.converged and low.value == 0 and low.nbytes == 1000
    high = roi.match_uniform_size(smooth_sizes, 9000, strict=False)
    assert high.clamped and not high.converged and high.value == 1 and high.nbytes == 4000
    step = lambda v: 1000 if v < 0.5 else 3000  # noqa: E731
    with pytest.raises(roi.SizeMatchError, match=r"not met within 1\.00%"):
        roi.match_uniform_size(step, 2000, max_iter=12)
    closest = roi.match_uniform_size(step, 2000, max_iter=12, strict=False)
    assert not closest.converged and not closest.clamped and closest.nbytes in (1000, 3000)
    with pytest.raises(ValueError, match="positive number of bytes"):
        roi.match_uniform_size(smooth_sizes, 0)


def test_search_on_a_tiny_model_matches_real_bytes():
    net = roi_model()
    x = as_tensor(photo())
    q = 2.0
    sizes = [roi.coded_bytes(net, x, q, v) for v in (0.0, 0.5, 1.0)]
    assert sizes[0] < sizes[1] < sizes[2]  # the model's rate grows with the uniform value
    target = roi.coded_bytes(net, x, q, roi.roi_map("ellipse", H, W))
    assert sizes[0] < target < sizes[2]
    found = roi.match_uniform_size(lambda v: roi.coded_bytes(net, x, q, v), target, tol=0.05)
    assert found.converged and abs(found.nbytes - target) <= 0.05 * target
    assert roi.coded_bytes(net, x, q, found.value) == found.nbytes  # the reported bytes are real
    bigger = roi.match_uniform_size(lambda v: roi.coded_bytes(net, x, q, v), sizes[2] - 4, tol=0.05)
    assert bigger.value > found.value


def test_compare_at_equal_size_row():
    net = roi_model()
    ref = torch.from_numpy(photo()).permute(2, 0, 1)[None]
    qmap = roi.roi_map("ellipse", H, W)
    row, rec_roi, rec_uni = roi.compare_at_equal_size(net, ref, "a.png", "ellipse", qmap, 2.0, 0.05, 30)
    assert rec_roi.shape == ref.shape == rec_uni.shape and rec_roi.dtype == torch.uint8
    assert row.matched and abs(row.uniform_bytes / row.roi_bytes - 1) <= 0.05
    assert row.roi_bpp == pytest.approx(row.roi_bytes * 8 / (H * W))
    assert row.roi_fraction == pytest.approx(float(qmap.mean()))
    inside = qmap[0, 0] >= 0.5
    assert row.roi_psnr_inside == pytest.approx(gainedvae.evaluate_scgain.region_psnr(ref, rec_roi, inside))
    assert row.uniform_psnr_outside == pytest.approx(gainedvae.evaluate_scgain.region_psnr(ref, rec_uni, ~inside))
    assert row.inside_gain == pytest.approx(row.roi_psnr_inside - row.uniform_psnr_inside)
    assert row.outside_change == pytest.approx(row.roi_psnr_outside - row.uniform_psnr_outside)


# ---------------------------------------------------------------------------
# the script


COLUMNS = {"image", "map", "quality", "roi_bytes", "roi_bpp", "uniform_value", "uniform_bytes", "uniform_bpp",
           "size_error", "matched", "roi_psnr_inside", "roi_psnr_outside", "uniform_psnr_inside",
           "uniform_psnr_outside", "inside_gain", "outside_change"}


@pytest.fixture
def two_images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for i in range(2):
        Image.fromarray(photo(seed=i)).save(d / f"img{i}.png")
    return d


def test_main_end_to_end(tmp_path, two_images, capsys):
    ckpt = gainedvae.save_checkpoint(roi_model(), tmp_path / "sc.pt")
    out = tmp_path / "out"
    assert roi.main(["--checkpoint", str(ckpt), "-d", str(two_images), "--qualities", "1", "3", "--tol", "0.05",
                     "--output-dir", str(out), "--name", "t", "--picture", "--no-progress"]) == 0
    with open(out / "t-per-image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2 and COLUMNS <= set(rows[0])
    assert {(r["image"], r["map"], float(r["quality"])) for r in rows} == {
        (f"img{i}.png", m, q) for i in range(2) for m in ("ellipse", "upper-half") for q in (1.0, 3.0)}
    for r in rows:
        nums = [float(r[k]) for k in COLUMNS - {"image", "map", "matched"}]
        assert all(math.isfinite(v) for v in nums)
        assert r["matched"] == "True" and abs(float(r["size_error"])) <= 0.05
        assert int(r["roi_bytes"]) > 0 and 0 <= float(r["uniform_value"]) <= 1
    data = json.loads((out / "t.json").read_text())
    assert len(data["rows"]) == 8 and data["qualities"] == [1.0, 3.0] and data["tol"] == 0.05
    assert {(s["map"], s["quality"]) for s in data["summary"]} == {
        (m, q) for m in ("ellipse", "upper-half") for q in (1.0, 3.0)}
    for s in data["summary"]:
        assert s["num_images"] == s["num_matched"] == 2 and s["max_abs_size_error"] <= 0.05
        assert math.isfinite(s["inside_gain"]) and math.isfinite(s["outside_change"]) and s["claim"] in (True, False)
        mine = [r for r in rows if r["map"] == s["map"] and float(r["quality"]) == s["quality"]]
        assert s["inside_gain"] == pytest.approx(sum(float(r["inside_gain"]) for r in mine) / 2)
    md = (out / "t.md").read_text()
    assert "| ellipse | 1 | 2/2 |" in md and "| upper-half | 3 | 2/2 |" in md and "scgain_roi.py" in md
    with Image.open(out / "t-picture.png") as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 300
    assert "inside gain" in capsys.readouterr().out


def test_main_refuses_a_model_without_quality_maps(tmp_path, two_images, capsys):
    ckpt = gainedvae.save_checkpoint(tiny_model(), tmp_path / "gained.pt")
    out = tmp_path / "out"
    assert roi.main(["--checkpoint", str(ckpt), "-d", str(two_images), "--output-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "gained-mbt2018-mean" in err and "takes no quality map" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="gained-scgain checkpoint"):
        roi.load_model(ckpt)


def test_main_refuses_qualities_outside_the_levels(tmp_path, two_images, capsys):
    ckpt = gainedvae.save_checkpoint(roi_model(), tmp_path / "sc.pt")
    assert roi.main(["--checkpoint", str(ckpt), "-d", str(two_images), "--qualities", "6",
                     "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    assert r"qualities must lie in [1, 4]" in capsys.readouterr().err
    assert roi.main(["--checkpoint", str(ckpt), "-d", str(two_images), "--qualities", "1", "--tol", "0",
                     "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "--tol must be in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
