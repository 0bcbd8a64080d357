"""The report scripts behind results/: rate_targets, peers_report, level_gap, checkerboard_report, training_curves."""

import json

import pytest
import torch

import gainedvae
from conftest import tiny_model

from benchmarks import rate_targets
from results import peers_report


@pytest.fixture
def checkpoints(tmp_path):
    paths = {}
    for key, name in (("gained", "gained-mbt2018-mean"), ("vbr", "mbt2018-mean-vbr"), ("single", "mbt2018-mean")):
        net = tiny_model(name, seed=1) if key == "gained" else gainedvae.get_model(name, N=16, M=16).eval()
        net.update(force=True)
        paths[key] = gainedvae.save_checkpoint(net, tmp_path / f"{key}.pt")
    return paths


def test_rate_targets_counts_hits_within_tolerance(checkpoints, image_dir, tmp_path, capsys):
    out = tmp_path / "targets.json"
    assert rate_targets.main(["--model", str(checkpoints["gained"]), "--single", str(checkpoints["single"]),
                              "-d", str(image_dir), "--max-images", "2", "--targets", "4", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == 2 and res["targets_per_image"] == 4
    rows = res["rows"]
    assert set(rows) == {"gained-mbt2018-mean (gained.pt)", "single-rate set"}
    for row in rows.values():
        assert row["targets"] == 8 and 0 <= row["hits"] <= 8
    # a single-rate model hits a target only where its one bpp is within 1 % of it
    for rec in res["per_image"]:
        lo, hi = rec["range"]
        assert lo > 0 and hi > 0
        single_hits = rec["models"]["single-rate set"]
        assert sum(single_hits) <= len(single_hits)
    assert "targets hit" in capsys.readouterr().out


def test_rate_targets_refuses_a_single_rate_model_as_variable(checkpoints, image_dir):
    with pytest.raises(SystemExit, match="single-rate; pass it with --single"):
        rate_targets.main(["--model", str(checkpoints["single"]), "-d", str(image_dir)])


def test_peers_report_table(checkpoints, image_dir, tmp_path, capsys):
    targets = {"tol": 0.01, "targets_per_image": 4, "images": 2, "rows": {
        "gained-mbt2018-mean (gained.pt)": {"targets": 8, "hits": 8, "encodes": 20},
        "mbt2018-mean-vbr (vbr.pt)": {"targets": 8, "hits": 7, "encodes": 30},
        "single-rate set": {"targets": 8, "hits": 1, "encodes": 0}}, "singles": ["a.pt", "b.pt"]}
    (tmp_path / "t.json").write_text(json.dumps(targets))
    out = tmp_path / "peers.md"
    assert peers_report.main(["--gained", str(checkpoints["gained"]), "--vbr", str(checkpoints["vbr"]),
                              "--single", str(checkpoints["single"]), "-d", str(image_dir), "--max-images", "1",
                              "--repeats", "1", "--bd", str(tmp_path / "missing.json"),
                              "--targets", str(tmp_path / "t.json"), "--out", str(out)]) == 0
    assert "missing.json is missing (BD-rates)" in capsys.readouterr().err  # said, not fatal
    text = out.read_text()
    res = json.loads(out.with_suffix(".json").read_text())
    single = res["rows"]["single"]
    n = sum(p.numel() for p in gainedvae.load_checkpoint(checkpoints["single"]).parameters())
    assert single["parameters"] == n
    assert f"8 x {n / 1e6:.2f} M" in text  # the eight single-rate models the gained model replaces
    assert "| 8 / 8 |" in text and "| 7 / 8 |" in text and "| 1 / 8 (the 2 trained) |" in text
    assert "results/evaluate.sh peers" in text  # the BD table says how to produce it
    for row in res["rows"].values():
        assert row["encode_s"] > 0 and row["decode_s"] > 0 and row["bpp"] > 0 and row["weights_fp16_bytes"] > 0


def test_training_curves_order_runs_with_campaign_tags():
    """results/training_curves.py sorts single-rate runs by lambda, with or without a campaign tag."""
    from results.training_curves import run_order

    names = ["vbr", "single-0.18-m192-from-36k", "gained", "single-0.0018-m192-from-36k", "single-0.013", "pretrain"]
    assert sorted(names, key=run_order) == ["pretrain", "gained", "single-0.0018-m192-from-36k", "single-0.013",
                                            "single-0.18-m192-from-36k", "vbr"]


def _results(bpp, psnr, **extra):
    ms = [p - 10 for p in psnr]
    return {"quality": list(range(1, len(bpp) + 1)), "bpp": bpp, "psnr-rgb": psnr, "ms-ssim-rgb-db": ms, **extra}


def test_level_gap_reads_the_single_rate_curve_at_each_gained_level(tmp_path):
    """A gained curve 0.5 dB under the single-rate one at every bpp: dPSNR -0.5, dRate from the slope."""
    import json
    import math

    from results.level_gap import level_gap, main

    lambdas = [0.0018, 0.0067, 0.025, 0.18]
    sbpp = [0.2, 0.4, 0.8, 1.6]
    singles = {"name": "singles", "results": _results(sbpp, [30 + 10 * math.log10(b) for b in sbpp], **{"lambda": lambdas})}
    gbpp = [0.25, 0.5, 1.0, 2.0]  # the top level past the single-rate range: no interpolated numbers
    gained = {"name": "gained", "lambdas": lambdas,
              "results": _results(gbpp, [29.5 + 10 * math.log10(b) for b in gbpp])}
    gained["results"]["quality"] = [1, 2, 3, 4]
    gap = level_gap(gained, singles)
    rows = gap["levels"]
    assert [r["quality"] for r in rows] == [1, 2, 3, 4] and rows[0]["single_bpp"] == 0.2
    for r in rows[:3]:
        assert abs(r["d_psnr"] - (-0.5)) < 0.02 and abs(r["d_ms_ssim_db"] - (-0.5)) < 0.02
        assert abs(r["d_rate_pct"] - (10 ** 0.05 - 1) * 100) < 0.5  # 0.5 dB at 10 dB per decade of rate
    assert rows[3]["d_psnr"] is None and rows[3]["d_rate_pct"] is None  # 2.0 bpp / 32.5 dB: past both ranges
    assert gap["gained_range_bpp"] == [0.25, 2.0] and gap["singles_range_bpp"] == [0.2, 1.6]

    g, s = tmp_path / "g.json", tmp_path / "s.json"
    g.write_text(json.dumps(gained)), s.write_text(json.dumps(singles))
    assert main([str(g), str(s), "-o", str(tmp_path / "gap.md")]) == 0
    text = (tmp_path / "gap.md").read_text()
    assert "| 1 | 0.0018 | 0.2500 |" in text and "Range: gained 0.250-2.000 bpp" in text
    assert json.loads((tmp_path / "gap.json").read_text())["levels"][0]["quality"] == 1


def test_level_gap_refuses_a_sweep_without_lambdas(tmp_path):
    import json

    import pytest

    from results.level_gap import main

    g, s = tmp_path / "g.json", tmp_path / "s.json"
    g.write_text(json.dumps({"name": "old", "results": _results([0.2, 0.4], [28.0, 30.0])}))
    s.write_text(json.dumps({"name": "s", "results": _results([0.2, 0.4], [28.0, 30.0], **{"lambda": [0.0018, 0.18]})}))
    with pytest.raises(SystemExit, match="old: no 'lambdas' in the gained results"):
        main([str(g), str(s)])
    assert main([str(g), str(s), "--lambdas", "0.0018,0.18"]) == 0


def test_checkerboard_report_table(image_dir, tmp_path):
    """One table: the BD row of bd.json beside interleaved timings of both checkpoints."""
    from results import checkerboard_report

    paths = {}
    for key, name in (("gained", "gained-mbt2018-mean"), ("checkerboard", "gained-mbt2018-checkerboard")):
        net = tiny_model(name, seed=1)
        net.update(force=True)
        paths[key] = gainedvae.save_checkpoint(net, tmp_path / f"{key}.pt")
    bd = {"rows": [{"baseline": "JPEG [anchor, not ours: x.json]", "bd_rate_psnr": -30.0, "bd_psnr": 2.0},
                   {"baseline": "gained-mbt2018-mean", "bd_rate_psnr": -4.25, "bd_psnr": 0.21, "bd_rate_ms_ssim": -3.5}]}
    (tmp_path / "bd.json").write_text(json.dumps(bd))
    out = tmp_path / "cb.md"
    args = ["--checkerboard", str(paths["checkerboard"]), "--gained", str(paths["gained"]), "-d", str(image_dir),
            "--max-images", "1", "--repeats", "1", "--bd", str(tmp_path / "bd.json"), "--out", str(out),
            "--budget", "15,000 steps each"]
    assert checkerboard_report.main(args) == 0
    text = out.read_text()
    assert "15,000 steps each" in text
    row = next(line for line in text.splitlines() if line.startswith("| gained-mbt2018-checkerboard"))
    assert "| -4.25 % | +0.21 dB | -3.50 % |" in row
    res = json.loads(out.with_suffix(".json").read_text())["rows"]
    ratio = res["checkerboard"]["decode_s"] / res["gained"]["decode_s"]
    assert f"| {ratio:.2f} |" in row and res["checkerboard"]["parameters"] > res["gained"]["parameters"]
    with pytest.raises(SystemExit, match="--gained .*nope.pt: no such checkpoint"):
        checkerboard_report.main([*args[:2], "--gained", str(tmp_path / "nope.pt")])


def test_peers_report_says_which_budget():
    """The campaign's table names its widths, steps and run folders; the protocol's keeps its own."""
    row = {"checkpoint": "x.pt", "model": "m", "parameters": 1, "weights_fp16_bytes": 1, "encode_s": 1.0,
           "decode_s": 1.0, "bpp": 1.0}
    result = {"quality": 4.0, "images": 1, "repeats": 1, "threads": 1, "cpu": "cpu", "torch": "t",
              "rows": {"gained": row, "vbr": row, "single": row}}
    campaign = peers_report.markdown(result, None, None, budget="campaign")
    protocol = peers_report.markdown(result, None, None)
    assert "N=64, M=192" in campaign and "15,000 steps after the 100,000-step shared start" in campaign
    assert "--vbr results/campaign/finished/vbr-m192-from-36k.pt" in campaign and "8,000" not in campaign
    assert "--out results/logs/vbr-m192-from-36k/peers.md" in campaign and "qualities 1..8" in campaign
    assert "N=64, M=96" in protocol and "8,000 steps after the 10,000-step shared start" in protocol
    assert "--out results/kodak/peers.md" in protocol and "quality steps of 0.5" in protocol


def test_training_curves_collects_the_recipe(tmp_path):
    """--collect keeps each run's training configuration beside its logs; the budget table shows it."""
    from results import training_curves

    run = tmp_path / "runs" / "gained-m192-from-36k"
    run.mkdir(parents=True)
    (run / "train_log.jsonl").write_text('{"step": 100, "steps_per_s": 2.0}\n{"step": 200, "steps_per_s": 1.0}\n')
    (run / "val_log.jsonl").write_text('{"step": 200, "level": 0, "bpp": 0.3, "psnr": 25.0}\n')
    cfg = {"model": "gained-mbt2018-mean", "N": 64, "M": 192, "batch_size": 8, "patch_size": 128,
           "level_sampling": "sample", "level_weights": [2.0, 0.5], "data": ["secret/path"]}
    torch.save({"train_config": cfg, "state_dict": {}}, run / "ckpt-0000200.pt")
    logs = tmp_path / "logs"
    training_curves.collect(tmp_path / "runs", logs)
    kept = json.loads((logs / run.name / "config.json").read_text())
    assert kept["M"] == 192 and "data" not in kept  # the recipe, not the machine's paths
    other = tmp_path / "runs" / "single-0.0018-m192-from-36k"
    other.mkdir()
    (other / "train_log.jsonl").write_text('{"step": 100, "steps_per_s": 2.0}\n')
    training_curves.main(["--collect", str(tmp_path / "runs"), "--run", other.name, "--no-plot", "--logs", str(tmp_path / "one"),
                          "--out", str(tmp_path / "no.png")])
    assert [p.name for p in (tmp_path / "one").iterdir()] == [other.name] and not (tmp_path / "no.png").exists()
    rows = training_curves.budget_rows(logs)
    assert rows[0]["recipe"] == "gained-mbt2018-mean N=64 M=192, 8 x 128², levels per sample weighted"
    assert rows[0]["step_hours"] == pytest.approx((50 + 100) / 3600)
    assert "| gained-m192-from-36k | gained-mbt2018-mean N=64 M=192" in training_curves.budget_markdown(rows)
    assert training_curves.recipe({**cfg, "quantizer": "ste"}).endswith("levels per sample weighted, quantizer ste")


def test_training_curves_places_continued_fine_tunes_after_their_source():
    """A piece of gained_more continues the previous piece's export: the budget table says so and the
    campaign's step axis puts it after that piece's 15,000 steps (scgain after its gained model's)."""
    from results import training_curves as tc

    start = tc.WIDENED_AT + 36000
    assert tc.campaign_source("gained-ste-m192-from-36k") is None
    assert tc.campaign_source("gained-ste2-m192-from-36k") == "gained-ste-m192-from-36k"
    assert tc.campaign_source("gained-ste3-m192-from-36k") == "gained-ste2-m192-from-36k"
    assert tc.campaign_source("gained-ste5-top-m192-from-36k") == "gained-ste4-m192-from-36k"
    assert tc.campaign_source("gained-ste6-top9-m192-from-36k") == "gained-ste5-top-m192-from-36k"
    assert tc.campaign_source("gained-ste7-top9-m192-from-36k") == "gained-ste6-top9-m192-from-36k"
    assert tc.campaign_source("scgain-gained-m192-from-36k") == "gained-m192-from-36k"
    assert [tc.campaign_offset(n) for n in ("gained-m192-from-36k", "gained-ste-m192-from-36k",
            "gained-ste2-m192-from-36k", "gained-ste3-m192-from-36k", "scgain-gained-m192-from-36k")] == [
        start, start, start + 15000, start + 30000, start + 15000]
    assert tc.campaign_offset("gained") is None and tc.campaign_offset("pretrain-m192") == tc.WIDENED_AT


def test_val_gap_compares_each_level_at_its_last_step(tmp_path):
    import json

    import pytest

    from results.val_gap import main, val_gap

    def run(name, rows):
        d = tmp_path / name
        d.mkdir()
        (d / "val_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return d

    row = lambda step, lam, loss, level=None: dict(step=step, level=level, **{"lambda": lam}, loss=loss, bpp=0.5, psnr=30.0)  # noqa: E731
    gained = run("gained", [row(2, 0.0018, 9.0, 0), row(2, 0.18, 9.0, 1), row(4, 0.0018, 1.05, 0), row(4, 0.18, 2.0, 1)])
    single = run("single-0.0018", [row(2, 0.0018, 5.0), row(4, 0.0018, 1.0)])
    rows = val_gap(gained, [single])
    assert [r["lambda"] for r in rows] == [0.0018, 0.18] and rows[0]["step"] == 4
    assert rows[0]["dloss"] == pytest.approx(0.05) and rows[0]["single_run"] == "single-0.0018"
    assert rows[1]["dloss"] is None  # no single-rate run at lambda 0.18
    assert main([str(gained), str(single), "-o", str(tmp_path / "gap.md")]) == 0
    assert "| 0.0018 | 1.0500 | 0.500 | 30.00 | 1.0000 | 0.500 | 30.00 | +5.00 % |" in (tmp_path / "gap.md").read_text()
    with pytest.raises(SystemExit, match="expected one lambda"):
        val_gap(gained, [gained])


def test_evaluate_sh_takes_committed_exports_first_and_orders_singles_by_lambda(tmp_path):
    """results/evaluate.sh evaluates a run's committed export where there is one (the same file on every
    machine), else the final checkpoint of a finished run; single-rate runs go in by lambda, unfinished ones
    stay out."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    fin, runs = tmp_path / "finished", tmp_path / "runs"
    fin.mkdir()
    for lam in ("0.0250", "0.0035"):
        (fin / f"single-{lam}-m192-from-36k.pt").touch()
    for lam, done in (("0.0130", True), ("0.0035", True), ("0.18", False)):
        (runs / f"single-{lam}-m192-from-36k").mkdir(parents=True)
        if done:
            (runs / f"single-{lam}-m192-from-36k" / "DONE").touch()
    env = {**os.environ, "DRY": "1", "PY": "echo", "FINISHED": str(fin), "RUNS": str(runs)}
    out = subprocess.run(["bash", str(root / "results/evaluate.sh"), "main"], env=env, cwd=root,
                         capture_output=True, text=True, check=True).stdout
    args = out.split()
    assert args[args.index("--step") + 1] == "1"  # the campaign's curves: its trained levels
    base = args[args.index("--baseline") + 1:args.index("--baseline") + 4]
    assert base == [str(fin / "single-0.0035-m192-from-36k.pt"),
                    str(runs / "single-0.0130-m192-from-36k" / "ckpt-0015000.pt"),
                    str(fin / "single-0.0250-m192-from-36k.pt")]
    assert "single-0.18" not in out
    old = subprocess.run(["bash", str(root / "results/evaluate.sh"), "main"], env={**env, "TAG": "", "STEPS": "8000"},
                         cwd=root, capture_output=True, text=True, check=True).stdout.split()
    assert old[old.index("--step") + 1] == "0.5"  # the 8,000-step protocol's published tables


def test_evaluate_sh_sets_the_msssim_model_against_the_mse_model_of_its_budget(tmp_path):
    """results/evaluate.sh msssim: the campaign's MS-SSIM model against the campaign's gained model (its
    committed Kodak JSON), not the 8,000-step protocol's results/kodak JSON; checkpoint where no JSON."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    fin = tmp_path / "finished"
    fin.mkdir()
    (fin / "msssim-m192-from-36k.pt").touch()
    env = {**os.environ, "DRY": "1", "PY": "echo", "FINISHED": str(fin), "RUNS": str(tmp_path / "runs")}

    def baseline(**extra):
        out = subprocess.run(["bash", str(root / "results/evaluate.sh"), "msssim"], env={**env, **extra}, cwd=root,
                             capture_output=True, text=True, check=True).stdout.split()
        return out[out.index("--baseline") + 1]

    json_path = "results/logs/gained-m192-from-36k/kodak-step15000/gained-m192-from-36k-step15000.json"
    assert (root / json_path).is_file()
    assert baseline() == json_path
    assert baseline(STEPS="9999") == str(tmp_path / "runs" / "gained-m192-from-36k" / "ckpt-0009999.pt")


def test_campaign_sh_skips_a_committed_run_and_exports_a_finished_one(tmp_path):
    """results/campaign.sh: a run with a committed export is done on any machine (nothing trains); a run
    that finished here (DONE) without one gets its final checkpoint exported there."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    fin, runs = tmp_path / "finished", tmp_path / "runs"
    fin.mkdir()
    (fin / "vbr-m192-from-36k.pt").touch()
    (runs / "checkerboard-m192-from-36k").mkdir(parents=True)
    (runs / "checkerboard-m192-from-36k" / "DONE").touch()
    env = {**os.environ, "PY": "echo", "FINISHED": str(fin), "RUNS": str(runs)}
    out = subprocess.run(["bash", str(root / "results/campaign.sh"), "vbr", "checkerboard"], env=env, cwd=root,
                         capture_output=True, text=True, check=True).stdout
    assert f"== vbr-m192-from-36k: done (committed export {fin}/vbr-m192-from-36k.pt)" in out
    assert "train_gain.py" not in out  # PY=echo would print a training command line
    assert (f"-m gainedvae export {runs}/checkerboard-m192-from-36k/ckpt-0015000.pt "
            f"-o {fin}/checkerboard-m192-from-36k.pt") in out
    # and its logs are copied beside the export, that run's alone
    assert f"results/training_curves.py --collect {runs} --run checkerboard-m192-from-36k --no-plot" in out
