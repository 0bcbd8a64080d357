#!/usr/bin/env python3
"""The level gap on the training objective: a gained run against single-rate runs (issue 21).

For every level of the gained run, its validation row at the last validated step (``val_log.jsonl``:
``loss = lambda * 255^2 * MSE + bpp`` on the protocol's validation crops, EMA weights) beside the
last validation row of the single-rate run trained at the same lambda; ``dLoss`` is the gained
loss over the single-rate loss, minus 1 (%; > 0 = the gained level optimises its own objective
less well). Unlike the Kodak gap (``level_gap.py``) it needs no coding and compares each level
at its own lambda, so it says how far the shared network is from each single-rate optimum.

  python results/val_gap.py runs/protocol/gained-m192-from-36k runs/protocol/single-*-m192-from-36k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gainedvae.atomic import atomic_write_bytes  # noqa: E402
from results.training_curves import read_jsonl  # noqa: E402  (skips a running run's torn last line)


def last_rows(run: Path) -> Dict[float, dict]:
    """The rows of ``run/val_log.jsonl`` at its last step, keyed by lambda."""
    log = run / "val_log.jsonl"
    if not log.is_file():
        raise SystemExit(f"{run}: no val_log.jsonl")
    rows = read_jsonl(log)
    if not rows:
        raise SystemExit(f"{log}: empty")
    last = max(r["step"] for r in rows)
    return {float(r["lambda"]): r for r in rows if r["step"] == last}


def val_gap(gained: Path, singles: Sequence[Path]) -> List[dict]:
    """One row per gained level; the single-rate columns are None without a run of that lambda."""
    by_lambda: Dict[float, dict] = {}
    for run in singles:
        rows = last_rows(run)
        if len(rows) != 1:
            raise SystemExit(f"{run}: expected one lambda (a single-rate run), got {len(rows)}")
        (lam, row), = rows.items()
        by_lambda[lam] = dict(row, run=run.name)
    out = []
    for lam, g in sorted(last_rows(gained).items()):
        s: Optional[dict] = by_lambda.get(lam)
        out.append({"level": g.get("level"), "lambda": lam, "step": g["step"], "loss": g["loss"], "bpp": g["bpp"],
                    "psnr": g["psnr"], "single_run": s and s["run"], "single_step": s and s["step"],
                    "single_loss": s and s["loss"], "single_bpp": s and s["bpp"], "single_psnr": s and s["psnr"],
                    "dloss": s and g["loss"] / s["loss"] - 1})
    return out


def markdown(rows: Sequence[dict], gained: Path, argv: Sequence[str]) -> str:
    f = lambda v, fmt: "" if v is None else format(v, fmt)  # noqa: E731
    lines = [f"Validation loss of each level of **{gained.name}** against the single-rate run of its lambda "
             "(last validated step of each run, EMA weights).", "",
             "`python results/val_gap.py " + " ".join(argv) + "`", "",
             "| lambda | gained loss | bpp | PSNR | single loss | bpp | PSNR | dLoss |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['lambda']:g} | {r['loss']:.4f} | {r['bpp']:.3f} | {r['psnr']:.2f} | "
                     f"{f(r['single_loss'], '.4f')} | {f(r['single_bpp'], '.3f')} | {f(r['single_psnr'], '.2f')} | "
                     + ("" if r["dloss"] is None else f"{100 * r['dloss']:+.2f} %") + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gained", type=Path, help="the gained run's folder (its val_log.jsonl)")
    p.add_argument("singles", type=Path, nargs="+", help="single-rate run folders, one lambda each")
    p.add_argument("-o", "--output", type=Path, default=None, help="also write the table here (markdown)")
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    text = markdown(val_gap(args.gained, args.singles), args.gained, argv)
    print(text, end="")
    if args.output is not None:
        atomic_write_bytes(args.output, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
