"""CompressAI's variable-rate peer (mbt2018-mean-vbr) behind our interface."""

import json

import pytest
import torch
from compressai.models import MeanScaleHyperprior

import gainedvae
from gainedvae.models import MeanScaleHyperpriorVbr, is_variable_rate
from gainedvae.train import TrainConfig, TrainingError, train


def test_gains_are_compressai_table_and_interpolate_exponentially():
    net = MeanScaleHyperpriorVbr(16, 16)
    expected = torch.tensor([0.10000, 0.13944, 0.19293, 0.26874, 0.37268, 0.51801, 0.71957, 1.00000])
    torch.testing.assert_close(net.Gain.detach(), expected, atol=1e-4, rtol=0)
    g = net.Gain.detach()
    assert float(net.scale_for(torch.tensor(3.0))) == pytest.approx(float(g[2]), rel=1e-6)
    assert float(net.scale_for(torch.tensor(3.5))) == pytest.approx(float((g[2] * g[3]).sqrt()), rel=1e-5)
    assert is_variable_rate(net) and not gainedvae.is_gained(net)


def test_shared_start_from_single_rate_and_roundtrip():
    plain = MeanScaleHyperprior(16, 16)
    net = MeanScaleHyperpriorVbr(16, 16)
    net.load_backbone_state_dict(plain.state_dict())
    assert torch.equal(net.g_a[0].weight, plain.g_a[0].weight)
    assert torch.equal(net.entropy_bottleneck._matrix0, plain.entropy_bottleneck.matrices[0])
    net.eval()
    x = torch.rand(1, 3, 65, 47)
    with torch.no_grad():
        for q in (1, 2.5, 8):
            enc = net.compress(x, q)
            dec = net.decompress(enc["strings"], enc["shape"], q)["x_hat"]
            assert dec.shape == x.shape
            assert torch.equal(dec, net(x, quality=q)["x_hat"].clamp(0, 1))
    with pytest.raises(ValueError, match="quality"):
        net.compress(x, 8.5)


def test_two_step_vbr_run_is_evaluated_at_fractional_quality(image_dir, tmp_path):
    single = train(TrainConfig(data=(str(image_dir),), model="mbt2018-mean", lmbda=0.18, N=16, M=16, steps=2,
                               batch_size=2, patch_size=64, val_size=64, save_dir=str(tmp_path / "s")), progress=False)
    cfg = TrainConfig(data=(str(image_dir),), model="mbt2018-mean-vbr", N=16, M=16, steps=2, batch_size=2,
                      patch_size=64, val_size=64, save_every=2, val_every=2, init=str(single),
                      save_dir=str(tmp_path / "v"))
    final = train(cfg, progress=False)
    val = [json.loads(ln) for ln in (tmp_path / "v" / "val_log.jsonl").read_text().splitlines()]
    assert len(val) == 8
    net = gainedvae.load_checkpoint(final)
    assert isinstance(net, MeanScaleHyperpriorVbr) and net.levels == 8
    from eval_gain import main

    out = tmp_path / "eval"
    assert main(["--checkpoint", str(final), "-d", str(image_dir), "--max-images", "1", "--step", "2.5",
                 "--output-dir", str(out), "--no-progress"]) == 0
    res = json.loads((out / "mbt2018-mean-vbr.json").read_text())["results"]
    assert 3.5 in res["quality"] and all(b > 0 for b in res["bpp"])
    with pytest.raises(TrainingError, match="one level per batch"):
        train(TrainConfig(data=(str(image_dir),), model="mbt2018-mean-vbr", level_sampling="sample",
                          save_dir=str(tmp_path / "w")), progress=False)


@pytest.mark.slow
def test_compiled_vbr_training_gives_the_eager_losses(image_dir, tmp_path):
    """Reported: ``--compile on`` failed at the first step ("permute(): duplicate dims are not
    allowed", dynamo tracing the numpy permutation swap in CompressAI's EntropyBottleneckVbr)."""
    def run(mode):
        cfg = TrainConfig(data=(str(image_dir),), model="mbt2018-mean-vbr", N=16, M=16, steps=3, batch_size=2,
                          patch_size=64, val_size=64, val_every=100, log_every=1, compile=mode,
                          save_dir=str(tmp_path / mode))
        train(cfg, progress=False)
        return [json.loads(ln)["loss"] for ln in (tmp_path / mode / "train_log.jsonl").read_text().splitlines()]

    eager, comp = run("off"), run("on")
    assert len(eager) == len(comp) == 3
    assert comp == pytest.approx(eager, rel=1e-4)


def test_checkpoint_saved_after_update_loads_and_codes_the_same(tmp_path):
    net = gainedvae.get_model("mbt2018-mean-vbr", N=16, M=16).eval()
    net.update(force=True)  # fills the variable-rate bottleneck's tables (CompressAI left them unloadable)
    path = gainedvae.save_checkpoint(net, tmp_path / "vbr.pt")
    back = gainedvae.load_checkpoint(path)
    x = torch.rand(1, 3, 64, 48)
    a, b = net.compress(x, 2.5), back.compress(x, 2.5)
    assert a["strings"] == b["strings"]
