#!/usr/bin/env python3
"""Per-level validation of gained fine-tunes at equal steps (issue 16, section 1: the level recipe).

Reads the ``val_log.jsonl`` of each run (EMA weights, the protocol's 16 validation crops) and prints,
for every step all runs have validated, one markdown row per run: bpp / PSNR per level and the mean
validation loss over the levels (``lambda * 255^2 * MSE + bpp``), then the difference of each run's
per-level loss against the first run (the baseline).

  python results/recipe_levels_table.py runs/protocol/gained-m192-from-10k runs/recipe/levels-sample
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence


def read_val(run: Path) -> Dict[int, List[dict]]:
    """Validation rows of ``run`` by step, sorted by level."""
    log = run / "val_log.jsonl"
    if not log.is_file():
        raise SystemExit(f"{log}: no validation log (expected a training run folder)")
    by_step: Dict[int, List[dict]] = {}
    for line in log.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_step.setdefault(row["step"], []).append(row)
    return {s: sorted(rows, key=lambda r: r.get("level", 0)) for s, rows in by_step.items()}


def table(runs: Sequence[Path]) -> str:
    logs = [read_val(r) for r in runs]
    steps = sorted(set.intersection(*(set(log) for log in logs)))
    if not steps:
        raise SystemExit("the runs have no validated step in common")
    out = ["| step | run | mean loss | loss vs first run, per level | bpp / PSNR per level |", "|---:|---|---:|---|---|"]
    for step in steps:
        base = logs[0][step]
        for run, log in zip(runs, logs):
            rows = log[step]
            mean = sum(r["loss"] for r in rows) / len(rows)
            rel = " ".join(f"{100 * (r['loss'] / b['loss'] - 1):+.1f}%" for r, b in zip(rows, base))
            levels = ", ".join(f"{r['bpp']:.3f} / {r['psnr']:.2f}" for r in rows)
            out.append(f"| {step:,} | {run} | {mean:.3f} | {rel} | {levels} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="training run folders; the first is the baseline")
    args = ap.parse_args(argv)
    print(table(args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
