#!/usr/bin/env python3
"""Evaluate a gained model over its continuous rate range, from real bitstreams.

Examples:
  python eval_gain.py                                    # shipped model on a shipped photo
  python eval_gain.py --checkpoint runs/x/best.pt -d ../shared/data/kodak \\
      --baseline runs/sr-*/ckpt-*.pt ../shared/anchors/kodak/compressai-mbt2018-mean_mse_cpu.json \\
      --classic jpeg,webp,avif --output-dir results/kodak
  python eval_gain.py --mode scgain --checkpoint runs/sc/best.pt -d ../shared/data/kodak \\
      --qmap mask.png --gain-checkpoint runs/x/best.pt --output-dir results/scgain   # docs/scgain.md
"""

import argparse
import sys
from pathlib import Path

import torch

from gainedvae import evaluate as ev
from gainedvae.checkpoint import CheckpointError, load_checkpoint
from gainedvae.models import is_variable_rate, model_name
from gainedvae.plot import Curve, rd_plot
from gainedvae.report import bd_markdown, bd_table


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("gain", "scgain"), default="gain",
                   help="gain: a variable-rate model over its quality range; scgain: a gained-scgain model with quality maps (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="gained checkpoint (default: the shipped model)")
    p.add_argument("-d", "--dataset", default=None, help="folder of images (default: a photo shipped with matplotlib)")
    p.add_argument("--step", type=float, default=0.25, help="quality step of the sweep")
    p.add_argument("--baseline", nargs="*", default=[], help="single-rate checkpoints and/or results JSON files")
    p.add_argument("--classic", default="", help="comma-separated Pillow codecs: jpeg,webp,avif")
    p.add_argument("--output-dir", default="results/eval", help="folder of the JSON, CSV, plots and BD tables (default: %(default)s)")
    p.add_argument("--name", default=None, help="label of the gained model (default: its registry name)")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images of -d (default: all)")
    p.add_argument("--cache", default=None, metavar="FILE.jsonl",
                   help="keep measured rows here and reuse them on the next run (keyed by weights hash, image, quality)")
    p.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="encoder-side latent refinement of the gained model's files, STEPS per image and quality "
                        "(gainedvae.refine; baselines are coded plainly; default 0: none)")
    p.add_argument("--refine-compile", action="store_true",
                   help="run the refinement's g_s / h_s through torch.compile (about 1.8x faster steps; "
                        "about 25 s to compile per image shape)")
    p.add_argument("--cuda", action="store_true", help="evaluate on the GPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("--mode scgain (gained-scgain with quality maps; see docs/scgain.md)")
    g.add_argument("--qmap", nargs="*", default=[], metavar="MASK",
                   help="grayscale ROI map(s), white = high quality: PSNR inside / outside is reported")
    g.add_argument("--qmap-values", type=lambda t: tuple(float(v) for v in t.replace(",", " ").split()),
                   default=(0.0, 0.25, 0.5, 0.75, 1.0), help="values of the uniform maps (default: 0,0.25,0.5,0.75,1)")
    g.add_argument("--gain-checkpoint", default=None,
                   help="channel-gain checkpoint or results JSON plotted next to the uniform-map curves")
    return p.parse_args(argv)


def load_gained(args, device):
    net = load_checkpoint(args.checkpoint, device=device)
    if not is_variable_rate(net):
        raise SystemExit(f"eval_gain.py: error: {args.checkpoint} holds the single-rate model {model_name(net)}; "
                         "pass it with --baseline and a variable-rate model with --checkpoint")
    return net


def run(args) -> int:
    device = "cuda" if args.cuda else "cpu"
    if args.cuda and not torch.cuda.is_available():
        raise SystemExit("eval_gain.py: error: --cuda given but torch sees no CUDA device")
    out = Path(args.output_dir)
    if args.step <= 0:
        raise SystemExit("eval_gain.py: error: --step must be positive")
    if args.refine < 0 or (args.refine and args.mode == "scgain"):
        raise SystemExit("eval_gain.py: error: --refine takes STEPS >= 0 and works with --mode gain only")
    if args.dataset:
        images = ev.list_images(Path(args.dataset), args.max_images)
        source = f"{len(images)} images from {args.dataset}"
    else:
        images, source = ev.default_images()
        print(f"no -d given: evaluating on {source}")
    progress = not args.no_progress
    cache = ev.RowCache(args.cache)
    if args.mode == "scgain":  # uniform / gradient / ROI maps (gainedvae/evaluate_scgain.py)
        from gainedvae.evaluate_scgain import run_scgain

        if not args.checkpoint:
            raise SystemExit("eval_gain.py: error: --mode scgain needs --checkpoint with a gained-scgain model")
        run_scgain(Path(args.checkpoint), images, source, out, qmaps=args.qmap, qmap_values=args.qmap_values,
                   gain_checkpoint=args.gain_checkpoint, step=args.step, name=args.name, device=device,
                   progress=progress)
        return 0
    if args.qmap or args.gain_checkpoint:
        raise SystemExit("eval_gain.py: error: --qmap and --gain-checkpoint need --mode scgain")

    net = load_gained(args, device)
    name = args.name or model_name(net)
    rows = ev.evaluate_model(net, images, ev.qualities_for(net, args.step), device, progress, name, cache, args.refine,
                             args.refine_compile)
    refined = f"; latent refinement {args.refine} steps (gainedvae.refine)" if args.refine else ""
    extra = {"lambdas": [float(v) for v in net.lambdas]} if getattr(net, "lambdas", None) else {}
    if args.refine:
        extra["refine_steps"] = args.refine
    gained = ev.aggregate(rows, name, f"{ev.describe_model(net)}; real rANS bitstreams{refined}; {source}", extra or None)
    ev.write_json(gained, out / f"{name}.json")
    ev.write_csv(rows, out / f"{name}-per-image.csv")

    baselines, curves = [], []
    singles = []
    for b in args.baseline:
        bp = Path(b)
        if bp.suffix == ".json":
            data = ev.load_results_json(bp)
            if ev.is_ours(data):  # written by this evaluation earlier (e.g. results/kodak/...)
                data["name"] = f"{data['name']} (ours: {bp.parent.name}/{bp.name})"
                kind = "gained" if len(data["results"]["bpp"]) > 1 and "lambda" not in data["results"] else "single"
            else:
                data["name"] = f"{data['name']} [anchor, not ours: {bp.parent.name}/{bp.name}]"
                kind = "anchor"
            baselines.append(data)
            curves.append(Curve(data["name"], data["results"], kind))
            continue
        snet = load_checkpoint(bp, device=device)
        if is_variable_rate(snet):  # another variable-rate model (e.g. the VBR peer): a full sweep
            vrows = ev.evaluate_model(snet, images, ev.qualities_for(snet, args.step), device, progress, bp.name, cache)
            data = ev.aggregate(vrows, model_name(snet), f"{ev.describe_model(snet)}; {source}", {"checkpoint": str(bp)})
            ev.write_json(data, out / f"{model_name(snet)}.json")
            ev.write_csv(vrows, out / f"{model_name(snet)}-per-image.csv")
            baselines.append(data)
            curves.append(Curve(f"{model_name(snet)} (continuous, same budget)", data["results"], "gained"))
            continue
        q = ev.single_rate_label(snet)
        srows = ev.evaluate_model(snet, images, [q], device, progress, f"{bp.name}", cache)
        res = ev.aggregate(srows, model_name(snet), ev.describe_model(snet),
                           {"lambda": (getattr(snet, "lambdas", None) or [None])[0], "checkpoint": str(bp)})
        singles.append((res, srows))
    if singles:
        label = f"{singles[0][0]['name']} single-rate (ours)"
        merged = ev.merge_points([r for r, _ in singles], label,
                                 "; ".join(r["description"] for r, _ in singles) + f"; {source}")
        ev.write_json(merged, out / f"{singles[0][0]['name']}-single-rate.json")
        ev.write_csv([row for _, rs in singles for row in rs], out / f"{singles[0][0]['name']}-single-rate-per-image.csv")
        baselines.insert(0, merged)
        curves.insert(0, Curve(label, merged["results"], "single"))

    for codec in [c.strip() for c in args.classic.split(",") if c.strip()]:
        crows = ev.evaluate_classic(codec, images, progress, cache)
        data = ev.aggregate(crows, f"pillow-{codec}", f"Pillow {codec.upper()} measured here; {source}")
        ev.write_json(data, out / f"pillow-{codec}.json")
        ev.write_csv(crows, out / f"pillow-{codec}-per-image.csv")
        baselines.append(data)
        curves.append(Curve(f"Pillow {codec.upper()} (measured here)", data["results"], "classic"))

    table = bd_table(gained, baselines)
    ev.write_json({"test": name, "rows": table}, out / "bd.json")
    md = bd_markdown(name, table)
    (out / "bd.md").write_text(md)
    print(md)

    integer = [q is not None and float(q).is_integer() for q in gained["results"]["quality"]]
    title = f"{name} on {source}"
    if singles and isinstance(table[0]["bd_rate_psnr"], float):
        title += f"\nBD-rate vs single-rate set: {table[0]['bd_rate_psnr']:+.2f} % (PSNR)"
        if isinstance(table[0]["bd_rate_ms_ssim"], float):
            title += f", {table[0]['bd_rate_ms_ssim']:+.2f} % (MS-SSIM)"
    all_curves = [Curve(f"{name} (continuous, ours)", gained["results"], "gained", integer)] + curves
    for metric in ("psnr", "ms-ssim"):
        rd_plot(all_curves, metric, out / f"rd-{metric}.png", title)
    print(f"wrote {out}/{name}.json, per-image CSV, rd-psnr.png, rd-ms-ssim.png, bd.md, bd.json")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"eval_gain.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
