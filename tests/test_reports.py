"""The scripts behind results/kodak/peers.md: rate_targets.py and peers_report.py."""

import json

import pytest

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
