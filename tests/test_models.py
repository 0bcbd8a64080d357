import pytest
import torch
from compressai.models import MeanScaleHyperprior, ScaleHyperprior

import gainedvae
from gainedvae.models import GainedMeanScaleHyperprior, GainedScaleHyperprior

from conftest import tiny_model

GAINED = ["gained-bmshj2018-hyperprior", "gained-mbt2018-mean"]


def test_registry_lists_the_four_models():
    assert set(gainedvae.MODELS) >= {"gained-bmshj2018-hyperprior", "gained-mbt2018-mean", "bmshj2018-hyperprior", "mbt2018-mean"}
    assert isinstance(gainedvae.get_model("mbt2018-mean", N=16, M=16), MeanScaleHyperprior)
    assert isinstance(gainedvae.get_model("bmshj2018-hyperprior", N=16, M=16), ScaleHyperprior)
    assert isinstance(gainedvae.get_model("gained-mbt2018-mean", N=16, M=16), MeanScaleHyperprior)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        gainedvae.get_model("nope")


def test_default_lambdas_are_compressai_mse_lambdas():
    net = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16)
    assert net.lambdas == (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
    assert net.gain.y.log_gain.shape == (8, 16)


@pytest.mark.parametrize("lambdas", [(0.01,), (0.02, 0.01), (0.01, -1.0)])
def test_bad_lambdas(lambdas):
    with pytest.raises(ValueError, match="lambdas"):
        gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, lambdas=lambdas)


@pytest.mark.parametrize("name", GAINED)
@pytest.mark.parametrize("quality", [1, 2, 2.5, 3.37, 4])
@pytest.mark.parametrize("size", [(64, 64), (65, 47)])
def test_roundtrip_equals_encoder_reconstruction(name, quality, size):
    net = tiny_model(name)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        enc = net.compress(x, quality)
        dec = net.decompress(enc["strings"], enc["shape"], quality)["x_hat"]
        ref = net(x, quality=quality)["x_hat"].clamp(0, 1)  # encoder side, real rounding
    assert dec.shape == x.shape
    assert enc["shape"] == size
    assert torch.equal(dec, ref)
    assert all(isinstance(s, bytes) and len(s) > 0 for s in enc["strings"][0] + enc["strings"][1])


def test_tiny_and_single_pixel_images_roundtrip():
    net = tiny_model()
    for size in [(1, 1), (3, 130)]:
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            enc = net.compress(x, 1.5)
            dec = net.decompress(enc["strings"], enc["shape"], 1.5)["x_hat"]
            assert torch.equal(dec, net(x, quality=1.5)["x_hat"].clamp(0, 1))


@pytest.mark.parametrize("name", GAINED)
def test_integer_quality_equals_discrete_level(name):
    net = tiny_model(name)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for level in range(net.levels):
            a = net(x, level=level)
            b = net(x, quality=float(level + 1))
            assert torch.equal(a["x_hat"], b["x_hat"])
            assert torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])


def test_per_sample_levels_match_single_levels():
    net = tiny_model()
    x = torch.rand(3, 3, 64, 64)
    levels = torch.tensor([0, 3, 1])
    with torch.no_grad():
        batch = net(x, level=levels)["x_hat"]
        for i, lv in enumerate(levels.tolist()):
            torch.testing.assert_close(batch[i : i + 1], net(x[i : i + 1], level=lv)["x_hat"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch of 3"):
        net(x, level=torch.tensor([0, 1]))


def test_rate_increases_with_quality():
    net = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, lambdas=(0.0035, 0.013, 0.0483, 0.18))
    net.gain.init_from_lambdas(net.lambdas, reference=0.013)
    net.update(force=True)
    net.eval()
    x = torch.rand(1, 3, 128, 128)
    sizes = []
    with torch.no_grad():
        for q in [1, 1.5, 2, 2.5, 3, 3.5, 4]:
            enc = net.compress(x, q)
            sizes.append(sum(len(s[0]) for s in enc["strings"]))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes


@pytest.mark.parametrize("bad", [0.5, 4.5, float("nan")])
def test_out_of_range_quality_is_a_value_error(bad):
    net = tiny_model()
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="quality"):
        net.compress(x, bad)
    with pytest.raises(ValueError, match="quality"):
        net(x, quality=bad)
    enc = net.compress(x, 2)
    with pytest.raises(ValueError, match="quality"):
        net.decompress(enc["strings"], enc["shape"], bad)


def test_forward_needs_exactly_one_of_level_or_quality():
    net = tiny_model()
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="exactly one"):
        net(x)
    with pytest.raises(ValueError, match="exactly one"):
        net(x, level=1, quality=2)
    with pytest.raises(TypeError):
        net(x, level=1.5)


@pytest.mark.parametrize(
    "cls,gained_cls", [(MeanScaleHyperprior, GainedMeanScaleHyperprior), (ScaleHyperprior, GainedScaleHyperprior)]
)
def test_compressai_state_dict_loads_into_gained_backbone(cls, gained_cls):
    plain = cls(16, 24)
    plain.update(force=True)
    sd = plain.state_dict()
    gained = gained_cls(N=16, M=24)
    gained.load_backbone_state_dict(sd)
    own = gained.state_dict()
    assert {k for k in own if not k.startswith("gain.")} == set(sd)
    for k, v in sd.items():
        assert torch.equal(own[k], v), k
    assert all(torch.equal(own[k], torch.zeros_like(own[k])) for k in own if k.startswith("gain."))
    # gains at 1 => the gained model is the plain model at every quality
    plain.eval(), gained.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(gained(x, quality=2.5)["x_hat"], plain(x)["x_hat"], atol=1e-6)


def test_mismatched_state_dict_is_rejected():
    gained = GainedMeanScaleHyperprior(N=16, M=16)
    with pytest.raises(KeyError, match="missing"):
        gained.load_backbone_state_dict(ScaleHyperprior(16, 16).state_dict() | {"extra": torch.zeros(1)})


def test_decompress_rejects_malformed_strings():
    net = tiny_model()
    with pytest.raises(ValueError, match="strings"):
        net.decompress([[b"x"]], (64, 64), 2)
    with pytest.raises(ValueError, match="shape"):
        net.decompress([[b"x"], [b"y"]], (0, 64), 2)


def test_ste_quantizer_trains_the_decoder_on_rounded_latents():
    """quantizer "ste": in training, h_s and g_s read z and y rounded about the medians / means
    (deterministic x_hat, straight-through gradients into g_a), while the rate keeps its noise; "noise"
    (the default) perturbs both. Eval is the same either way."""
    torch.manual_seed(0)
    net = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16).train()
    x = torch.rand(2, 3, 64, 64)
    a, b = net(x, level=1), net(x, level=1)
    assert not torch.equal(a["x_hat"], b["x_hat"])  # noise reaches the reconstruction
    net.set_quantizer("ste")
    a, b = net(x, level=1), net(x, level=1)
    assert torch.equal(a["x_hat"], b["x_hat"])  # rounded: no noise left in the reconstruction
    assert not torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])  # the rate: noise
    net.zero_grad()
    ((a["x_hat"] - x) ** 2).mean().backward()  # distortion only: reaches g_a through the rounding
    assert net.g_a[0].weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        ste = net(x, level=1)["x_hat"]
        net.set_quantizer("noise")
        torch.testing.assert_close(net(x, level=1)["x_hat"], ste, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"trains with quantizer 'noise', got 'ste'"):
        gainedvae.get_model("gained-mbt2018", N=16, M=16).set_quantizer("ste")
