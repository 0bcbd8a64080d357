#!/usr/bin/env python3
"""results/kodak/peers.md: the gained model against CompressAI's variable-rate model (issue 11).

Collects in one table what a user weighs when choosing a variable-rate model:

* BD-rate (PSNR and MS-SSIM) of the gained curve against the same-budget VBR model and the
  same-budget single-rate set, read from ``results/kodak/peers/bd.json``
  (``results/evaluate.sh peers``);
* parameters and weights-only checkpoint size (float16, as ``gainedvae export`` writes it) of one
  gained model, the VBR model and the eight single-rate models the gained model replaces;
* encode / decode time per Kodak image at the lambda=0.013 setting (quality 4 of the variable-rate
  models, the single-rate model trained at 0.013), timed interleaved in this run;
* how many log-spaced bpp targets each can hit within +/-1 %, read from
  ``results/kodak/rate-targets.json`` (``benchmarks/rate_targets.py``).

  python -m results.peers_report --vbr runs/protocol/vbr/ckpt-0008000.pt \\
      --single runs/protocol/single-0.0130/ckpt-0008000.pt -d ../shared/data/kodak --max-images 4
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional

import torch

from benchmarks.model_speed import time_one  # the same timing code
from gainedvae.bd import bd_rate
from gainedvae.checkpoint import DEFAULT_CHECKPOINT, atomic_write_bytes, export_checkpoint, load_checkpoint
from gainedvae.evaluate import list_images, load_results_json, read_image
from gainedvae.models import model_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SINGLE_RATE_MODELS = 8  # the gained model's eight levels = eight single-rate models


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (the shipped model)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def weights_size(path: Path) -> int:
    """Bytes of a float16 weights-only export of ``path`` (how the shipped model is stored)."""
    with tempfile.TemporaryDirectory() as tmp:
        return export_checkpoint(path, Path(tmp) / "w.pt", half=True).stat().st_size


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def run(args) -> Dict:
    paths = {"gained": Path(args.gained), "vbr": Path(args.vbr), "single": Path(args.single)}
    return time_models(paths, Path(args.d), args.max_images, args.quality, args.repeats, args.threads)


def time_models(paths: Dict[str, Path], folder: Path, max_images: Optional[int], quality: float, repeats: int,
                threads: Optional[int] = None) -> Dict:
    """Encode / decode time (interleaved, median of ``repeats`` per image, mean over images), bpp,
    parameters and float16 export size of each checkpoint in ``paths``."""
    if threads:
        torch.set_num_threads(threads)
    nets = {k: load_checkpoint(p) for k, p in paths.items()}
    images = [read_image(p).float() / 255 for p in list_images(folder, max_images)]
    times = {k: {"encode": [], "decode": [], "bpp": []} for k in nets}
    for net in nets.values():  # warm up
        time_one(net, images[0][..., :64, :64], quality)
    for x in images:
        per = {k: {"encode": [], "decode": []} for k in nets}
        for repeat in range(repeats):
            for k, net in nets.items():  # interleaved: gained, vbr, single, gained, ...
                enc, dec, nbytes = time_one(net, x, quality)
                per[k]["encode"].append(enc)
                per[k]["decode"].append(dec)
                if repeat == 0:  # the same bytes every repeat
                    times[k]["bpp"].append(8 * nbytes / (x.shape[-2] * x.shape[-1]))
        for k in nets:
            times[k]["encode"].append(statistics.median(per[k]["encode"]))
            times[k]["decode"].append(statistics.median(per[k]["decode"]))
    rows = {}
    for k, net in nets.items():
        rows[k] = {
            "checkpoint": shown(paths[k]),
            "model": model_name(net),
            "parameters": n_params(net),
            "weights_fp16_bytes": weights_size(paths[k]),
            "encode_s": statistics.mean(times[k]["encode"]),
            "decode_s": statistics.mean(times[k]["decode"]),
            "bpp": statistics.mean(times[k]["bpp"]),
        }
    return {
        "quality": quality,
        "images": len(images),
        "folder": str(folder),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
    }


def read_json(path: Path, what: str) -> Optional[Dict]:
    if not path.is_file():
        print(f"peers_report.py: {path} is missing ({what}); its columns stay empty", file=sys.stderr)
        return None
    return json.loads(path.read_text())


def pct(v) -> str:
    return "n/a" if v is None else f"{v:+.2f} %"


def vbr_vs_single(folder: Path) -> Optional[tuple]:
    """BD-rate (PSNR, MS-SSIM dB) of the VBR curve against the single-rate set, from the peers JSON files."""
    vbr, single = folder / "mbt2018-mean-vbr.json", folder / "mbt2018-mean-single-rate.json"
    if not (vbr.is_file() and single.is_file()):
        return None
    v, s = load_results_json(vbr)["results"], load_results_json(single)["results"]
    return tuple(bd_rate(s["bpp"], s[k], v["bpp"], v[k]) for k in ("psnr-rgb", "ms-ssim-rgb-db"))


#: The budgets the table has been published for (``--budget``): how the three were trained, the
#: VBR peer's per-batch objective against the gained model's, and the commands that regenerate it.
BUDGETS = {
    "protocol": {
        "issue": "issue 11",
        "widths": "N=64, M=96",
        "steps": "8,000",
        "start_short": "the 10,000-step shared start",
        "why": "a variable-rate model's levels share the 8,000 steps that each single-rate model spends on one "
               "lambda, and at this budget nothing has converged (see `results/training-curves.png`); the gap is "
               "largest at the highest lambdas. More steps per model would close it first, then width (N=128, M=192).",
        "start": "the protocol's shared start (single-rate `mbt2018-mean`, lambda 0.18, 10,000 steps: the start the gained model also gets)",
        "levels": "minimises the loss of one of the eight lambdas per batch, drawn uniformly, as the gained model does,",
        "train": "RUNS=runs/protocol results/protocol.sh pretrain gained vbr singles4 singles8   # training, resumable",
        "evaluate": "RUNS=runs/protocol TAG= STEPS=8000 GAINED=runs/protocol/gained/ckpt-0008000.pt results/evaluate.sh peers",
        "ckpt": "runs/protocol/{run}/ckpt-0008000.pt",
        "qualities": "continuous sweep at quality steps of 0.5",
        "dir": "results/kodak",
    },
    "campaign": {
        "issue": "issues 11 and 21",
        "widths": "N=64, M=192",
        "steps": "15,000",
        "start_short": "the 100,000-step shared start",
        "why": "a variable-rate model's levels share the 15,000 steps that each single-rate model spends on one "
               "lambda (every run converged for its recipe, `results/training-budget.md`); where the loss sits, "
               "level by level: "
               "`results/logs/gained-m192-from-36k/kodak-step15000-vs-singles8/level-gap.md`.",
        "start": "the campaign's shared start (single-rate `mbt2018-mean`, lambda 0.18, 100,000 steps: the start the gained model also gets)",
        "levels": "minimises the loss of one of the eight lambdas per batch, drawn uniformly (the gained model draws one level "
                  "per sample and weighs the levels, `results/README.md`: the VBR model keeps its published design),",
        "train": "THREADS=1 results/campaign.sh gained vbr singles                               # training, resumable",
        "evaluate": "RUNS=runs/protocol results/evaluate.sh peers",
        # the runs' exports (results/campaign.sh writes them when a run finishes: on every machine)
        "ckpt": "results/campaign/finished/{run}-m192-from-36k.pt",
        "qualities": "qualities 1..8 (the trained levels)",
        "dir": "results/logs/vbr-m192-from-36k",
    },
}


def markdown(result: Dict, bd: Optional[Dict], targets: Optional[Dict], bd_dir: Path = HERE / "kodak" / "peers",
             budget: str = "protocol") -> str:
    r = result["rows"]
    b = BUDGETS[budget]
    ck = lambda run: b["ckpt"].format(run=run)  # noqa: E731
    out = [
        f"# Gained model vs CompressAI's variable-rate model, same budget ({b['issue']})",
        "",
        f"Same backbone (`mbt2018-mean`, {b['widths']}), data, batch, patch, learning-rate schedule and",
        f"shared start; each model trained {b['steps']} steps after {b['start_short']} (see",
        "`results/README.md`). Evaluation: all 24 Kodak images, real rANS bitstreams, " + b["qualities"] + ".",
        "",
        "## BD-rate of the gained continuous curve (PCHIP, negative = gained needs fewer bits)",
        "",
    ]
    if bd:
        peer = next((b for b in bd["rows"] if "vbr" in b["baseline"] and "anchor" not in b["baseline"]), None)
        single = next((b for b in bd["rows"] if "single-rate" in b["baseline"]), None)
        if peer and single:
            met = lambda ok: "met" if ok else "missed"  # noqa: E731
            out += [f"Targets: vs the same-budget VBR model negative: **{pct(peer['bd_rate_psnr'])}** "
                    f"({met(peer['bd_rate_psnr'] < 0)}); vs the same-budget single-rate set <= +1.0 %: "
                    f"**{pct(single['bd_rate_psnr'])}** ({met(single['bd_rate_psnr'] <= 1.0)}).", ""]
            if single["bd_rate_psnr"] > 1.0:
                out += ["Why the single-rate target is missed: " + b["why"], ""]
        peer_vs_single = vbr_vs_single(bd_dir)
        if peer_vs_single:
            out += ["For scale, the VBR peer against the same single-rate set: "
                    f"{pct(peer_vs_single[0])} (PSNR), {pct(peer_vs_single[1])} (MS-SSIM dB).", ""]
        out += ["| against | BD-rate (PSNR) | BD-PSNR | BD-rate (MS-SSIM dB) |", "|---|---:|---:|---:|"]
        for row in bd["rows"]:
            out.append(f"| {row['baseline']} | {pct(row['bd_rate_psnr'])} | {row['bd_psnr']:+.2f} dB | "
                       f"{pct(row.get('bd_rate_ms_ssim'))} |")
        out += ["", "![RD PSNR](peers/rd-psnr.png) ![RD MS-SSIM](peers/rd-ms-ssim.png)", ""]
    else:
        out += ["(results/kodak/peers/bd.json missing: run `results/evaluate.sh peers`)", ""]
    hits = {}
    if targets:
        for name, row in targets["rows"].items():
            key = "single" if name.startswith("single") else ("vbr" if "vbr" in name else "gained")
            hits[key] = f"{row['hits']} / {row['targets']}"
            if key == "single" and targets.get("singles"):
                hits[key] += f" (the {len(targets['singles'])} trained)"
    out += [
        "## What a user weighs",
        "",
        f"Times: mean over {result['images']} Kodak image(s) of the median of {result['repeats']} interleaved runs, "
        f"CPU ({result['cpu']}, {result['threads']} threads, torch {result['torch']}), lambda=0.013 setting "
        f"(quality {result['quality']:g} of the variable-rate models). Checkpoint size: weights-only float16 export "
        "(`gainedvae export`, how the shipped model is stored). Rates hit: log-spaced bpp targets"
        + (f" ({targets['targets_per_image']} per image on {targets['images']} image(s), over the range both "
           "variable-rate models reach)" if targets else "") + " coded within +/-1 %.",
        "",
        "| model(s) | parameters | checkpoint(s), fp16 | encode s | decode s | bpp there | rates hit within +/-1 % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    mib = 1 << 20
    for key, label, k in (("gained", "gained-mbt2018-mean (one model)", 1),
                          ("vbr", "mbt2018-mean-vbr, CompressAI (one model)", 1),
                          ("single", f"mbt2018-mean single-rate x {SINGLE_RATE_MODELS}", SINGLE_RATE_MODELS)):
        row = r[key]
        params = f"{row['parameters'] / 1e6:.2f} M" if k == 1 else f"{k} x {row['parameters'] / 1e6:.2f} M = {k * row['parameters'] / 1e6:.2f} M"
        size = f"{row['weights_fp16_bytes'] / mib:.2f} MiB" if k == 1 else f"{k * row['weights_fp16_bytes'] / mib:.2f} MiB"
        out.append(f"| {label} | {params} | {size} | {row['encode_s']:.3f} | {row['decode_s']:.3f} | "
                   f"{row['bpp']:.3f} | {hits.get(key, 'n/a')} |")
    out += [
        "",
        "The single-rate models code through CompressAI's `GaussianConditional`, the variable-rate models "
        "through gainedvae's `TableGaussianConditional` (same bytes, faster index search; "
        "`results/benchmarks/codec_speed.md`): that, not the network, is the time gap between them.",
        "",
        "Checkpoints: " + ", ".join(f"{k} `{v['checkpoint']}`" for k, v in r.items()) + ".",
        "",
        "## The VBR peer's recipe, and where it deviates from upstream",
        "",
        "CompressAI's `MeanScaleHyperpriorVbr` has two code paths (its `forward(stage=...)` docstring):",
        "stage 1, the plain single-rate model, \"for initial training\"; stage 2, the variable-rate path",
        "(gain vector, quantisation-reconstruction offsets), \"for post training with e.g. MOO\"",
        f"(the paper's multi-objective optimisation over the lambdas). Here stage 1 is {b['start']}",
        f"and stage 2 gets the gained model's {b['steps']} steps, batch, patches, data and",
        "learning-rate schedule (`-m mbt2018-mean-vbr`). Deviations: stage 2",
        f"{b['levels']} instead of MOO (CompressAI ships no training script for it),",
        "and coding uses our 256-level scale table (applied to every model here, so all are",
        "coded the same way). The peer is not tuned down: same start, same steps, same evaluation.",
        "",
        "## Regenerate",
        "",
        "```bash",
        b["train"],
        b["evaluate"] + f"   # {b['dir']}/peers/",
        f"python benchmarks/rate_targets.py --model {ck('gained')} \\",
        f"    --model {ck('vbr')} --single {ck('single-*')} \\",
        f"    -d ../shared/data/kodak --max-images 4 --json {b['dir']}/rate-targets.json",
        f"python -m results.peers_report --budget {budget} --gained {ck('gained')} --vbr {ck('vbr')} \\",
        f"    --single {ck('single-0.0130')} --bd {b['dir']}/peers/bd.json --targets {b['dir']}/rate-targets.json \\",
        f"    --out {b['dir']}/peers.md     # this file (timings on an idle CPU)",
        "```",
        "",
    ]
    return "\n".join(out)


def add_timing_args(p: argparse.ArgumentParser, max_images: int) -> None:
    """The flags of :func:`time_models` (this script and ``results/checkerboard_report.py``)."""
    p.add_argument("-d", default=str(ROOT.parent / "shared" / "data" / "kodak"), help="image folder (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=max_images, help="images of -d timed (default: %(default)s)")
    p.add_argument("-q", "--quality", type=float, default=4.0,
                   help="quality of the variable-rate models timed (4: lambda 0.013) (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats per image, interleaved (median) (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gained", default=str(DEFAULT_CHECKPOINT), help="gained checkpoint (default: the shipped model)")
    p.add_argument("--vbr", required=True, help="mbt2018-mean-vbr checkpoint")
    p.add_argument("--single", required=True, help="single-rate checkpoint at lambda 0.013 (timing, sizes)")
    add_timing_args(p, max_images=4)
    p.add_argument("--bd", type=Path, default=HERE / "kodak" / "peers" / "bd.json", help="BD-rates of results/evaluate.sh peers (default: %(default)s)")
    p.add_argument("--targets", type=Path, default=HERE / "kodak" / "rate-targets.json",
                   help="rate-target counts of benchmarks/rate_targets.py (default: %(default)s)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="protocol",
                   help="which training budget the checkpoints come from, for the text (default: %(default)s)")
    p.add_argument("--out", type=Path, default=HERE / "kodak" / "peers.md", help="markdown table to write (and its .json) (default: %(default)s)")
    args = p.parse_args(argv)
    result = run(args)
    text = markdown(result, read_json(args.bd, "BD-rates"), read_json(args.targets, "rate targets"), args.bd.parent,
                    args.budget)
    atomic_write_bytes(args.out, text.encode())
    atomic_write_bytes(args.out.with_suffix(".json"), json.dumps(result, indent=2).encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
