import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gainedvae
from gainedvae import evaluate as ev

from conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(96, 128), (80, 72)]):
        smooth = np.kron(rng.random((h // 16 + 1, w // 16 + 1, 3)), np.ones((16, 16, 1)))[:h, :w]
        Image.fromarray((255 * smooth).astype("uint8")).save(d / f"g{i}.png")
    return d


@pytest.fixture
def checkpoints(tmp_path):
    net = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, lambdas=(0.0067, 0.025, 0.0932))
    net.gain.init_from_lambdas(net.lambdas, reference=0.025)
    g = gainedvae.save_checkpoint(net, tmp_path / "gained.pt")
    singles = []
    for lam in (0.0067, 0.0932):
        s = gainedvae.get_model("mbt2018-mean", N=16, M=16)
        s.lambdas = (lam,)
        singles.append(gainedvae.save_checkpoint(s, tmp_path / f"single-{lam}.pt"))
    return g, singles


def run_eval(*args):
    from eval_gain import main

    return main([*map(str, args), "--no-progress"])


def test_eval_writes_json_csv_png_and_bd_table(two_images, checkpoints, tmp_path):
    gained, singles = checkpoints
    out = tmp_path / "out"
    # a published-style anchor: our own curve at 1.1x the rate (so BD-rate must be about -9.1 %)
    first = tmp_path / "first"
    assert run_eval("--checkpoint", gained, "-d", two_images, "--step", "0.5", "--output-dir", first) == 0
    base = json.loads((first / "gained-mbt2018-mean.json").read_text())
    assert base.pop("producer") == "gainedvae"  # files we write say so; published ones do not
    base["name"] = "scaled"
    base["results"]["bpp"] = [b * 1.1 for b in base["results"]["bpp"]]
    (tmp_path / "scaled.json").write_text(json.dumps(base))

    code = run_eval("--checkpoint", gained, "-d", two_images, "--step", "0.5", "--output-dir", out,
                    "--baseline", *singles, tmp_path / "scaled.json", first / "gained-mbt2018-mean.json",
                    "--classic", "jpeg")
    assert code == 0
    data = json.loads((out / "gained-mbt2018-mean.json").read_text())
    res = data["results"]
    assert res["quality"] == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert data["lambdas"] == pytest.approx(list(gainedvae.load_checkpoint(gained).lambdas))  # results/level_gap.py reads them
    for key in ("bpp", "est_bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"):
        assert len(res[key]) == 5 and all(math.isfinite(v) for v in res[key]), key
    for b, e in zip(res["bpp"], res["est_bpp"]):
        assert 0.5 < b / e < 3, (b, e)
    assert res["bpp"] == sorted(res["bpp"])  # gains spread by lambda: rate grows with quality
    csv_lines = (out / "gained-mbt2018-mean-per-image.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 2 * 5 and csv_lines[0].startswith("image,quality,bpp,est_bpp,psnr")
    single = json.loads((out / "mbt2018-mean-single-rate.json").read_text())
    assert len(single["results"]["bpp"]) == 2
    assert json.loads((out / "pillow-jpeg.json").read_text())["results"]["bpp"]
    bd = json.loads((out / "bd.json").read_text())["rows"]
    scaled = next(r for r in bd if r["baseline"].startswith("scaled"))
    assert "anchor, not ours" in scaled["baseline"]  # published curves are labelled as such
    again = next(r for r in bd if r["baseline"].startswith("gained-mbt2018-mean"))
    assert again["baseline"] == "gained-mbt2018-mean (ours: first/gained-mbt2018-mean.json)"
    assert again["bd_rate_psnr"] == pytest.approx(0, abs=1e-6)  # the same model, same images
    assert scaled["bd_rate_psnr"] == pytest.approx(100 * (1 / 1.1 - 1), abs=0.1)
    assert "| baseline |" in (out / "bd.md").read_text()
    for name in ("rd-psnr.png", "rd-ms-ssim.png"):
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 300


@pytest.mark.slow
def test_scgain_mode_is_a_clear_message(two_images, checkpoints, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "eval_gain.py"), "--mode", "scgain", "--checkpoint",
                        str(checkpoints[0]), "-d", str(two_images)], capture_output=True, text=True)
    assert r.returncode != 0 and "gained-scgain" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_missing_data_and_checkpoint_errors(tmp_path, checkpoints):
    for args in (["--checkpoint", checkpoints[0], "-d", tmp_path / "nope"], ["--checkpoint", tmp_path / "x.pt"]):
        r = subprocess.run([sys.executable, str(ROOT / "eval_gain.py"), *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_default_images_ship_with_an_installed_dependency():
    images, description = ev.default_images()
    assert images[0].is_file() and "matplotlib" in description
    x = ev.read_image(images[0])
    assert x.dtype == torch.uint8 and x.shape[1] == 3


def test_qualities_include_every_level():
    net = tiny_model()
    assert ev.qualities_for(net, 0.25) == [1 + 0.25 * i for i in range(13)]
    assert ev.qualities_for(net, 0.4) == [1.0, 1.4, 1.8, 2.0, 2.2, 2.6, 3.0, 3.4, 3.8, 4.0]


def test_row_cache_reuses_rows_and_recodes_what_changed(two_images, checkpoints, tmp_path, monkeypatch):
    net = gainedvae.load_checkpoint(checkpoints[0])
    images = sorted(two_images.iterdir())
    cache_file = tmp_path / "cache.jsonl"
    calls = []
    real_code = ev.code
    monkeypatch.setattr(ev, "code", lambda *a: calls.append(a[2]) or real_code(*a))
    first = ev.evaluate_model(net, images, [1.0, 2.5], progress=False, cache=ev.RowCache(cache_file))
    assert len(calls) == 4
    again = ev.evaluate_model(net, images, [1.0, 2.5, 3.0], progress=False, cache=ev.RowCache(cache_file))
    assert len(calls) == 6 and calls[4:] == [3.0, 3.0]  # only the new quality is coded
    assert [r for r in again if r.quality != 3.0] == first
    with open(cache_file, "a") as f:
        f.write('{"key": "torn')  # an interrupted write is ignored
    Image.open(images[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images[0])  # changed image: recoded
    ev.evaluate_model(net, images, [1.0], progress=False, cache=ev.RowCache(cache_file))
    assert len(calls) == 7
    copy = tmp_path / "copy"  # the same images elsewhere, newer files: rows are reused
    copy.mkdir()
    for p in images:
        (copy / p.name).write_bytes(p.read_bytes())
    ev.evaluate_model(net, sorted(copy.iterdir()), [1.0], progress=False, cache=ev.RowCache(cache_file))
    assert len(calls) == 7
    net.weights_hash = None  # a model without a hash is never cached
    ev.evaluate_model(net, images[1:], [1.0], progress=False, cache=ev.RowCache(cache_file))
    assert len(calls) == 8


def test_row_cache_reads_keys_of_the_earlier_stat_format(two_images, tmp_path):
    image = sorted(two_images.iterdir())[0]
    st = image.stat()
    row = ev.Row("a.png", 1.0, 0.5, 0.5, 30.0, 0.9, 0.1, 0.1)
    old = [f"m|coding-v2|{image.resolve()}|{st.st_size}|{st.st_mtime_ns}|1.0",  # unchanged file: kept
           f"m|coding-v2|{image.resolve()}|{st.st_size}|{st.st_mtime_ns + 1}|2.0",  # touched since: dropped
           f"m|coding-v2|{tmp_path / 'gone.png'}|10|10|1.0"]  # file gone: dropped
    cache_file = tmp_path / "cache.jsonl"
    cache_file.write_text("".join(json.dumps({"key": k, "row": asdict(row)}) + "\n" for k in old))
    cache = ev.RowCache(cache_file)
    assert cache.get(cache.key("m|coding-v2", image, 1.0)) == row
    assert cache.get(cache.key("m|coding-v2", image, 2.0)) is None
