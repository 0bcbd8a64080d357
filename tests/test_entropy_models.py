"""Asymmetric Gaussian and GMM entropy models (gainedvae.entropy) and the
``entropy_model`` option of the gained hyperprior models."""

import pytest
import torch
from compressai.entropy_models import GaussianConditional

import gainedvae
from gainedvae.checkpoint import load_checkpoint, save_checkpoint
from gainedvae.entropy import ENTROPY_MODELS, AsymmetricGaussianConditional, GMMConditional, widen_gaussian_state

from conftest import tiny_model

LAMBDAS = (0.0067, 0.013, 0.025, 0.0483)
HYPERPRIORS = ["gained-mbt2018-mean", "gained-bmshj2018-hyperprior"]




def coding_model(name, **kw):
    """A tiny model ready to code, gains random and large enough for many non-zero symbols."""
    return tiny_model(name, lambdas=LAMBDAS, y_boost=2.0, seed=0, **kw)


_CACHE = {}


def cached_model(name, kind):
    if (name, kind) not in _CACHE:
        _CACHE[name, kind] = coding_model(name, entropy_model=kind)
    return _CACHE[name, kind]


def gmm_params(weights, means, scales):
    """Packed GMM parameters (B, 3KM, 1, 1) for K components of one element (M = 1)."""
    logits = torch.log(torch.tensor(weights))
    return torch.cat([logits, torch.tensor(means), torch.tensor(scales)]).reshape(1, -1, 1, 1)


# -- likelihoods ---------------------------------------------------------------


@pytest.mark.parametrize("mean,scale", [(0.0, 0.5), (0.3, 2.5), (-7.6, 11.0)])
def test_gaussian_and_asymmetric_likelihoods_sum_to_one(mean, scale):
    k = torch.arange(-300, 301, dtype=torch.float32).reshape(1, 1, -1, 1)
    y = k + mean  # the quantisation points round(y - mean) + mean
    means = torch.full_like(y, mean)
    gauss = GaussianConditional(None)._likelihood(y, torch.full_like(y, scale), means)
    assert abs(gauss.sum().item() - 1) < 1e-4
    asym = AsymmetricGaussianConditional()
    for left, right in [(scale, scale), (scale, 3 * scale), (4 * scale, 0.4 * scale)]:
        packed = torch.cat([torch.full_like(y, left), torch.full_like(y, right)], 1)
        lik = asym._likelihood(y, packed, means)
        assert abs(lik.sum().item() - 1) < 1e-4, (left, right)
        assert (lik >= 0).all()


def test_asymmetric_likelihood_is_skewed_the_right_way():
    asym = AsymmetricGaussianConditional()
    y = torch.arange(-40, 41, dtype=torch.float32).reshape(1, 1, -1, 1)
    packed = torch.cat([torch.full_like(y, 1.0), torch.full_like(y, 6.0)], 1)  # narrow left, wide right
    lik = asym._likelihood(y, packed, torch.zeros_like(y)).flatten()
    below, above = lik[:40].sum(), lik[41:].sum()
    assert above > 3 * below  # continuous split normal: P(x < mean) = s_l / (s_l + s_r) = 1/7


@pytest.mark.parametrize(
    "weights,means,scales",
    [([1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]), ([0.2, 0.5, 0.3], [-6.3, 0.4, 9.0], [0.3, 2.0, 7.5])],
)
def test_gmm_likelihoods_sum_to_one(weights, means, scales):
    gmm = GMMConditional(K=3)
    y = torch.arange(-200, 201, dtype=torch.float32).reshape(1, 1, -1, 1)
    params = gmm_params(weights, means, scales).expand(1, 9, y.size(2), 1)
    _, lik = gmm(y, params, training=False)
    assert abs(lik.sum().item() - 1) < 1e-4


def test_asymmetric_with_equal_scales_is_the_gaussian():
    torch.manual_seed(1)
    y = torch.randn(2, 8, 5, 7) * 6
    y[0, 0, 0, :3] = torch.tensor([0.0, 0.5, -0.5])
    scales = torch.rand(2, 8, 5, 7) * 10
    scales[0, 0, 0, 0] = 0.01  # below the lower bound
    means = torch.randn(2, 8, 5, 7)
    gauss, asym = GaussianConditional(None).eval(), AsymmetricGaussianConditional().eval()
    for training in (False, True):
        torch.manual_seed(2)
        out_g, lik_g = gauss(y, scales, means=means, training=training)
        torch.manual_seed(2)
        out_a, lik_a = asym(y, torch.cat([scales, scales], 1), means=means, training=training)
        assert torch.equal(out_g, out_a)
        assert torch.equal(lik_g, lik_a)


def test_likelihoods_have_gradients():
    y = (torch.randn(1, 4, 3, 3) * 3).requires_grad_()
    for cond, params in [
        (AsymmetricGaussianConditional().train(), torch.rand(1, 8, 3, 3).add(0.2).requires_grad_()),
        (GMMConditional(K=3).train(), torch.randn(1, 36, 3, 3).requires_grad_()),
    ]:
        means = torch.zeros(1, 4, 3, 3, requires_grad=True) if isinstance(cond, AsymmetricGaussianConditional) else None
        _, lik = cond(y, params, means=means)
        (-torch.log2(lik).sum()).backward()
        assert torch.isfinite(params.grad).all() and params.grad.abs().sum() > 0


# -- the conditionals' own coders ------------------------------------------------


def test_asymmetric_conditional_codes_exactly():
    torch.manual_seed(3)
    cond = AsymmetricGaussianConditional()
    cond.update_scale_table([0.11 * 1.2**i for i in range(64)], force=True)
    y = torch.randn(2, 6, 4, 5) * torch.tensor([0.3, 1, 3, 10, 30, 100]).reshape(1, 6, 1, 1)
    scales = torch.rand(2, 12, 4, 5) * 20
    means = torch.randn(2, 6, 4, 5)
    indexes = cond.build_indexes(scales)
    assert indexes.shape == y.shape and int(indexes.max()) < 64 * 64
    strings = cond.compress(y, indexes, means=means)
    y_hat = cond.decompress(strings, indexes, means=means)
    assert torch.equal(y_hat, torch.round(y - means) + means)
    # a fresh module (other process) builds the same tables
    fresh = AsymmetricGaussianConditional()
    fresh.update_scale_table([0.11 * 1.2**i for i in range(64)], force=True)
    assert torch.equal(fresh.decompress(strings, indexes, means=means), y_hat)


@pytest.mark.parametrize("window_cap", [128, 2])  # 2: most symbols take rANS's escape path
def test_gmm_conditional_codes_exactly(window_cap):
    torch.manual_seed(4)
    gmm = GMMConditional(K=3, window_cap=window_cap)
    y = torch.randn(2, 5, 4, 3) * 8
    y[1, 2] = 0.1  # an all-zero channel (not coded)
    params = torch.randn(2, 45, 4, 3)
    strings = gmm.compress(y, gmm.build_indexes(params))
    y_hat = gmm.decompress(strings, gmm.build_indexes(params))
    assert torch.equal(y_hat, torch.round(y))
    zeros = gmm.compress(torch.zeros(1, 5, 4, 3), params[:1])  # no symbols at all
    assert torch.equal(gmm.decompress(zeros, params[:1]), torch.zeros(1, 5, 4, 3))


def test_gmm_rejects_means_and_bad_widths():
    gmm = GMMConditional(K=3)
    with pytest.raises(ValueError, match="means"):
        gmm(torch.zeros(1, 2, 1, 1), torch.zeros(1, 18, 1, 1), means=torch.zeros(1, 2, 1, 1))
    with pytest.raises(ValueError, match="3\\*K\\*M"):
        gmm.split_params(torch.zeros(1, 10, 1, 1))


# -- the entropy_model option ------------------------------------------------------


@pytest.mark.parametrize("name", HYPERPRIORS)
@pytest.mark.parametrize("kind", ["asymmetric", "gmm"])
@pytest.mark.parametrize("quality", [1, 2.5, 4])
@pytest.mark.parametrize("size", [(64, 64), (65, 47)])
def test_entropy_model_roundtrip(name, kind, quality, size):
    net = cached_model(name, kind)
    assert net.entropy_model == kind
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        enc = net.compress(x, quality)
        dec = net.decompress(enc["strings"], enc["shape"], quality)["x_hat"]
        ref = net(x, quality=quality)["x_hat"].clamp(0, 1)
    assert dec.shape == x.shape and enc["shape"] == size
    assert torch.equal(dec, ref)
    assert all(isinstance(s, bytes) for s in enc["strings"][0]) and min(len(s) for s in enc["strings"][0]) > 20


@pytest.mark.parametrize("kind", ["asymmetric", "gmm"])
def test_entropy_model_widens_h_s_only(kind):
    base = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16).state_dict()
    other = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, entropy_model=kind).state_dict()
    per = {"asymmetric": 3, "gmm": 9}[kind]
    last = max(k for k in base if k.startswith("h_s.") and k.endswith(".weight"))
    assert other[last].shape[0] == per * 16 and base[last].shape[0] == 2 * 16
    assert {k for k in base if not k.startswith("gaussian_conditional")} == {
        k for k in other if not k.startswith("gaussian_conditional")
    }


@pytest.mark.parametrize("kind", ENTROPY_MODELS)
def test_entropy_model_is_saved_in_the_checkpoint(tmp_path, kind):
    net = cached_model("gained-mbt2018-mean", kind) if kind != "gaussian" else coding_model("gained-mbt2018-mean")
    path = save_checkpoint(net, tmp_path / "m.pt")
    loaded = load_checkpoint(path)
    assert loaded.entropy_model == kind
    assert type(loaded.gaussian_conditional) is type(net.gaussian_conditional)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        enc = net.compress(x, 2.5)
        assert torch.equal(
            loaded.decompress(enc["strings"], enc["shape"], 2.5)["x_hat"],
            net.decompress(enc["strings"], enc["shape"], 2.5)["x_hat"],
        )


def test_unknown_entropy_model():
    with pytest.raises(ValueError, match="entropy_model"):
        gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, entropy_model="laplace")


@pytest.mark.parametrize("kind", ["asymmetric", "gmm"])
def test_entropy_model_trains(kind):
    net = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, lambdas=LAMBDAS, entropy_model=kind).train()
    out = net(torch.rand(2, 3, 64, 64), level=torch.tensor([0, 3]))
    bits = sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values())
    (bits + out["x_hat"].square().sum()).backward()
    assert net.h_s[-1].weight.grad.abs().sum() > 0
    assert net.gain.y.log_gain.grad.abs().sum() > 0


def test_gmm_corrupt_streams_do_not_crash():
    torch.manual_seed(5)
    gmm = GMMConditional(K=3)
    y = torch.randn(1, 5, 4, 3) * 8
    params = torch.randn(1, 45, 4, 3)
    good = gmm.compress(y, params)[0]
    with pytest.raises(ValueError, match="window"):
        gmm.decompress([b"\xff\xff" + good[2:]], params)
    with pytest.raises(ValueError, match="truncated"):
        gmm.decompress([b"\x01"], params)
    for bad in [good[:3], good[:3] + b"\xff" * 64, good[: len(good) // 2]]:
        assert gmm.decompress([bad], params).shape == (1, 5, 4, 3)
    with pytest.raises(ValueError, match="not finite"):
        gmm.compress(torch.full((1, 5, 4, 3), float("nan")), params)


# -- shared start: a Gaussian backbone loads into the wider entropy models -------------


def _gaussian_and_widened(kind, spread=None):
    torch.manual_seed(3)
    gauss = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, lambdas=LAMBDAS).eval()
    wide = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, lambdas=LAMBDAS, entropy_model=kind).eval()
    if spread is None:
        wide.load_backbone_state_dict(gauss.state_dict())
    else:
        wide.load_state_dict(widen_gaussian_state(wide, gauss.state_dict(), spread=spread))
    return gauss, wide


def test_asymmetric_starts_as_the_gaussian_it_loads():
    gauss, asym = _gaussian_and_widened("asymmetric")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = gauss(x, quality=2.5), asym(x, quality=2.5)
    assert torch.equal(a["x_hat"], b["x_hat"])
    torch.testing.assert_close(b["likelihoods"]["y"], a["likelihoods"]["y"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spread,exact", [(1.0, True), (2**0.25, False)])
def test_gmm_starts_near_the_gaussian_it_loads(spread, exact):
    gauss, gmm = _gaussian_and_widened("gmm", spread)
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.randint(-6, 7, (1, 16, 16, 16)).float()  # integers: both models quantise them alike
    with torch.no_grad():
        scales, means = gauss.h_s(z).chunk(2, 1)
        ref = gauss.gaussian_conditional._likelihood(y, gauss.gaussian_conditional.lower_bound_scale(scales), means)
        s, m, w = gmm.gaussian_conditional.split_params(gmm.h_s(z))
        lik = gmm.gaussian_conditional._likelihood(y, s, m, w)
    K = 3
    torch.testing.assert_close(w, torch.full_like(w, 1 / K))
    torch.testing.assert_close(m, means.repeat(1, K, 1, 1))
    torch.testing.assert_close(s[:, 32:48], scales * spread)  # the last component's scale
    if exact:
        torch.testing.assert_close(lik.clamp_min(1e-9), ref.clamp_min(1e-9), rtol=1e-4, atol=1e-6)
    else:
        assert not torch.allclose(lik, ref)
        assert (lik.clamp_min(1e-9).log2() - ref.clamp_min(1e-9).log2()).abs().mean() < 0.2


def test_widening_leaves_other_state_dicts_alone():
    gmm = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, entropy_model="gmm")
    wrong = gainedvae.get_model("gained-mbt2018-mean", N=16, M=24).state_dict()
    assert widen_gaussian_state(gmm, wrong) is wrong
    with pytest.raises((KeyError, RuntimeError)):
        gmm.load_backbone_state_dict(wrong)


def test_one_pass_scale_indexes_equal_compressais():
    from gainedvae.entropy import TableGaussianConditional, scale_table

    table = scale_table()
    ref, fast = GaussianConditional(None), TableGaussianConditional(None)
    ref.update_scale_table(table)
    fast.update_scale_table(table)
    scales = torch.cat([torch.rand(20000) * 300, torch.rand(2000) * 0.2, table, table * (1 + 1e-6), table * (1 - 1e-6),
                        torch.tensor([0.0, -1.0, 1e9, 5.0])]).reshape(1, -1, 1)
    assert torch.equal(fast.build_indexes(scales), ref.build_indexes(scales))
    for name in ("gained-mbt2018-mean", "gained-mbt2018", "mbt2018-mean-vbr"):
        assert isinstance(gainedvae.get_model(name, N=16, M=16).gaussian_conditional, TableGaussianConditional)


def test_cached_coder_tables_give_compressais_bytes():
    from gainedvae.entropy import TableGaussianConditional, scale_table

    ref, fast = GaussianConditional(None), TableGaussianConditional(None)
    ref.update_scale_table(scale_table())
    fast.update_scale_table(scale_table())
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 8, 6, 5, generator=g) * 9
    scales = torch.rand(2, 8, 6, 5, generator=g) * 20
    means = torch.randn(2, 8, 6, 5, generator=g)
    idx = fast.build_indexes(scales)
    strings = fast.compress(y, idx, means)
    assert strings == ref.compress(y, idx, means)
    assert torch.equal(fast.decompress(strings, idx, means=means), ref.decompress(strings, idx, means=means))
    fast.update_scale_table(scale_table()[::2], force=True)  # a new table invalidates the cached lists
    assert len(fast.coder_tables()[0]) == 128
