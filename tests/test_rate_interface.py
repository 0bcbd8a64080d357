"""One rate interface (gainedvae.models.rate): the single-rate adapter, the shared base, one code path."""

import pytest
import torch

from conftest import tiny_model
from gainedvae.models import (
    GainedModel,
    GainedMeanScaleHyperprior,
    RateModel,
    SingleRate,
    code,
    get_model,
    is_gained,
    is_variable_rate,
    rate_model,
    takes_qmap,
)


@pytest.fixture(scope="module")
def single():
    torch.manual_seed(0)
    net = get_model("mbt2018-mean", N=16, M=16)
    net.update(force=True)
    return net.eval()


def test_single_rate_adapter_codes_any_size_like_pad_code_crop(single):
    x = torch.rand(1, 3, 50, 70)
    coded = code(single, x)
    assert coded.x_hat.shape == (1, 3, 50, 70) and 0 <= coded.x_hat.min() and coded.x_hat.max() <= 1
    padded = torch.nn.functional.pad(x, (0, 64 - 70 % 64, 0, 64 - 50), mode="replicate")  # 64 x 128
    with torch.no_grad():
        enc = single.compress(padded)
        ref = single.decompress(enc["strings"], enc["shape"])["x_hat"][..., :50, :70]
    assert coded.strings == enc["strings"] and torch.equal(coded.x_hat, ref)
    assert coded.nbytes == sum(len(s) for group in enc["strings"] for s in group) > 0
    assert tuple(enc["shape"]) == (1, 2)  # CompressAI's latent size; the adapter's shape is the image's
    assert SingleRate(single).compress(x)["shape"] == (50, 70)


def test_single_rate_adapter_forward_crops_and_has_one_level(single):
    m = rate_model(single)
    assert isinstance(m, SingleRate) and m.levels == 1 and not takes_qmap(m)
    with torch.no_grad():
        out = m(torch.rand(2, 3, 40, 33), level=0)
    assert out["x_hat"].shape == (2, 3, 40, 33)
    assert out["likelihoods"]["y"].shape[-2:] == (4, 4)  # of the padded 64 x 64 batch
    with pytest.raises(ValueError, match="outside the trained range"):
        m.compress(torch.rand(1, 3, 8, 8), 2.0)


def test_single_rate_adapter_runs_a_wrapper_without_truth_value(single):
    """Training hands the adapter its compiled (or DDP) wrapper: a torch.compile module raises
    on bool(), so the adapter must not test it for truth (it did: the campaign's --compile on
    single-rate runs crashed on their first step)."""
    wrapper = torch.compile(single)
    with pytest.raises(TypeError):
        bool(wrapper)
    calls = []

    class Wrapper:
        def __bool__(self):
            raise TypeError("no truth value")

        def __call__(self, x):
            calls.append(x.shape)
            return single(x)

    m = SingleRate(single, forward=Wrapper())
    with torch.no_grad():
        out = m(torch.rand(1, 3, 40, 33), level=0)
    assert calls == [(1, 3, 64, 64)] and out["x_hat"].shape == (1, 3, 40, 33)
    assert SingleRate(single, forward=wrapper)._forward is wrapper


def test_variable_rate_models_are_their_own_rate_model():
    net = tiny_model()
    assert rate_model(net) is net and isinstance(net, RateModel) and is_variable_rate(net)
    vbr = get_model("mbt2018-mean-vbr", N=16, M=16, lambdas=(0.01, 0.02, 0.04))
    assert rate_model(vbr) is vbr and isinstance(vbr, RateModel) and not is_gained(vbr) and vbr.levels == 3
    for m in (net, vbr):
        assert m.latent_shape((65, 64)) == (2, 1) and m.pad(torch.rand(1, 3, 65, 1)).shape[-2:] == (128, 64)
        assert m.weights_hash is None and m.checkpoint_path is None  # declared, filled by load_checkpoint
    x = torch.rand(1, 3, 40, 56)
    coded = code(net, x, 2.5)
    with torch.no_grad():
        enc = net.compress(x, 2.5)
    assert coded.strings == enc["strings"] and coded.x_hat.shape == x.shape


def test_quality_map_support_is_one_attribute():
    assert takes_qmap(get_model("gained-scgain", N=16, M=16)) and not takes_qmap(tiny_model())
    assert not takes_qmap(get_model("mbt2018-mean", N=16, M=16))


def test_a_family_without_its_y_hooks_cannot_be_built():
    class Incomplete(GainedModel, torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="_y_compress"):
        Incomplete()
    assert issubclass(GainedMeanScaleHyperprior, GainedModel)
