"""Gained context models: gained-mbt2018 (serial), gained-mbt2018-checkerboard,
gained-cheng2020-attn (GMM) and the single-rate cheng2020-attn-gmm."""

import pytest
import torch
from compressai.models import JointAutoregressiveHierarchicalPriors, MeanScaleHyperprior

import gainedvae
from gainedvae.checkpoint import build_from_payload, load_checkpoint, save_checkpoint
from gainedvae.models import (
    Cheng2020AttentionGMM,
    GainedCheckerboard,
    GainedCheng2020AttentionGMM,
    GainedJointAutoregressive,
    pad_to_multiple,
)

from conftest import tiny_model

LAMBDAS = (0.0067, 0.013, 0.025, 0.0483)
CONTEXT = ["gained-mbt2018", "gained-mbt2018-checkerboard", "gained-cheng2020-attn"]




def coding_model(name, **kw):
    """A tiny model ready to code, gains random and large enough for many non-zero symbols."""
    return tiny_model(name, lambdas=LAMBDAS, y_boost=2.0, seed=0, **kw)


_CACHE = {}


def cached_model(name):
    if name not in _CACHE:
        _CACHE[name] = coding_model(name)
    return _CACHE[name]


def test_registry():
    expected = {
        "gained-mbt2018": GainedJointAutoregressive,
        "gained-mbt2018-checkerboard": GainedCheckerboard,
        "gained-cheng2020-attn": GainedCheng2020AttentionGMM,
        "cheng2020-attn-gmm": Cheng2020AttentionGMM,
        "mbt2018": JointAutoregressiveHierarchicalPriors,
    }
    for name, cls in expected.items():
        net = gainedvae.get_model(name, N=16, M=16, lambdas=LAMBDAS)
        assert type(net) is cls and gainedvae.model_name(net) == name
        assert gainedvae.is_gained(net) == name.startswith("gained-")
    assert gainedvae.get_model("gained-cheng2020-attn", N=16).gaussian_conditional.K == 3


@pytest.mark.parametrize("name", CONTEXT)
@pytest.mark.parametrize("quality", [1, 2.5, 4])
@pytest.mark.parametrize("size", [(64, 64), (65, 47)])
def test_roundtrip_equals_encoder_reconstruction(name, quality, size):
    net = cached_model(name)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        enc = net.compress(x, quality)
        dec = net.decompress(enc["strings"], enc["shape"], quality)["x_hat"]
        ref = net(x, quality=quality)["x_hat"].clamp(0, 1)  # eval forward = what the decoder computes
    assert dec.shape == x.shape and enc["shape"] == size
    assert torch.equal(dec, ref)
    assert len(enc["strings"]) == 2 and all(len(s) == 2 for s in enc["strings"])
    assert all(isinstance(s, bytes) for s in enc["strings"][0] + enc["strings"][1])
    assert min(len(s) for s in enc["strings"][0]) > 50  # real symbols, not an all-zero latent


def test_single_rate_cheng2020_gmm_roundtrip():
    net = coding_model("cheng2020-attn-gmm")
    x = pad_to_multiple(torch.rand(1, 3, 65, 47), net.downsampling_factor)
    with torch.no_grad():
        net.g_a[-2].weight.mul_(30)  # (conv before the last attention block) y large enough to code something
        enc = net.compress(x)
        dec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
        ref = net(x)["x_hat"].clamp(0, 1)
    assert tuple(enc["shape"]) == (2, 1)
    assert torch.equal(dec, ref)
    assert len(enc["strings"][0][0]) > 50


def test_compressai_mbt2018_state_dict_loads_into_gained_mbt2018():
    torch.manual_seed(0)
    plain = JointAutoregressiveHierarchicalPriors(16, 24)
    with torch.no_grad():
        plain.g_a[-1].weight.mul_(20)
    plain.update(force=True)
    sd = plain.state_dict()
    gained = GainedJointAutoregressive(N=16, M=24, lambdas=LAMBDAS)
    gained.load_backbone_state_dict(sd)
    own = gained.state_dict()
    assert {k for k in own if not k.startswith("gain.")} == set(sd)
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    # through the checkpoint loader too (widths inferred from the state dict)
    via_ckpt = build_from_payload(sd, model="gained-mbt2018")
    assert (via_ckpt.N, via_ckpt.M) == (16, 24)
    # gains at 1: CompressAI's model at every quality (the serial context is
    # evaluated as matrix-vector products instead of convolutions, so equal up
    # to float rounding, not bit for bit)
    gained.update(force=True)
    plain.eval(), gained.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours = gained.compress(x, 2.5)
        theirs = plain.compress(x)
        assert ours["strings"][1] == theirs["strings"][1]
        assert abs(len(ours["strings"][0][0]) - len(theirs["strings"][0][0])) <= 4
        torch.testing.assert_close(
            gained.decompress(ours["strings"], ours["shape"], 3)["x_hat"],
            plain.decompress(theirs["strings"], theirs["shape"])["x_hat"],
            rtol=0,
            atol=1e-4,
        )


def test_checkerboard_keeps_its_mask_when_given_raster_weights():
    plain = JointAutoregressiveHierarchicalPriors(16, 16)
    cb = GainedCheckerboard(N=16, M=16, lambdas=LAMBDAS)
    mask = cb._checkerboard_mask.clone()
    cb.load_backbone_state_dict(plain.state_dict())
    assert torch.equal(cb._checkerboard_mask, mask)
    assert "_checkerboard_mask" not in cb.state_dict()
    # anchors (h + w even) see no context; non-anchors see only anchors
    assert mask[0, 0, 2, 2] == 0 and mask[0, 0, 2, 1] == 1 and mask[0, 0, 1, 1] == 0


@pytest.mark.parametrize("name", CONTEXT + ["cheng2020-attn-gmm"])
def test_checkpoint_roundtrip(tmp_path, name):
    net = cached_model(name) if name in CONTEXT else coding_model(name)
    path = save_checkpoint(net, tmp_path / "m.pt")
    loaded = load_checkpoint(path)
    assert type(loaded) is type(net)
    assert torch.equal(loaded.entropy_parameters[-1].weight, net.entropy_parameters[-1].weight)
    if "cheng2020" in name:
        assert loaded.K == 3
    if gainedvae.is_gained(net):
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            enc = net.compress(x, 2)
            assert torch.equal(
                loaded.decompress(enc["strings"], enc["shape"], 2)["x_hat"],
                net.decompress(enc["strings"], enc["shape"], 2)["x_hat"],
            )


def test_cheng2020_has_M_equal_N():
    assert gainedvae.get_model("gained-cheng2020-attn", N=16, M=16).M == 16
    with pytest.raises(ValueError, match="M = N"):
        gainedvae.get_model("cheng2020-attn-gmm", N=16, M=24)


@pytest.mark.parametrize("name", CONTEXT)
def test_training_forward_and_levels(name):
    net = gainedvae.get_model(name, N=16, M=16, lambdas=LAMBDAS).train()
    x = torch.rand(2, 3, 64, 48)
    out = net(x, level=torch.tensor([0, 3]))
    assert out["x_hat"].shape == x.shape
    bits = sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values())
    (bits + out["x_hat"].square().sum()).backward()
    assert net.entropy_parameters[0].weight.grad.abs().sum() > 0
    assert net.gain.y.log_gain.grad[[0, 3]].abs().sum() > 0
    net.eval()
    with torch.no_grad():
        a, b = net(x[:1], level=1), net(x[:1], quality=2.0)
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])


def test_context_models_validate_inputs():
    net = cached_model("gained-mbt2018-checkerboard")
    with pytest.raises(ValueError, match="quality"):
        net.compress(torch.rand(1, 3, 64, 64), 4.5)
    with pytest.raises(ValueError, match="strings"):
        net.decompress([[b"x"]], (64, 64), 2)
    with pytest.raises(ValueError, match="exactly one"):
        net(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("name", CONTEXT)
def test_corrupt_y_streams_do_not_crash(name):
    net = cached_model(name)
    x = torch.rand(1, 3, 64, 64)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        enc = net.compress(x, 2)
        y = enc["strings"][0][0]
        garbage = [
            b"",
            b"\xff" * 40,
            bytes(torch.randint(0, 256, (len(y),), generator=gen, dtype=torch.uint8).tolist()),
            y[: len(y) // 2],
        ]
        if name == "gained-cheng2020-attn":
            garbage.append(b"\xff\xff" + y[2:])  # GMM header with an absurd window
        for bad in garbage:
            try:
                out = net.decompress([[bad], enc["strings"][1]], enc["shape"], 2)["x_hat"]
            except ValueError:
                continue
            assert out.shape == x.shape


@pytest.mark.parametrize("model,extra", [("cheng2020-attn-gmm", {"lmbda": 0.013}), ("gained-mbt2018", {})])
def test_short_training_run(image_dir, tmp_path, model, extra):
    from gainedvae.train import TrainConfig, train

    config = TrainConfig(
        data=(str(image_dir),), model=model, N=16, M=16, lambdas=(0.01, 0.05), steps=2, batch_size=2, patch_size=32,
        val_size=32, save_every=2, val_every=2, log_every=1, save_dir=str(tmp_path / "run"), lr=1e-3, **extra,
    )
    net = load_checkpoint(train(config, progress=False))
    assert gainedvae.model_name(net) == model
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        if gainedvae.is_gained(net):
            enc = net.compress(x, 1.5)
            assert net.decompress(enc["strings"], enc["shape"], 1.5)["x_hat"].shape == x.shape
        else:
            xp = pad_to_multiple(x, net.downsampling_factor)
            enc = net.compress(xp)
            assert net.decompress(enc["strings"], enc["shape"])["x_hat"].shape == xp.shape


@pytest.mark.parametrize("cls", [GainedJointAutoregressive, GainedCheckerboard])
def test_mean_scale_start_loads_as_the_backbone_context_layers_stay_fresh(cls):
    torch.manual_seed(0)
    start = MeanScaleHyperprior(16, 16)
    net = cls(N=16, M=16, lambdas=LAMBDAS)
    fresh = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("context_prediction.", "entropy_parameters."))}
    net.load_backbone_state_dict(start.state_dict())
    for key, value in start.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    assert fresh and all(torch.equal(net.state_dict()[k], v) for k, v in fresh.items())
    with pytest.raises(KeyError, match="missing"):  # the hyper-synthesis is not optional
        cls(N=16, M=16, lambdas=LAMBDAS).load_backbone_state_dict(
            {k: v for k, v in start.state_dict().items() if not k.startswith("h_s.")})


def test_checkerboard_training_parameters_are_the_two_passes():
    # one network evaluation (context zeroed at the anchors) = pass 1 at the anchors, pass 2 elsewhere
    net = gainedvae.get_model("gained-mbt2018-checkerboard", N=16, M=16, lambdas=LAMBDAS).train()
    y_hat, params = torch.randn(2, 16, 6, 5), torch.randn(2, 32, 6, 5)
    anchors = net._anchors(6, 5, "cpu")
    assert anchors[0, 0] and not anchors[0, 1] and anchors.sum() == 15
    with torch.no_grad():
        got = net._training_params(y_hat, params)
        pass1 = net.entropy_parameters(torch.cat((params, torch.zeros(2, 32, 6, 5)), dim=1))
        pass2 = net.entropy_parameters(torch.cat((params, net._context(torch.where(anchors, y_hat, 0))), dim=1))
        # the non-anchors' parameters see the anchors only
        moved = net._training_params(torch.where(anchors, y_hat, y_hat + 5), params)
    torch.testing.assert_close(got[..., anchors], pass1[..., anchors])
    torch.testing.assert_close(got[..., ~anchors], pass2[..., ~anchors])
    assert not torch.allclose(pass1[..., ~anchors], pass2[..., ~anchors])
    torch.testing.assert_close(moved, got)
