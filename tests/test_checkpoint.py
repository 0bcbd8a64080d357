import os

import pytest
import torch
from compressai.models import MeanScaleHyperprior

import gainedvae
from gainedvae.checkpoint import CheckpointError, read_checkpoint

from conftest import tiny_model


@pytest.mark.parametrize("half", [False, True])
def test_save_load_roundtrip_codes_identically(tmp_path, half):
    net = tiny_model()
    path = gainedvae.save_checkpoint(net, tmp_path / "m.pt", half=half, note="hello")
    payload = read_checkpoint(path)
    assert payload["model"] == "gained-mbt2018-mean"
    assert payload["config"] == {"N": 16, "M": 16, "lambdas": list(net.lambdas)}
    assert payload["note"] == "hello"
    loaded = gainedvae.load_checkpoint(path)
    assert not loaded.training and loaded.lambdas == net.lambdas
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        enc = loaded.compress(x, 2.5)
        dec = loaded.decompress(enc["strings"], enc["shape"], 2.5)["x_hat"]
        if not half:
            assert enc["strings"] == net.compress(x, 2.5)["strings"]
    assert dec.shape == x.shape
    assert len(loaded.weights_hash) == 64


def test_single_rate_checkpoint_records_lambda(tmp_path):
    net = gainedvae.get_model("mbt2018-mean", N=16, M=16)
    net.lambdas = (0.013,)
    gainedvae.save_checkpoint(net, tmp_path / "s.pt")
    loaded = gainedvae.load_checkpoint(tmp_path / "s.pt")
    assert isinstance(loaded, MeanScaleHyperprior) and loaded.lambdas == (0.013,)


def test_plain_compressai_state_dict_needs_a_name(tmp_path):
    torch.save({"state_dict": MeanScaleHyperprior(16, 24).state_dict()}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="model="):
        gainedvae.load_checkpoint(tmp_path / "c.pt")
    net = gainedvae.load_checkpoint(tmp_path / "c.pt", model="gained-mbt2018-mean")
    assert net.M == 24 and net.levels == 8


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "gainedvae-checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        gainedvae.load_checkpoint(path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        gainedvae.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        gainedvae.load_checkpoint(tmp_path / "junk.pt")


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    net = tiny_model()
    path = gainedvae.save_checkpoint(net, tmp_path / "m.pt")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        gainedvae.save_checkpoint(net, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_export_makes_a_small_weights_only_copy(tmp_path):
    from gainedvae.checkpoint import export_checkpoint, load_checkpoint, save_checkpoint

    net = tiny_model(seed=1)
    src = save_checkpoint(net, tmp_path / "train.pt", step=7, optimizer={"state": {}, "param_groups": []},
                          train_config={"steps": 7})
    out = export_checkpoint(src, tmp_path / "model.pt")
    payload = read_checkpoint(out)
    assert payload["step"] == 7 and payload["train_config"] == {"steps": 7} and "optimizer" not in payload
    params = {k for k, _ in net.named_parameters()}
    for k, v in payload["state_dict"].items():
        if v.is_floating_point():  # parameters in float16, buffers (tiny constants) kept exact
            assert v.dtype == (torch.float16 if k in params else torch.float32), k
    assert float(payload["state_dict"]["gaussian_conditional.likelihood_lower_bound.bound"]) == pytest.approx(1e-9)
    loaded = load_checkpoint(out)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        lik = loaded(x, quality=2)["likelihoods"]
    assert all(float(v.min()) > 0 for v in lik.values())
    for k, v in net.state_dict().items():  # float16 rounding only
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=1e-3, atol=1e-4)
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_current_umask()


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("name", ["gained-mbt2018-mean", "mbt2018-mean", "mbt2018-mean-vbr", "gained-mbt2018"])
def test_every_loaded_model_codes_with_the_fine_scale_table(tmp_path, name):
    from gainedvae.checkpoint import load_checkpoint, save_checkpoint
    from gainedvae.entropy import SCALE_TABLE_LEVELS, scale_table
    from gainedvae.models import is_variable_rate

    net = gainedvae.get_model(name, N=16, M=16)
    if not is_variable_rate(net):
        net.lambdas = (0.013,)
    loaded = load_checkpoint(save_checkpoint(net, tmp_path / "m.pt"))
    table = loaded.gaussian_conditional.scale_table
    assert SCALE_TABLE_LEVELS == 256 and table.numel() == 256
    torch.testing.assert_close(table, scale_table())
    assert loaded.gaussian_conditional._quantized_cdf.size(0) == 256
    if gainedvae.is_gained(net):  # the model's own update() defaults to the same table
        net.update(force=True)
        assert net.gaussian_conditional.scale_table.numel() == 256


# --------------------------------------------------------------------------- issue 18: malformed checkpoints


def _payload(**changes):
    net = tiny_model()
    payload = {"format": "gainedvae-checkpoint", "version": 1, "model": "gained-mbt2018-mean",
               "config": {"N": 16, "M": 16, "lambdas": list(net.lambdas)},
               "state_dict": {k: v.clone() for k, v in net.state_dict().items()}}
    for key, value in changes.items():
        if value is KeyError:
            del payload[key]
        else:
            payload[key] = value
    return payload


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"model": "no-such-model"}, "unknown model 'no-such-model'; expected one of gained-"),
        ({"model": KeyError}, "needs a 'model' entry"),
        ({"state_dict": KeyError}, "needs a 'state_dict' entry"),
        ({"state_dict": [1, 2]}, "'state_dict' must be a dict of tensors, got list"),
        ({"state_dict": {"g_a.0.weight": 3}}, "must map names to tensors, got 'g_a.0.weight': int"),
        ({"version": "abc"}, "checkpoint version must be an integer, got 'abc'"),
        ({"config": "abc"}, "'config' must be a dict, got str"),
        ({"config": {"N": -1, "M": 16}}, "config N must be a positive integer, got -1"),
        ({"config": {"N": 1500, "M": 1500}}, "config says N=1500 but the weights have N=16"),
        ({"config": {"N": 200000, "M": 200000}}, "config says N=200000 but the weights have N=16"),
        ({"config": {"N": 16, "M": 17}}, "config says M=17 but the weights have M=16"),
        ({"config": {"N": 16, "M": 16, "lambdas": "abc"}}, "lambdas must be a list of numbers"),
        ({"config": {"N": 16, "M": 16, "lambdas": [0.1] * 100_000}}, "100000 lambdas, at most 64"),
        ({"config": {"N": 16, "M": 16, "lambdas": [0.2, 0.1]}}, "cannot build model"),
    ],
)
def test_malformed_checkpoints_are_checkpoint_errors(tmp_path, monkeypatch, changes, match):
    """Reported: KeyError / AttributeError / TypeError / ValueError / RuntimeError escaped, and a
    config of N=M=1500 built a 4.1 GB model before the weights were found not to fit."""
    path = tmp_path / "bad.pt"
    torch.save(_payload(**changes), path)
    built = []
    if "cannot build" not in match:
        monkeypatch.setattr("gainedvae.checkpoint.get_model", lambda *a, **k: built.append(1))
    with pytest.raises(CheckpointError, match=match) as info:
        gainedvae.load_checkpoint(path)
    assert str(path) in str(info.value)
    assert len(str(info.value)) < 600
    assert not built  # refused before any model was built


def test_checkpoint_path_that_is_a_directory(tmp_path):
    """Reported: ``--checkpoint DIR`` said "does not exist"."""
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        gainedvae.load_checkpoint(tmp_path)


def test_error_messages_clip_long_lists(tmp_path):
    payload = _payload(config={"N": 16, "M": 16, "lambdas": [float(i % 7) for i in range(60)]})  # not increasing
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="cannot build model") as info:
        gainedvae.load_checkpoint(tmp_path / "c.pt")
    assert len(str(info.value)) < 600 and "characters)" in str(info.value)
