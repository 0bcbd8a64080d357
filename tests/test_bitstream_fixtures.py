"""Bitstreams written before the redesign of issue 19 still decode, and today's encoder writes them.

The fixtures in tests/fixtures/bitstreams/ were written at commit bc08278 by
tests/fixtures/make_bitstreams.py (its docstring lists them). Decoding checks the pixels against
the decodes stored at writing time: identical on the machine that wrote them; elsewhere g_s runs in
float and may move a pixel by one level (docs/format.md), the streams themselves must not move.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gainedvae
from gainedvae import codec

HERE = Path(__file__).resolve().parent / "fixtures" / "bitstreams"
FILES = sorted(HERE.glob("*.gvae"))


def _net(name, cache={}):
    if name not in cache:
        # "shipped": the default model when the fixtures were written (issue 16 shipped a new one)
        cache[name] = gainedvae.load_checkpoint(HERE / ("shipped-gained-mbt2018-mean.pt" if name == "shipped" else "tiny-gained-scgain.pt"))
    return cache[name]


def _parse(path):
    """``shipped-a-q4.5`` -> (model, source image, quality, quality map or None)."""
    stem = path.stem
    model = "shipped" if stem.startswith("shipped-") else "tiny-scgain"
    src, q = stem[len(model) + 1 :].split("-")
    if q == "map":
        return model, src, 4.5, torch.linspace(0, 1, 64).expand(1, 1, 48, 64)
    return model, src, float(q[1:]), None


def test_the_fixtures_are_there():
    assert len(FILES) == 13, [f.name for f in FILES]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_old_files_decode_to_the_same_pixels(path):
    model, _, _, _ = _parse(path)
    got = codec.tensor_to_image(codec.decode(_net(model), path.read_bytes())).astype(int)
    want = np.asarray(Image.open(path.with_suffix(".png"))).astype(int)
    assert got.shape == want.shape
    diff = np.abs(got - want)
    assert diff.max() <= 1, f"{path.name}: pixels off by up to {diff.max()} levels"
    assert (diff > 0).mean() <= 0.001, f"{path.name}: {(diff > 0).mean():.2%} of the values differ"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_todays_encoder_writes_the_same_bytes(path):
    model, src, quality, qmap = _parse(path)
    x = np.asarray(Image.open(HERE / f"src-{src}.png"))
    assert codec.encode(_net(model), x, quality, qmap=qmap) == path.read_bytes()
