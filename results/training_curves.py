#!/usr/bin/env python3
"""Validation curves and training budget of the protocol's runs.

Reads ``val_log.jsonl`` / ``train_log.jsonl`` of every run folder, plots validation
PSNR and bpp against the step for every model (every level of the variable-rate
ones) and writes the budget table (steps, step time from the logged rates).

  python results/training_curves.py --collect runs/protocol     # copy the logs into results/logs/
  python results/training_curves.py                              # plot + table from results/logs/

Outputs: ``results/training-curves.png`` and ``results/training-budget.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

from gainedvae.checkpoint import atomic_save, atomic_write_bytes

LOGS = ("val_log.jsonl", "train_log.jsonl")


def read_jsonl(path: Path) -> list:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line of a killed run
    return out


def collect(src: Path, dst: Path) -> None:
    """Copy every run's logs (``src/<run>/*.jsonl``) into ``dst/<run>/``."""
    for run in sorted(p for p in src.iterdir() if (p / "train_log.jsonl").is_file()):
        (dst / run.name).mkdir(parents=True, exist_ok=True)
        for name in LOGS:
            if (run / name).is_file():
                shutil.copyfile(run / name, dst / run.name / name)
        (dst / run.name / "DONE").unlink(missing_ok=True)
        if (run / "DONE").is_file():
            (dst / run.name / "DONE").touch()
        print(f"collected {run.name}")


def run_order(name: str):
    """pretrain, gained, single-rate by lambda, then the others."""
    if name == "pretrain":
        return (0, 0.0, name)
    if name == "gained":
        return (1, 0.0, name)
    if name.startswith("single-"):
        return (2, float(name.split("-", 1)[1]), name)
    return (3, 0.0, name)


def budget_rows(logs: Path) -> list:
    rows = []
    for run in sorted((p for p in logs.iterdir() if p.is_dir()), key=lambda p: run_order(p.name)):
        train = read_jsonl(run / "train_log.jsonl")
        if not train:
            continue
        seconds, prev = 0.0, 0
        for rec in train:  # each record averages the steps since the previous one
            seconds += (rec["step"] - prev) / rec["steps_per_s"]
            prev = rec["step"]
        val = read_jsonl(run / "val_log.jsonl")
        last = [r for r in val if r["step"] == val[-1]["step"]] if val else []
        rows.append({
            "run": run.name,
            "steps": train[-1]["step"],
            "finished": (run / "DONE").is_file(),
            "step_hours": seconds / 3600,
            "val_step": last[0]["step"] if last else None,
            "val": [(r.get("level", 0), r["bpp"], r["psnr"]) for r in last],
        })
    return rows


def budget_markdown(rows: list) -> str:
    lines = [
        "| run | steps | finished | training-step hours | last validation (bpp / PSNR dB per level) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        val = ", ".join(f"{b:.3f} / {p:.2f}" for _, b, p in r["val"])
        lines.append(f"| {r['run']} | {r['steps']} | {'yes' if r['finished'] else 'no'} | "
                     f"{r['step_hours']:.2f} | step {r['val_step']}: {val} |")
    return "\n".join(lines) + "\n"


def plot(logs: Path, out: Path) -> None:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5))  # Agg canvas, no pyplot: the process's backend is left alone
    FigureCanvasAgg(fig)
    ax_psnr, ax_bpp = fig.subplots(1, 2)
    runs = sorted((p for p in logs.iterdir() if p.is_dir()), key=lambda p: run_order(p.name))
    cmap = matplotlib.colormaps["viridis"]
    for run in runs:
        val = read_jsonl(run / "val_log.jsonl")
        if not val:
            continue
        levels = sorted({r.get("level", 0) for r in val})
        for level in levels:
            pts = [r for r in val if r.get("level", 0) == level]
            steps = [r["step"] for r in pts]
            if run.name == "pretrain":
                style = dict(color="black", ls=":", label="shared start (single-rate, lambda 0.18)")
            elif len(levels) > 1:  # a variable-rate model: one dashed/solid line per level
                color = cmap(level / max(1, len(levels) - 1))
                ls = "-" if run.name == "gained" else "--" if run.name == "vbr" else "-."
                style = dict(color=color, ls=ls, lw=1,
                             label=f"{run.name} (all levels)" if level == levels[-1] else None)
            else:
                style = dict(color="tab:red", marker="o", ms=3, lw=1, label="single-rate" if run.name.startswith("single")
                             and run == next(r for r in runs if r.name.startswith("single")) else None)
                if not run.name.startswith("single"):
                    style.update(color="tab:gray", label=run.name)
            ax_psnr.plot(steps, [r["psnr"] for r in pts], **style)
            ax_bpp.plot(steps, [r["bpp"] for r in pts], **{k: v for k, v in style.items() if k != "label"})
    ax_psnr.set(xlabel="step", ylabel="validation PSNR (dB)", title="validation PSNR per level (16 held-out crops)")
    ax_bpp.set(xlabel="step", ylabel="validation bpp (estimated)", title="validation rate per level", yscale="log")
    for ax in (ax_psnr, ax_bpp):
        ax.grid(alpha=0.3)
    ax_psnr.legend(fontsize=8)
    fig.suptitle("Training curves of the CPU protocol (gained: solid per level, colour = level; "
                 "single-rate: red; VBR peer: dashed)", fontsize=9)
    fig.tight_layout()
    atomic_save(lambda f: fig.savefig(f, format="png", dpi=110), out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collect", type=Path, help="copy the logs of these run folders into --logs first")
    p.add_argument("--logs", type=Path, default=HERE / "logs", help="folder of the collected run logs (default: %(default)s)")
    p.add_argument("--out", type=Path, default=HERE / "training-curves.png", help="plot to write (default: %(default)s)")
    p.add_argument("--budget", type=Path, default=HERE / "training-budget.md", help="budget table to write (default: %(default)s)")
    args = p.parse_args(argv)
    if args.collect:
        collect(args.collect, args.logs)
    if not args.logs.is_dir():
        print(f"training_curves.py: error: no logs in {args.logs} (use --collect RUNS)", file=sys.stderr)
        return 2
    plot(args.logs, args.out)
    rows = budget_rows(args.logs)
    text = ("# Training budget of the CPU protocol\n\nGenerated by `python results/training_curves.py` from "
            "`results/logs/`. Training-step hours are summed from the logged step rates (validation and "
            "checkpoint writes excluded); they include slow-downs from other work on the same two cores.\n\n"
            + budget_markdown(rows))
    atomic_write_bytes(args.budget, text.encode())
    print(budget_markdown(rows))
    print(f"wrote {args.out} and {args.budget}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
