#!/usr/bin/env python3
"""How many distinct rates can a model hit? Targets within +/-1 % of a requested bpp.

For every image, ``--targets`` bpp targets are spaced logarithmically over the range
that every variable-rate model can reach on that image (the overlap of their
quality-1 .. quality-L rates). A variable-rate model (gained or CompressAI VBR)
hits a target when a search over its continuous quality finds a bitstream within
``--tol`` of it (regula falsi on log-bpp, at most ``--max-iter`` encodes); a set of
single-rate models hits it when one of them codes the image within ``--tol``.
bpp = bytes of the model's rANS streams * 8 / pixels (no container), the same for all.

  python benchmarks/rate_targets.py --model gainedvae/weights/gained-mbt2018-mean.pt \
      --model runs/protocol/vbr/ckpt-0008000.pt --single runs/protocol/single-*/ckpt-0008000.pt \
      -d ../shared/data/kodak --max-images 4 --json results/kodak/rate-targets.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from gainedvae.checkpoint import atomic_write_bytes, load_checkpoint
from gainedvae.evaluate import list_images, read_image
from gainedvae.models import is_variable_rate, model_name, rate_model, stream_bytes


@torch.inference_mode()
def stream_bpp(net, x: torch.Tensor, quality=None) -> float:
    """Bits per pixel of ``net``'s rANS streams for ``x`` (``quality=None``: a single-rate model)."""
    h, w = x.shape[-2:]
    return 8 * stream_bytes(rate_model(net).compress(x, quality)["strings"]) / (h * w)


def hit(net, x, target: float, tol: float, max_iter: int, ends: Dict[float, float]) -> Dict:
    """Search the quality whose bpp is within ``tol`` of ``target``; ``ends`` caches bpp(q)."""
    lo, hi = 1.0, float(net.levels)
    f = lambda q: math.log(ends.setdefault(q, stream_bpp(net, x, q)) / target)  # noqa: E731
    flo, fhi = f(lo), f(hi)
    encodes, side = 0, 0
    for _ in range(max_iter):
        if abs(flo) <= math.log1p(tol):
            return {"hit": True, "quality": lo, "encodes": encodes}
        if abs(fhi) <= math.log1p(tol):
            return {"hit": True, "quality": hi, "encodes": encodes}
        if flo > 0 or fhi < 0:  # outside the reachable range
            return {"hit": False, "quality": None, "encodes": encodes}
        q = hi - fhi * (hi - lo) / (fhi - flo) if fhi != flo else (lo + hi) / 2
        q = min(max(q, lo + 1e-6), hi - 1e-6)
        fq = f(q)
        encodes += 1
        if fq < 0:
            lo, flo = q, fq
            if side == -1:
                fhi /= 2  # Illinois step: avoid a stuck end
            side = -1
        else:
            hi, fhi = q, fq
            if side == 1:
                flo /= 2
            side = 1
        if hi - lo < 1e-6:
            break
    return {"hit": abs(f(lo)) <= math.log1p(tol) or abs(f(hi)) <= math.log1p(tol), "quality": None, "encodes": encodes}


def run(args) -> Dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [(p, load_checkpoint(p)) for p in args.model]
    for p, net in models:
        if not is_variable_rate(net):
            raise SystemExit(f"rate_targets.py: error: {p} is single-rate; pass it with --single")
    singles = [(p, load_checkpoint(p)) for p in args.single]
    images = list_images(Path(args.d), args.max_images)
    rows: Dict[str, Dict] = {}
    for name in [f"{model_name(n)} ({Path(p).name})" for p, n in models] + (["single-rate set"] if singles else []):
        rows[name] = {"targets": 0, "hits": 0, "encodes": 0}
    per_image = []
    for path in images:
        x = read_image(path).float() / 255
        ends = [{} for _ in models]
        ranges = []
        for (p, net), cache in zip(models, ends):
            b1 = cache.setdefault(1.0, stream_bpp(net, x, 1.0))
            bl = cache.setdefault(float(net.levels), stream_bpp(net, x, float(net.levels)))
            ranges.append((b1, bl))
        lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
        targets = np.geomspace(lo, hi, args.targets).tolist()
        single_bpp = [stream_bpp(net, x) for _, net in singles]
        record = {"image": path.name, "range": [lo, hi], "single_bpp": single_bpp, "models": {}}
        for (p, net), cache in zip(models, ends):
            name = f"{model_name(net)} ({Path(p).name})"
            results = [hit(net, x, t, args.tol, args.max_iter, cache) for t in targets]
            rows[name]["targets"] += len(targets)
            rows[name]["hits"] += sum(r["hit"] for r in results)
            rows[name]["encodes"] += sum(r["encodes"] for r in results)
            record["models"][name] = [r["hit"] for r in results]
        if singles:
            hits = [any(abs(b / t - 1) <= args.tol for b in single_bpp) for t in targets]
            rows["single-rate set"]["targets"] += len(targets)
            rows["single-rate set"]["hits"] += sum(hits)
            record["models"]["single-rate set"] = hits
        per_image.append(record)
        print(f"{path.name}: range {lo:.3f}..{hi:.3f} bpp, " +
              ", ".join(f"{k}: {sum(v)}/{len(v)}" for k, v in record["models"].items()), flush=True)
    return {"tol": args.tol, "targets_per_image": args.targets, "images": len(images), "folder": str(args.d),
            "singles": [str(p) for p, _ in singles], "rows": rows, "per_image": per_image}


def markdown(result: Dict) -> str:
    lines = [
        f"Targets within +/-{100 * result['tol']:g} % of the requested bpp: {result['targets_per_image']} log-spaced "
        f"targets per image over the range every variable-rate model reaches, {result['images']} image(s) from "
        f"{result['folder']}.",
        "",
        "| model | targets hit | mean encodes per target |",
        "|---|---:|---:|",
    ]
    for name, r in result["rows"].items():
        enc = f"{r['encodes'] / r['targets']:.1f}" if "single" not in name else "1 per model"
        lines.append(f"| {name} | {r['hits']} / {r['targets']} | {enc} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="variable-rate checkpoint (repeatable)")
    p.add_argument("--single", nargs="*", default=[], help="single-rate checkpoints (one set)")
    p.add_argument("-d", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"),
                   help="image folder (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=4, help="images of -d used (default: %(default)s)")
    p.add_argument("--targets", type=int, default=16, help="log-spaced bpp targets per image (default: %(default)s)")
    p.add_argument("--tol", type=float, default=0.01, help="a target is hit within this relative bpp error (default: %(default)s)")
    p.add_argument("--max-iter", type=int, default=12, help="at most this many encodes per target (regula falsi on log-bpp; default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    args = p.parse_args(argv)
    if not args.model:
        p.error("pass at least one variable-rate --model")
    result = run(args)
    print(markdown(result))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
