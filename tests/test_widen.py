"""Widening the latent (gainedvae.widen): same reconstruction, old channels untouched, clear refusals."""

import pytest
import torch

from gainedvae.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from gainedvae.models import get_model
from gainedvae.widen import widen_checkpoint, widen_latent


def _trained_like(name, **kwargs):
    torch.manual_seed(1)
    net = get_model(name, N=8, M=12, **kwargs)
    with torch.no_grad():  # non-trivial values everywhere (biases, GDN, gains), as after training
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _run(net, x):
    if hasattr(net, "gain"):
        return net(x, level=net.levels - 1)
    return net(x)


CASES = [
    ("mbt2018-mean", {}),
    ("bmshj2018-hyperprior", {}),
    ("gained-mbt2018-mean", {}),
    ("gained-bmshj2018-hyperprior", {}),
    ("gained-mbt2018-mean", {"entropy_model": "asymmetric"}),
    ("gained-mbt2018-mean", {"entropy_model": "gmm"}),
]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{k.get('entropy_model', 'gaussian')}" for n, k in CASES])
def test_widened_model_reconstructs_the_same(name, kwargs):
    net = _trained_like(name, **kwargs)
    wide = widen_latent(net, 20).eval()
    assert wide.M == 20 and wide.N == 8
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = _run(net, x), _run(wide, x)
        y_old, y_new = net.g_a(x), wide.g_a(x)
    torch.testing.assert_close(b["x_hat"], a["x_hat"], rtol=0, atol=1e-5)
    torch.testing.assert_close(y_new[:, :12], y_old, rtol=0, atol=1e-6)
    assert y_new[:, 12:].abs().sum() > 0  # new channels carry (random) features
    torch.testing.assert_close(b["likelihoods"]["z"], a["likelihoods"]["z"], rtol=0, atol=1e-6)
    torch.testing.assert_close(b["likelihoods"]["y"][:, :12], a["likelihoods"]["y"], rtol=0, atol=1e-6)


def test_widened_gains_keep_old_entries_and_start_new_ones_at_the_level_mean():
    net = _trained_like("gained-mbt2018-mean")
    wide = widen_latent(net, 16)
    old, new = net.gain.y.log_gain, wide.gain.y.log_gain
    assert new.shape == (net.levels, 16)
    torch.testing.assert_close(new[:, :12], old)
    torch.testing.assert_close(new[:, 12:], old.mean(1, keepdim=True).expand(-1, 4))
    torch.testing.assert_close(wide.gain.z.log_gain, net.gain.z.log_gain)


def test_new_output_weights_differ_with_the_seed_old_ones_do_not():
    net = _trained_like("mbt2018-mean")
    a, b = widen_latent(net, 16, seed=0), widen_latent(net, 16, seed=1)
    assert torch.equal(a.g_a[6].weight[:12], b.g_a[6].weight[:12])
    assert not torch.equal(a.g_a[6].weight[12:], b.g_a[6].weight[12:])
    assert torch.equal(widen_latent(net, 16, seed=0).g_a[6].weight, a.g_a[6].weight)


def test_refusals_name_the_problem():
    net = _trained_like("mbt2018-mean")
    with pytest.raises(ValueError, match="M=12, asked for M=8"):
        widen_latent(net, 8)
    torch.manual_seed(0)
    ctx = get_model("gained-mbt2018", N=8, M=12)
    with pytest.raises(ValueError, match="'gained-mbt2018' is not supported"):
        widen_latent(ctx, 16)


def test_widen_checkpoint_writes_an_init_checkpoint(tmp_path):
    net = _trained_like("mbt2018-mean")
    net.lambdas = (0.18,)
    src = save_checkpoint(net, tmp_path / "small.pt", step=123)
    dst = widen_checkpoint(src, tmp_path / "wide.pt", 16)
    payload = read_checkpoint(dst)
    assert payload["config"]["M"] == 16 and payload["config"]["lambdas"] == [0.18]
    assert payload["widened_from"]["M"] == 12 and payload["widened_from"]["step"] == 123
    wide = load_checkpoint(dst)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(wide(x)["x_hat"], net.eval()(x)["x_hat"], rtol=0, atol=1e-5)
