#!/usr/bin/env python3
"""One Kodak point per single-rate checkpoint: the recipe comparisons of issue 16, section 1.

Codes every Kodak image with each checkpoint (its EMA weights where it has them; real
bitstreams) and prints a markdown table of mean bpp, PSNR, MS-SSIM and the rate-distortion
loss the models are trained on, ``lambda * 255^2 * MSE + bpp`` (per image, averaged), with the
checkpoint's training step. Comparing runs at one lambda by that loss is fair even when their
bpp differ a little.

  python results/recipe_kodak.py runs/recipe/patch-128-x8/ckpt-0002000.pt runs/recipe/patch-256-x2/ckpt-0002000.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gainedvae.checkpoint import load_checkpoint, read_checkpoint
from gainedvae.evaluate import evaluate_model, list_images


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="single-rate training checkpoints or exports")
    p.add_argument("-d", "--dataset", default="../shared/data/kodak", help="image folder (default: %(default)s)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="which weights of a training checkpoint")
    p.add_argument("--json", default=None, help="also write the rows here")
    return p.parse_args(argv)


def point(path: str, images, weights: str) -> dict:
    net = load_checkpoint(path, weights=weights)
    lmbda = float(net.lambdas[0])
    rows = evaluate_model(net, images, [float("nan")], progress=False)
    mse = [10 ** (-r.psnr / 10) for r in rows]  # per-image MSE of the 8-bit reconstruction, on [0, 1]
    loss = sum(lmbda * 255.0**2 * m + r.bpp for m, r in zip(mse, rows)) / len(rows)
    payload = read_checkpoint(path)
    return {"checkpoint": path, "step": payload.get("step"), "lambda": lmbda, "weights": weights,
            "bpp": sum(r.bpp for r in rows) / len(rows), "psnr": sum(r.psnr for r in rows) / len(rows),
            "ms_ssim": sum(r.ms_ssim for r in rows) / len(rows), "loss": loss}


def main(argv=None) -> int:
    args = parse_args(argv)
    images = list_images(Path(args.dataset))
    out = [point(c, images, args.weights) for c in args.checkpoints]
    print(f"| checkpoint | step | lambda | weights | bpp | PSNR (dB) | MS-SSIM | loss |\n|---|---:|---:|---|---:|---:|---:|---:|")
    for r in out:
        print(f"| {r['checkpoint']} | {r['step']} | {r['lambda']} | {r['weights']} | {r['bpp']:.4f} | {r['psnr']:.3f} | "
              f"{r['ms_ssim']:.4f} | {r['loss']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
