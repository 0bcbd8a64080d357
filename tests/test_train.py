import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gainedvae
from gainedvae.data import DataError, PatchDataset, StepBatchSampler, split_dataset
from gainedvae.train import TrainConfig, TrainingError, compile_plan, train

ROOT = Path(__file__).resolve().parents[1]


def cfg(data, save_dir, **kw):
    base = dict(
        data=(str(data),), N=16, M=16, lambdas=(0.01, 0.05), steps=4, batch_size=2, patch_size=32,
        val_size=32, save_every=2, val_every=2, log_every=1, save_dir=str(save_dir), lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_short_run_writes_loadable_checkpoint_and_logs(image_dir, tmp_path):
    final = train(cfg(image_dir, tmp_path / "run", log_images=True), progress=False)
    assert final.name == "ckpt-0000004.pt"
    net = gainedvae.load_checkpoint(final)
    assert net.lambdas == (0.01, 0.05) and not net.training
    assert (net.gain.y.gains[1] > net.gain.y.gains[0]).all()  # levels spread from the start
    x = torch.rand(1, 3, 40, 40)
    enc = net.compress(x, 1.5)
    assert net.decompress(enc["strings"], enc["shape"], 1.5)["x_hat"].shape == x.shape
    val = [json.loads(ln) for ln in (tmp_path / "run" / "val_log.jsonl").read_text().splitlines()]
    assert {(r["step"], r["level"]) for r in val} == {(2, 0), (2, 1), (4, 0), (4, 1)}
    assert all(set(r) >= {"step", "level", "lambda", "loss", "bpp", "psnr"} for r in val)
    assert (tmp_path / "run" / "best.pt").exists()
    assert len(list((tmp_path / "run" / "images").glob("*.png"))) == 4
    train_log = [json.loads(ln) for ln in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train_log] == [1, 2, 3, 4]


def test_resume_continues_bit_identically(image_dir, tmp_path):
    full = tmp_path / "full"
    train(cfg(image_dir, full, steps=6, save_every=3, keep=5), progress=False)
    part = tmp_path / "part"
    train(cfg(image_dir, part, steps=6, save_every=3, keep=5), progress=False)
    # simulate a run killed after step 3: drop later checkpoints, then resume
    (part / "ckpt-0000006.pt").unlink()
    train(cfg(image_dir, part, steps=6, save_every=3, keep=5), resume="latest", progress=False)
    a = [json.loads(ln) for ln in (full / "train_log.jsonl").read_text().splitlines()]
    b = [json.loads(ln) for ln in (part / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a[3:], b[3:]):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6, abs=1e-6)
    sa = gainedvae.read_checkpoint(full / "ckpt-0000006.pt")["state_dict"]
    sb = gainedvae.read_checkpoint(part / "ckpt-0000006.pt")["state_dict"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


def test_resume_refuses_a_different_run(image_dir, tmp_path):
    train(cfg(image_dir, tmp_path / "r", steps=2), progress=False)
    with pytest.raises(TrainingError, match="lambdas"):
        train(cfg(image_dir, tmp_path / "r", steps=2, lambdas=(0.01, 0.02)), resume="latest", progress=False)


def test_single_rate_path(image_dir, tmp_path):
    final = train(cfg(image_dir, tmp_path / "s", model="mbt2018-mean", lmbda=0.013), progress=False)
    net = gainedvae.load_checkpoint(final)
    assert type(net).__name__ == "MeanScaleHyperprior" and net.lambdas == (0.013,)
    with pytest.raises(TrainingError, match="--lambda"):
        train(cfg(image_dir, tmp_path / "s2", model="mbt2018-mean"), progress=False)


def test_shared_start_initialises_gains(image_dir, tmp_path):
    single = train(cfg(image_dir, tmp_path / "s", model="mbt2018-mean", lmbda=0.05, steps=2), progress=False)
    c = cfg(image_dir, tmp_path / "g", steps=1, init=str(single), lr=0.0, aux_lr=0.0)
    final = train(c, progress=False)
    g = gainedvae.read_checkpoint(final)["state_dict"]
    s = gainedvae.read_checkpoint(single)
    # --init starts from the source's moving average (its "ema" shadow), not its raw weights
    torch.testing.assert_close(g["g_a.0.weight"], s["ema"]["shadow"]["g_a.0.weight"])
    assert not torch.equal(g["g_a.0.weight"], s["state_dict"]["g_a.0.weight"])
    torch.testing.assert_close(g["gain.y.log_gain"][:, 0], 0.5 * torch.log(torch.tensor([0.01 / 0.05, 1.0])))


def test_mse_start_of_an_ms_ssim_model_starts_its_top_level_as_the_start(image_dir, tmp_path):
    """MS-SSIM lambdas are not on the MSE start's scale: the top level gets gain 1 (the start),
    the others their ratio to it (not sqrt(lambda / 0.05) of the MSE lambda)."""
    big = tmp_path / "big"
    big.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):  # MS-SSIM's 5 scales need patches of at least 161 pixels
        Image.fromarray((255 * rng.random((176, 176, 3))).astype("uint8")).save(big / f"b{i}.png")
    single = train(cfg(image_dir, tmp_path / "s", model="mbt2018-mean", lmbda=0.05, steps=2), progress=False)
    c = cfg(big, tmp_path / "m", steps=1, init=str(single), lr=0.0, aux_lr=0.0, metric="ms-ssim", lambdas=(4.0, 16.0),
            patch_size=176, val_size=176, batch_size=1)
    g = gainedvae.read_checkpoint(train(c, progress=False))["state_dict"]
    torch.testing.assert_close(g["gain.y.log_gain"][:, 0], 0.5 * torch.log(torch.tensor([4.0 / 16.0, 1.0])))


def test_per_sample_level_sampling(image_dir, tmp_path, monkeypatch):
    """--level-sampling sample: each sample of a batch draws its own level (a function of seed and
    step), the training forward gets them as a (B,) tensor, and the run logs finite losses."""
    import gainedvae.train as T

    per_sample = cfg(image_dir, tmp_path / "p", lambdas=(0.01, 0.02, 0.05, 0.1), batch_size=4, level_sampling="sample")
    draws = [T.sample_levels(per_sample, step, 4, 4) for step in range(20)]
    assert all(d.shape == (4,) and 0 <= int(d.min()) and int(d.max()) < 4 for d in draws)
    assert sum(len(set(d.tolist())) > 1 for d in draws) >= 15  # mixed levels within a batch
    assert torch.equal(T.sample_levels(per_sample, 7, 4, 4), draws[7])  # resumable: same draw for a step
    assert T.sample_levels(cfg(image_dir, tmp_path, level_sampling="batch"), 7, 4, 4).shape == ()

    seen = []
    forward = T.model_forward

    def spy(net, x, level, qmap=None):
        if net.training:
            seen.append(level.tolist() if isinstance(level, torch.Tensor) else level)
        return forward(net, x, level, qmap)

    monkeypatch.setattr(T, "model_forward", spy)
    final = train(per_sample, progress=False)
    assert final.name == "ckpt-0000004.pt"
    assert seen == [draws[step].tolist() for step in range(4)]
    log = [json.loads(ln) for ln in (tmp_path / "p" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(math.isfinite(r[k]) for r in log for k in ("loss", "bpp", "mse", "psnr"))


def test_nan_loss_stops_with_clear_message(image_dir, tmp_path, monkeypatch):
    import gainedvae.train as T

    real = T.rate_distortion
    calls = {"n": 0}

    def poisoned(out, x, lmbda, metric="mse", weight=None):
        r = real(out, x, lmbda, metric, weight)
        calls["n"] += 1
        if calls["n"] == 3:
            r["loss"] = r["loss"] * float("nan")
        return r

    monkeypatch.setattr(T, "rate_distortion", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite loss .* step 2.*ckpt-0000002.pt"):
        train(cfg(image_dir, tmp_path / "n", val_every=100), progress=False)
    assert (tmp_path / "n" / "ckpt-0000002.pt").exists()


def test_bad_data_paths(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        split_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        split_dataset(tmp_path / "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("x")
    with pytest.raises(DataError, match=str(tmp_path / "txt")):
        split_dataset(tmp_path / "txt")


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["missing", "empty"])
def test_cli_reports_bad_data(tmp_path, bad):
    if bad == "empty":
        (tmp_path / bad).mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "train_gain.py"), "-d", str(tmp_path / bad), "--steps", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert str(tmp_path / bad) in r.stderr and "Traceback" not in r.stderr


def test_splits_tar_and_train_val_folders(image_dir, tmp_path):
    train_imgs, val_imgs = split_dataset(image_dir, val_split=0.34)
    assert len(train_imgs) == 4 and len(val_imgs) == 2
    assert split_dataset(image_dir, val_split=0.34) == (train_imgs, val_imgs)  # deterministic
    tar = tmp_path / "imgs.tar"
    with tarfile.open(tar, "w") as t:
        for p in sorted(image_dir.iterdir()):
            t.add(p, arcname=f"sub/{p.name}")
    tt, tv = split_dataset(tar, val_split=0.34)
    assert len(tt) == 4 and len(tv) == 2 and isinstance(tt[0], tuple)
    assert PatchDataset(tt, 32)[(0, 1)].shape == (3, 32, 32)
    layout = tmp_path / "layout"
    (layout / "train").mkdir(parents=True)
    (layout / "val").mkdir()
    for i, p in enumerate(sorted(image_dir.iterdir())):
        (layout / ("val" if i == 0 else "train") / p.name).write_bytes(p.read_bytes())
    lt, lv = split_dataset(layout)
    assert len(lt) == 5 and len(lv) == 1


def test_small_images_are_padded_not_crashing(image_dir):
    imgs, _ = split_dataset(image_dir, val_split=0)
    ds = PatchDataset(imgs, patch_size=128)
    for i in range(len(ds)):
        assert ds[(i, 7)].shape == (3, 128, 128)


def test_sampler_shards_are_disjoint():
    a = StepBatchSampler(20, 4, steps=2, seed=3, rank=0, world_size=2)
    b = StepBatchSampler(20, 4, steps=2, seed=3, rank=1, world_size=2)
    for step in range(2):
        assert not set(a.batch_indices(step)) & set(b.batch_indices(step))
    assert list(StepBatchSampler(20, 4, steps=3, seed=3, start_step=1)) == list(StepBatchSampler(20, 4, steps=3, seed=3))[1:]


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(image_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
         str(ROOT / "train_gain.py"), "-d", str(image_dir), "-N", "16", "-M", "16", "--lambdas", "0.01,0.05",
         "--steps", "2", "--batch-size", "2", "--patch-size", "32", "--val-size", "32", "--save-dir",
         str(tmp_path / "ddp"), "--no-progress", "--save-every", "2", "--val-every", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert gainedvae.load_checkpoint(tmp_path / "ddp" / "ckpt-0000002.pt").levels == 2


@pytest.mark.parametrize("kind", ["asymmetric", "gmm"])
def test_entropy_model_option_is_trained_and_recorded(image_dir, tmp_path, kind):
    final = train(cfg(image_dir, tmp_path / kind, steps=2, entropy_model=kind), progress=False)
    assert gainedvae.read_checkpoint(final)["config"]["entropy_model"] == kind
    net = gainedvae.load_checkpoint(final)
    assert net.entropy_model == kind
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():  # eval mode without gradients: forward uses the coder's entropy parameters
        enc = net.compress(x, 1.5)
        assert torch.equal(net.decompress(enc["strings"], enc["shape"], 1.5)["x_hat"], net(x, quality=1.5)["x_hat"].clamp(0, 1))
    with pytest.raises(TrainingError, match="does not take"):
        train(cfg(image_dir, tmp_path / "x", model="mbt2018-mean", lmbda=0.01, entropy_model=kind), progress=False)


@pytest.mark.parametrize(
    "kw,device,steps_left,expect",
    [
        ({}, "cpu", 8000, True),
        ({}, "cpu", 100, False),  # too short to repay the compilation
        ({}, "cuda", 8000, False),  # not measured there
        ({"model": "gained-mbt2018"}, "cpu", 8000, False),
        ({"entropy_model": "gmm"}, "cpu", 8000, False),
        ({"compile": "on"}, "cpu", 1, True),
        ({"compile": "off"}, "cpu", 8000, False),
    ],
)
def test_compile_plan(kw, device, steps_left, expect, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    use, why = compile_plan(TrainConfig(data=("x",), **kw), torch.device(device), steps_left)
    assert use is expect and why


def test_compile_plan_needs_a_compiler_and_a_valid_choice(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    use, why = compile_plan(TrainConfig(data=("x",)), torch.device("cpu"), 8000)
    assert not use and "compiler" in why
    with pytest.raises(TrainingError, match="--compile"):
        compile_plan(TrainConfig(data=("x",), compile="yes"), torch.device("cpu"), 8000)


@pytest.mark.slow
def test_compiled_training_gives_the_eager_losses(image_dir, tmp_path):
    """torch.compile with the training noise from torch's generator: same losses as eager; the
    compile settings stay with the compiled module (the process-wide config is unchanged)."""
    import torch._dynamo
    import torch._inductor.config

    settings = lambda: (torch._inductor.config.fallback_random, torch._dynamo.config.suppress_errors)  # noqa: E731
    before = settings()
    eager = train(cfg(image_dir, tmp_path / "eager", steps=3, val_every=100, compile="off"), progress=False)
    comp = train(cfg(image_dir, tmp_path / "comp", steps=3, val_every=100, compile="on"), progress=False)
    assert settings() == before
    a = [json.loads(ln)["loss"] for ln in (eager.parent / "train_log.jsonl").read_text().splitlines()]
    b = [json.loads(ln)["loss"] for ln in (comp.parent / "train_log.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=1e-4)


_COMPILE_FAILS = """
import torch, torch._dynamo, torch._inductor.config
from gainedvae.train import compiled
m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
x = torch.rand(2, 4)
assert torch.equal(compiled(m)(x), m(x))  # no working C++ compiler: the call runs eagerly
assert not torch._dynamo.config.suppress_errors and not torch._inductor.config.fallback_random
"""


@pytest.mark.slow
def test_a_compilation_failure_falls_back_to_eager(tmp_path):
    """suppress_errors holds inside the compiled call (and only there): a process without a
    working C++ compiler gets the eager result, not an error."""
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _COMPILE_FAILS], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


# --------------------------------------------------------------------------- issue 18: interrupted runs, bad images


def _quiet_train(*args, **kwargs):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_temp_files_of_killed_checkpoint_writes_are_removed(image_dir, tmp_path):
    """Reported: kill -9 during a checkpoint write left 0-byte .ckpt-*.pt.*.tmp / .best.pt.*.tmp files."""
    run = tmp_path / "run"
    run.mkdir()
    for name in (".ckpt-0000002.pt.k3j9x1.tmp", ".best.pt.a8b7c6.tmp"):
        (run / name).write_bytes(b"")
    (run / "notes.tmp").write_text("mine")  # not a checkpoint temp file: kept
    _, warned = _quiet_train(cfg(image_dir, run, steps=2), progress=False)
    assert not list(run.glob(".*.tmp")) and (run / "notes.tmp").exists()
    assert any("removed 2 temporary file(s) of an interrupted checkpoint write" in w for w in warned), warned


def test_resume_drops_a_torn_last_log_line(image_dir, tmp_path):
    """Reported: a torn last line of train_log.jsonl blocked --resume with "Expecting ',' delimiter"."""
    run = tmp_path / "run"
    train(cfg(image_dir, run, steps=4, save_every=2, keep=5), progress=False)
    (run / "ckpt-0000004.pt").unlink()
    with open(run / "train_log.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # killed while appending
    _, warned = _quiet_train(cfg(image_dir, run, steps=4, save_every=2, keep=5), resume="latest", progress=False)
    assert any("train_log.jsonl: dropping its torn last line 5" in w for w in warned), warned
    assert [json.loads(ln)["step"] for ln in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_names_a_corrupt_log_line(image_dir, tmp_path):
    run = tmp_path / "run"
    train(cfg(image_dir, run, steps=2, save_every=2), progress=False)
    lines = (run / "train_log.jsonl").read_text().splitlines()
    (run / "train_log.jsonl").write_text(lines[0] + "\n" + "garbage{\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(TrainingError, match=r"train_log.jsonl: line 2 is not a valid log record"):
        train(cfg(image_dir, run, steps=2, save_every=2), resume="latest", progress=False)


def test_unreadable_images_are_skipped_with_a_count(image_dir, tmp_path):
    """Reported: one corrupt, truncated or 0-byte image stopped the run at step 0 (also a
    truncated JPEG picked as validation image)."""
    from PIL import Image

    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    for p in sorted(image_dir.iterdir()):
        (root / "train" / p.name).write_bytes(p.read_bytes())
    (root / "train" / "empty.png").write_bytes(b"")
    (root / "train" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    jpeg = tmp_path / "full.jpg"
    Image.new("RGB", (64, 64), (90, 20, 200)).save(jpeg, quality=90)
    (root / "train" / "cut.jpg").write_bytes(jpeg.read_bytes()[:300])
    (root / "val" / "cut.jpg").write_bytes(jpeg.read_bytes()[:300])
    (root / "val" / "ok.png").write_bytes((image_dir / "img0.png").read_bytes())
    final, warned = _quiet_train(cfg(root, tmp_path / "run", steps=6, batch_size=4, save_every=6, val_every=6), progress=False)
    assert final.name == "ckpt-0000006.pt"
    train_warnings = [w for w in warned if "unreadable training image" in w]
    assert train_warnings and all("of 9 unreadable so far" in w for w in train_warnings)
    assert {w.split("cannot read image ")[1].split(":")[0].rsplit("/", 1)[1] for w in train_warnings} <= {"empty.png", "garbage.png", "cut.jpg"}
    assert any("unreadable validation image (1 of 2 so far)" in w and "cut.jpg" in w for w in warned), warned
    val = [json.loads(ln) for ln in (tmp_path / "run" / "val_log.jsonl").read_text().splitlines()]
    assert len(val) == 2  # the readable validation image, both levels


def test_a_skipped_image_is_replaced_deterministically(image_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    images = [str(p) for p in sorted(image_dir.iterdir())]
    refs = images[:2] + [str(bad)] + images[2:]
    with pytest.warns(UserWarning, match=r"\(1 of 7 unreadable so far\)"):
        a = PatchDataset(refs, patch_size=32)[(2, 11)]
    b = PatchDataset(images, patch_size=32)[(2, 11)]  # the next readable image, same crop
    assert torch.equal(a, b)
    with pytest.raises(DataError, match="none of the 1 training images"):
        with pytest.warns(UserWarning):
            PatchDataset([str(bad)], patch_size=32)[0]


def test_level_weights_weight_the_objective_not_the_logged_loss():
    """rate_distortion with per-sample weights: ``objective`` is the weighted mean that training
    minimises, ``loss`` stays the plain mean of the per-sample RD losses."""
    from gainedvae.train import rate_distortion

    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 16)
    out = {"x_hat": x + 0.05 * torch.randn_like(x), "likelihoods": {"y": torch.rand(3, 4, 2, 2).clamp_min(0.05)}}
    lmbda = torch.tensor([0.01, 0.05, 0.1])
    plain = rate_distortion(out, x, lmbda)
    assert "objective" not in plain
    w = torch.tensor([2.0, 1.0, 0.5])
    weighted = rate_distortion(out, x, lmbda, weight=w)
    bpp = -torch.log2(out["likelihoods"]["y"]).flatten(1).sum(1) / 256
    per_sample = lmbda * 255.0**2 * (out["x_hat"] - x).pow(2).flatten(1).mean(1) + bpp
    torch.testing.assert_close(weighted["loss"], per_sample.mean())
    torch.testing.assert_close(weighted["objective"], (w * per_sample).mean())
    torch.testing.assert_close(rate_distortion(out, x, lmbda, weight=torch.tensor(3.0))["objective"], 3 * per_sample.mean())


def test_level_weights_change_the_training_and_are_checked(image_dir, tmp_path):
    """--level-weights: a run with weights takes other steps than one without (same seed), keeps
    them in its config (a resume with other weights is refused), and bad weights are refused."""
    import gainedvae.train as T

    base = dict(lambdas=(0.01, 0.05), steps=2, level_sampling="sample", batch_size=4)
    plain = gainedvae.read_checkpoint(train(cfg(image_dir, tmp_path / "a", **base), progress=False))
    heavy = gainedvae.read_checkpoint(train(cfg(image_dir, tmp_path / "b", level_weights=(1.0, 4.0), **base),
                                            progress=False))
    assert heavy["train_config"]["level_weights"] == (1.0, 4.0)
    assert not torch.equal(plain["state_dict"]["g_a.0.weight"], heavy["state_dict"]["g_a.0.weight"])
    with pytest.raises(TrainingError, match="level_weights"):
        train(cfg(image_dir, tmp_path / "b", level_weights=(1.0, 2.0), **{**base, "steps": 3}), resume="latest",
              progress=False)
    for weights, match in [((1.0,), r"one weight per lambda \(2\), got 1"), ((1.0, 0.0), "positive"),
                           ((1.0, float("inf")), "positive and finite")]:
        with pytest.raises(TrainingError, match=match):
            T.level_weight_tensor(cfg(image_dir, tmp_path, level_weights=weights), 2)
    with pytest.raises(TrainingError, match="variable-rate"):
        T.level_weight_tensor(cfg(image_dir, tmp_path, model="mbt2018-mean", lmbda=0.05, level_weights=(1.0,)), 1)
    assert T.level_weight_tensor(cfg(image_dir, tmp_path), 2) is None


def test_quantizer_option_is_recorded_and_refused_where_unsupported(image_dir, tmp_path):
    final = train(cfg(image_dir, tmp_path / "ste", steps=2, quantizer="ste"), progress=False)
    assert gainedvae.read_checkpoint(final)["train_config"]["quantizer"] == "ste"
    with pytest.raises(TrainingError, match="the run was started with quantizer=ste"):
        train(cfg(image_dir, tmp_path / "ste", steps=2), resume="latest", progress=False)
    with pytest.raises(TrainingError, match="--quantizer ste: mbt2018-mean trains with noise only"):
        train(cfg(image_dir, tmp_path / "s", model="mbt2018-mean", lmbda=0.01, quantizer="ste"), progress=False)
