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
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

from gainedvae.checkpoint import atomic_save, atomic_write_bytes

LOGS = ("val_log.jsonl", "train_log.jsonl")
#: Step of the shared start's stage 1 at which its latent was widened to M=192 (results/campaign.sh).
WIDENED_AT = 64000


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


#: The training configuration kept beside the logs (``config.json``): what the budget table's recipe
#: column shows.
RECIPE_KEYS = ("model", "N", "M", "batch_size", "patch_size", "metric", "lr", "steps", "level_sampling",
               "level_weights", "lmbda", "threads", "compile", "quantizer")


def run_config(run: Path):
    """The ``train_config`` of the run's newest checkpoint (``ckpt-*.pt``, else ``best.pt``), or None."""
    from gainedvae.checkpoint import read_checkpoint

    ckpts = sorted(run.glob("ckpt-*.pt")) or sorted(run.glob("best.pt"))
    if not ckpts:
        return None
    cfg = read_checkpoint(ckpts[-1]).get("train_config") or {}
    return {k: cfg[k] for k in RECIPE_KEYS if k in cfg} or None


def recipe(cfg) -> str:
    """``model N/M, batch x patch^2`` (+ metric and level sampling where they differ from the defaults)."""
    if not cfg:
        return "-"
    text = f"{cfg.get('model', '?')} N={cfg.get('N', '?')} M={cfg.get('M', '?')}, {cfg.get('batch_size', '?')} x {cfg.get('patch_size', '?')}²"
    if cfg.get("metric", "mse") != "mse":
        text += f", {cfg['metric']}"
    if cfg.get("level_sampling", "batch") != "batch" or cfg.get("level_weights"):
        text += f", levels per {cfg.get('level_sampling', 'batch')}{' weighted' if cfg.get('level_weights') else ''}"
    if cfg.get("quantizer", "noise") != "noise":
        text += f", quantizer {cfg['quantizer']}"
    return text


def collect(src: Path, dst: Path, only=None) -> None:
    """Copy every run's logs (``src/<run>/*.jsonl``) and training configuration (``config.json``) into
    ``dst/<run>/``; ``only``: these run names alone."""
    for run in sorted(p for p in src.iterdir() if (p / "train_log.jsonl").is_file()):
        if only and run.name not in only:
            continue
        (dst / run.name).mkdir(parents=True, exist_ok=True)
        for name in LOGS:
            if (run / name).is_file():
                shutil.copyfile(run / name, dst / run.name / name)
        cfg = run_config(run)
        if cfg:
            atomic_write_bytes(dst / run.name / "config.json", (json.dumps(cfg, indent=1) + "\n").encode())
        (dst / run.name / "DONE").unlink(missing_ok=True)
        if (run / "DONE").is_file():
            (dst / run.name / "DONE").touch()
        print(f"collected {run.name}")


#: The piece that starts the nine-level model (``campaign.sh gained_top9``, session 17).
TOP9_FIRST_PIECE = 6


def campaign_source(name: str):
    """The finished fine-tune a campaign run continues (``results/campaign.sh``), or None when it starts
    from the shared start: ``gained-ste<n>-<tag>`` (``gained_more``, piece n) continues piece n-1
    (``gained-ste-<tag>`` for n = 2; ``gained-ste<n>-top-<tag>``, ``gained_top``, too; ``gained-ste<n>-top9-<tag>``,
    ``gained_top9``, continues ``gained-ste<n-1>-top-<tag>`` for n = 6, ``gained-ste<n-1>-top9-<tag>`` after), ``scgain-<run>`` the gained fine-tune ``<run>``."""
    match = re.fullmatch(r"gained-ste(\d+)(-top9|-top)?-(m192-from-\d+k)", name)
    if match:
        n, prev = int(match.group(1)), ""
        if match.group(2) == "-top9":  # piece 6 starts the nine-level model from piece 5 (-top), later pieces continue it
            prev = "-top9" if n > TOP9_FIRST_PIECE else "-top"
        return f"gained-ste{n - 1 if n > 2 else ''}{prev}-{match.group(3)}"
    match = re.fullmatch(r"scgain-(gained-m192-from-\d+k)", name)
    return match.group(1) if match else None


#: Steps of each fine-tune a campaign run continues (``campaign.sh``: ``STEPS``, default 15,000).
FINETUNE_STEPS = 15000


def campaign_offset(name: str):
    """Where a run of the long campaign (issues 16, 21) starts on the shared start's step axis; None for
    the protocol's runs. Stage 1 of the shared start (``pretrain-200k``, M=96) runs from 0; stage 2
    (``pretrain-m192``) continues from its step 64,000 widened to M=192 with its own step count;
    ``gained-from-<X>k`` fine-tunes stage 1's step X,000, ``<run>-m192-from-<X>k`` stage 2's; a run that
    continues a finished fine-tune (``campaign_source``) starts where that one ended."""
    if name == "pretrain-200k":
        return 0
    if name == "pretrain-m192":
        return WIDENED_AT
    match = re.fullmatch(r"gained-from-(\d+)k", name)
    if match:
        return 1000 * int(match.group(1))
    source = campaign_source(name)
    if source:
        return campaign_offset(source) + FINETUNE_STEPS
    match = re.search(r"m192-from-(\d+)k$", name)
    if match:
        return WIDENED_AT + 1000 * int(match.group(1))
    return None


def rise_last_tenth(val: list) -> float:
    """Largest rise of validation PSNR (dB, over the levels) over the run's last 10 % of steps: the last
    validation against the PSNR linearly interpolated at 90 % of its step."""
    last = val[-1]["step"]
    at = 0.9 * last
    rises = []
    for level in sorted({r.get("level", 0) for r in val}):
        pts = sorted((r["step"], r["psnr"]) for r in val if r.get("level", 0) == level)
        before = [p for p in pts if p[0] <= at]
        after = [p for p in pts if p[0] >= at]
        if not before or not after:
            continue
        (s0, p0), (s1, p1) = before[-1], after[0]
        ref = p0 if s1 == s0 else p0 + (p1 - p0) * (at - s0) / (s1 - s0)
        rises.append(pts[-1][1] - ref)
    return max(rises) if rises else float("nan")


def run_order(name: str):
    """pretrain, gained, single-rate by lambda, then the others."""
    if name == "pretrain":
        return (0, 0.0, name)
    if name == "gained":
        return (1, 0.0, name)
    if name.startswith("single-"):  # single-<lambda> or single-<lambda>-<campaign tag>
        try:
            return (2, float(name.split("-")[1]), name)
        except ValueError:
            pass
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
        cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else None
        rows.append({
            "run": run.name,
            "recipe": recipe(cfg) + (f", continues {campaign_source(run.name)}" if campaign_source(run.name) else ""),
            "steps": train[-1]["step"],
            "finished": (run / "DONE").is_file(),
            "step_hours": seconds / 3600,
            "val_step": last[0]["step"] if last else None,
            "val": [(r.get("level", 0), r["bpp"], r["psnr"]) for r in last],
            "rise": rise_last_tenth(val) if val else float("nan"),
        })
    return rows


def budget_markdown(rows: list) -> str:
    lines = [
        "| run | recipe | steps | finished | training-step hours | PSNR rise over the last 10 % of steps (dB, max over levels) "
        "| last validation (bpp / PSNR dB per level) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        val = ", ".join(f"{b:.3f} / {p:.2f}" for _, b, p in r["val"])
        head = f"| {r['run']} | {r.get('recipe', '-')} | {r['steps']} | {'yes' if r['finished'] else 'no'} | {r['step_hours']:.2f}"
        if r["val_step"] is None:
            lines.append(f"{head} | - | no validation yet |")
            continue
        lines.append(f"{head} | {'-' if r['rise'] != r['rise'] else format(r['rise'], '+.2f')} | step {r['val_step']}: {val} |")
    return "\n".join(lines) + "\n"


def plot(logs: Path, out: Path) -> None:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 9.5))  # Agg canvas, no pyplot: the process's backend is left alone
    FigureCanvasAgg(fig)
    (ax_psnr, ax_bpp), (ax_cpsnr, ax_cbpp) = fig.subplots(2, 2)
    runs = sorted((p for p in logs.iterdir() if p.is_dir()), key=lambda p: run_order(p.name))
    cmap = matplotlib.colormaps["viridis"]
    for run in runs:
        val = read_jsonl(run / "val_log.jsonl")
        if not val:
            continue
        offset = campaign_offset(run.name)
        axes = (ax_psnr, ax_bpp) if offset is None else (ax_cpsnr, ax_cbpp)
        levels = sorted({r.get("level", 0) for r in val})
        for level in levels:
            pts = [r for r in val if r.get("level", 0) == level]
            steps = [r["step"] + (offset or 0) for r in pts]
            if run.name == "pretrain":
                style = dict(color="black", ls=":", label="shared start (single-rate, lambda 0.18)")
            elif offset is not None and len(levels) == 1:
                style = dict(color="black", ls="-" if "m192" in run.name else ":", lw=1.5,
                             label=f"{run.name} (shared start, lambda 0.18)")
            elif len(levels) > 1:  # a variable-rate model: one line per level
                color = cmap(level / max(1, len(levels) - 1))
                ls = "--" if run.name == "vbr" else "-." if offset is None and run.name != "gained" else "-"
                if offset is not None and "m192" not in run.name:
                    ls = ":"
                style = dict(color=color, ls=ls, lw=1,
                             label=f"{run.name} (all levels)" if level == levels[-1] else None)
            else:
                style = dict(color="tab:red", marker="o", ms=3, lw=1, label="single-rate" if run.name.startswith("single")
                             and run == next(r for r in runs if r.name.startswith("single")) else None)
                if not run.name.startswith("single"):
                    style.update(color="tab:gray", label=run.name)
            axes[0].plot(steps, [r["psnr"] for r in pts], **style)
            axes[1].plot(steps, [r["bpp"] for r in pts], **{k: v for k, v in style.items() if k != "label"})
    ax_psnr.set(xlabel="step", ylabel="validation PSNR (dB)", title="protocol: validation PSNR per level (16 held-out crops)")
    ax_bpp.set(xlabel="step", ylabel="validation bpp (estimated)", title="protocol: validation rate per level", yscale="log")
    ax_cpsnr.set(xlabel="shared-start step (+ fine-tune step)", ylabel="validation PSNR (dB)",
                 title=f"campaign (issue 16): M=96 dotted, widened to M=192 at {WIDENED_AT:,} solid")
    ax_cbpp.set(xlabel="shared-start step (+ fine-tune step)", ylabel="validation bpp (estimated)",
                title="campaign: validation rate per level", yscale="log")
    for ax in (ax_psnr, ax_bpp, ax_cpsnr, ax_cbpp):
        ax.grid(alpha=0.3)
    for ax in (ax_psnr, ax_cpsnr):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Training curves (gained: one line per level, colour = level; single-rate: red; VBR peer: dashed)",
                 fontsize=9)
    fig.tight_layout()
    atomic_save(lambda f: fig.savefig(f, format="png", dpi=110), out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collect", type=Path, help="copy the logs of these run folders into --logs first")
    p.add_argument("--run", action="append", help="with --collect: only this run folder's name (repeatable)")
    p.add_argument("--no-plot", action="store_true", help="with --collect: copy the logs only (no plot, no budget table)")
    p.add_argument("--logs", type=Path, default=HERE / "logs", help="folder of the collected run logs (default: %(default)s)")
    p.add_argument("--out", type=Path, default=HERE / "training-curves.png", help="plot to write (default: %(default)s)")
    p.add_argument("--budget", type=Path, default=HERE / "training-budget.md", help="budget table to write (default: %(default)s)")
    args = p.parse_args(argv)
    if args.collect:
        collect(args.collect, args.logs, args.run)
        if args.no_plot:
            return 0
    if not args.logs.is_dir():
        print(f"training_curves.py: error: no logs in {args.logs} (use --collect RUNS)", file=sys.stderr)
        return 2
    plot(args.logs, args.out)
    rows = budget_rows(args.logs)
    text = ("# Training budget of the CPU protocol\n\nGenerated by `python results/training_curves.py` from "
            "`results/logs/`. Training-step hours are summed from the logged step rates (validation and "
            "checkpoint writes excluded); they include slow-downs from other work on the same two cores. Recipe: "
            "from each run's checkpoint (`config.json` beside its logs); `-` = a run collected before that "
            "file existed: the 8,000-step protocol's N=64, M=96, batch 8 x 128² (`results/protocol.sh`); "
            "\"continues X\": the run starts from the finished fine-tune X, whose steps come on top (the "
            "campaign's runs otherwise start from the shared start; `results/campaign.sh`). "
            "Hardware: the 2-core development CPU.\n\n"
            + budget_markdown(rows))
    atomic_write_bytes(args.budget, text.encode())
    print(budget_markdown(rows))
    print(f"wrote {args.out} and {args.budget}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
