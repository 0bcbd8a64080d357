"""The README's first-run example (examples/first_run.py) on a small image with the shipped model."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def first_run():
    spec = importlib.util.spec_from_file_location("first_run", ROOT / "examples" / "first_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _photo(path, h=96, w=128):
    """A crop of the photograph first_run.py codes by default (matplotlib's sample, offline): the
    shipped model must be tested on a photograph, not on saturated random blocks, which no
    M=96 model reconstructs above ~20 dB at any rate (its transforms' floor, quantised or not)."""
    from gainedvae.evaluate import default_images

    img = Image.open(default_images()[0][0]).convert("RGB")
    arr = np.asarray(img)[200:200 + h, 200:200 + w].copy()
    Image.fromarray(arr).save(path)
    return arr


def test_pillow_match_never_exceeds_the_target(first_run, tmp_path):
    rgb = _photo(tmp_path / "a.png")
    for codec in ("jpeg", "webp"):
        q, n, rec = first_run.code_pillow_at_size(rgb, codec, 3000)
        assert n <= 3000 and rec.shape == rgb.shape
        if q < 100:  # the next quality up no longer fits (bisection found the boundary)
            assert len(first_run.pillow_bytes(Image.fromarray(rgb), codec, q + 1)) > 3000


def test_first_run_writes_table_and_pictures(first_run, tmp_path, capsys):
    _photo(tmp_path / "a.png")
    out = tmp_path / "out"
    assert first_run.main(["--image", str(tmp_path / "a.png"), "--qualities", "1,8", "--crop-quality", "1",
                           "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [r["codec"] for r in rows] == ["gainedvae", "pillow-jpeg", "pillow-webp"] * 2
    ours = [r for r in rows if r["codec"] == "gainedvae"]
    assert float(ours[1]["bpp"]) > float(ours[0]["bpp"]) and float(ours[1]["psnr"]) > float(ours[0]["psnr"])
    for i in range(0, 6, 3):  # matched sizes: never larger than our file, unless even quality 1 is (documented)
        assert all(int(rows[i + k]["bytes"]) <= int(rows[i]["bytes"]) or rows[i + k]["setting"] == "quality=1"
                   for k in (1, 2))
    assert any(int(rows[i + k]["bytes"]) <= int(rows[i]["bytes"]) for i in (0, 3) for k in (1, 2))
    crops = Image.open(out / "crops.png")
    assert crops.width > 4 * 2 * 32 and Image.open(out / "rd-psnr.png").width > 0
    assert "pillow-webp" in capsys.readouterr().out
