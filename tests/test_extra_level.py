"""results/extra_level.py: one level extrapolated above the top; the trained levels code as before."""

import numpy as np
import pytest
import torch

from gainedvae import codec
from gainedvae.checkpoint import load_checkpoint, save_checkpoint
from gainedvae.models import get_model
from results import extra_level


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(2)
    m = get_model("gained-mbt2018-mean", N=8, M=12)
    with torch.no_grad():  # distinct gains per level and channel, as after training
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.update(force=True)
    return m.eval()


def test_the_new_level_continues_the_last_pair(net):
    out = extra_level.add_level(net)
    lam = net.lambdas
    assert out.levels == net.levels + 1
    assert out.lambdas[:-1] == lam and out.lambdas[-1] == pytest.approx(lam[-1] ** 2 / lam[-2])
    for key in extra_level.GAIN_KEYS:
        old, new = net.state_dict()[key], out.state_dict()[key]
        assert torch.equal(new[:-1], old)
        # exp of the new row = m_L^2 / m_(L-1): quality L + t of the new model is the old pair at 1 + t
        torch.testing.assert_close(new[-1].exp(), old[-1].exp() ** 2 / old[-2].exp())


def test_trained_levels_decode_to_the_same_pixels(net, tmp_path):
    src = save_checkpoint(net, tmp_path / "src.pt", entropy_tables=True)
    extra_level.main([str(src), "-o", str(tmp_path / "plus.pt")])
    a, b = load_checkpoint(src), load_checkpoint(tmp_path / "plus.pt")
    assert b.levels == a.levels + 1
    img = (np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)
    for q in (1, 3.5, a.levels):
        da, db = codec.encode(a, img, q), codec.encode(b, img, q)
        assert np.array_equal(codec.decode_image(a, da), codec.decode_image(b, db))
    assert len(codec.encode(b, img, b.levels)) > len(codec.encode(b, img, a.levels))

