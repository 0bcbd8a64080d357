import json

import pytest
import torch
from torch import nn

import gainedvae
from gainedvae.checkpoint import export_checkpoint, read_checkpoint
from gainedvae.ema import WeightEMA, ema_decay_at
from gainedvae.train import TrainConfig, train


def test_decay_schedule_pinned():
    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.999, 8991) == pytest.approx(0.999)  # (1 + n) / (10 + n) reaches the decay here
    assert ema_decay_at(0.999, 10**6) == 0.999


def test_average_follows_the_formula_and_swaps_back():
    net = nn.Linear(3, 2)
    ema = WeightEMA(net, 0.5)
    a = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)  # d_1 = min(0.5, 2/11)
    d = 2 / 11
    torch.testing.assert_close(ema.shadow["weight"], d * a + (1 - d) * (a + 1))
    live = net.weight.detach().clone()
    ema.swap(net)
    torch.testing.assert_close(net.weight.detach(), d * a + (1 - d) * (a + 1))
    ema.swap(net)
    torch.testing.assert_close(net.weight.detach(), live)


def test_load_refuses_a_foreign_state():
    ema = WeightEMA(nn.Linear(3, 2), 0.9)
    with pytest.raises(ValueError, match="shape"):
        ema.load(WeightEMA(nn.Linear(4, 2), 0.9).save())
    with pytest.raises(ValueError, match="missing"):
        ema.load(WeightEMA(nn.Linear(3, 2, bias=False), 0.9).save())
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(nn.Linear(3, 2), 1.0)


def _cfg(data, save_dir, **kw):
    base = dict(data=(str(data),), N=16, M=16, lambdas=(0.01, 0.05), steps=4, batch_size=2, patch_size=32,
                val_size=32, save_every=2, val_every=2, log_every=1, save_dir=str(save_dir), lr=1e-3, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def test_training_keeps_validates_and_exports_the_average(image_dir, tmp_path):
    final = train(_cfg(image_dir, tmp_path / "run"), progress=False)
    payload = read_checkpoint(final)
    assert payload["ema"]["updates"] == 4
    raw = payload["state_dict"]["g_a.0.weight"]
    avg = payload["ema"]["shadow"]["g_a.0.weight"]
    assert not torch.equal(raw, avg)
    # loading and exporting use the average unless asked for the raw weights
    torch.testing.assert_close(gainedvae.load_checkpoint(final).g_a[0].weight.detach(), avg)
    torch.testing.assert_close(gainedvae.load_checkpoint(final, weights="raw").g_a[0].weight.detach(), raw)
    out = export_checkpoint(final, tmp_path / "m.pt", half=False)
    exported = read_checkpoint(out)
    assert exported["weights"] == "ema" and "ema" not in exported
    torch.testing.assert_close(exported["state_dict"]["g_a.0.weight"], avg)
    assert gainedvae.load_checkpoint(final).weights_hash != gainedvae.load_checkpoint(final, weights="raw").weights_hash
    val = [json.loads(ln) for ln in (tmp_path / "run" / "val_log.jsonl").read_text().splitlines()]
    assert all(r["weights"] == "ema" and {"raw_loss", "raw_psnr", "raw_bpp", "raw_mse"} <= set(r) for r in val)
    assert any(r["raw_loss"] != r["loss"] for r in val)


def test_resume_restores_the_average_exactly(image_dir, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(_cfg(image_dir, full, steps=6, save_every=3, keep=5), progress=False)
    train(_cfg(image_dir, part, steps=6, save_every=3, keep=5), progress=False)
    (part / "ckpt-0000006.pt").unlink()
    train(_cfg(image_dir, part, steps=6, save_every=3, keep=5), resume="latest", progress=False)
    a, b = (read_checkpoint(d / "ckpt-0000006.pt")["ema"] for d in (full, part))
    assert a["updates"] == b["updates"] == 6
    for k in a["shadow"]:
        torch.testing.assert_close(a["shadow"][k], b["shadow"][k], rtol=1e-5, atol=1e-6)


def test_resuming_a_run_without_average_starts_one(image_dir, tmp_path):
    train(_cfg(image_dir, tmp_path / "r", steps=4, ema_decay=0.0), progress=False)
    (tmp_path / "r" / "ckpt-0000004.pt").unlink()
    final = train(_cfg(image_dir, tmp_path / "r", steps=4), resume="latest", progress=False)
    assert read_checkpoint(final)["ema"]["updates"] == 2
    no_avg = read_checkpoint(tmp_path / "r" / "ckpt-0000002.pt")
    assert "ema" not in no_avg


def test_cli_export_chooses_the_weights(image_dir, tmp_path, capsys):
    from gainedvae.cli import main

    final = train(_cfg(image_dir, tmp_path / "run", steps=2), progress=False)
    payload = read_checkpoint(final)
    for which, ref in (("ema", payload["ema"]["shadow"]), ("raw", payload["state_dict"])):
        out = tmp_path / f"{which}.pt"
        assert main(["export", str(final), "-o", str(out), "--float32", "--weights", which]) == 0
        assert f"{which} weights" in capsys.readouterr().out
        torch.testing.assert_close(read_checkpoint(out)["state_dict"]["g_a.0.weight"], ref["g_a.0.weight"])
