#!/usr/bin/env python3
"""Rate control with latent refinement: the same target, plain against refined files.

For every image and ``--bpp`` target, ``codec.encode_to_bpp`` runs twice, plainly and with
``refine=--steps``. The table gives each file's quality, bpp and 8-bit PSNR, the PSNR the
refinement adds at the same target, and the refined search's cost: how many of its trials
were refined (each ``--steps`` steps) and its seconds.

  python benchmarks/refine_rate_control.py -d ../shared/data/kodak --max-images 2 --bpp 0.5 1.0 \\
      --steps 30 --threads 1 --json results/benchmarks/refine_rate_control.json --md results/benchmarks/refine_rate_control.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from gainedvae import codec, load_checkpoint
from gainedvae.atomic import atomic_write_bytes
from gainedvae.evaluate import list_images


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", default="../shared/data/kodak", help="image folder (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=3, help="first images of -d (default: %(default)s)")
    p.add_argument("--bpp", type=float, nargs="+", default=[0.3, 1.0], help="bpp targets (default: %(default)s)")
    p.add_argument("--steps", type=int, default=60, help="refinement steps (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="model (default: the shipped model)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--md", default=None, help="write the markdown table here")
    return p.parse_args(argv)


def measure(net, image, target: float, steps: int) -> dict:
    psnr = lambda r: codec.psnr_8bit(image, codec.decode_image(net, r.data))  # noqa: E731
    plain = codec.encode_to_bpp(net, image, target)
    refined = codec.encode_to_bpp(net, image, target, refine=steps)
    return {
        "target": target,
        "plain": {"quality": plain.quality, "bpp": plain.bpp, "psnr": psnr(plain), "seconds": plain.seconds},
        "refined": {"quality": refined.quality, "bpp": refined.bpp, "psnr": psnr(refined), "seconds": refined.seconds,
                    "trials": refined.refined, "converged": refined.converged, "clamped": refined.clamped},
    }


def markdown(rows, steps: int) -> str:
    lines = [f"| image | target bpp | plain q / bpp / PSNR | refined ({steps} steps) q / bpp / PSNR | dPSNR (dB) | refined trials | refined search (s) |",
             "|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        p, f = r["plain"], r["refined"]
        note = "" if f["converged"] else (" (clamped)" if f["clamped"] else " (not within tol)")
        lines.append(f"| {r['image']} | {r['target']:g} | {p['quality']:.2f} / {p['bpp']:.4f} / {p['psnr']:.2f} | "
                     f"{f['quality']:.2f} / {f['bpp']:.4f} / {f['psnr']:.2f}{note} | {f['psnr'] - p['psnr']:+.2f} | "
                     f"{f['trials']} | {f['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    net = load_checkpoint(args.checkpoint)
    rows = []
    for path in list_images(Path(args.d), args.max_images):
        image = codec.load_image(path)
        for target in args.bpp:
            rows.append({"image": path.name, **measure(net, image, target, args.steps)})
            print(markdown(rows[-1:], args.steps).splitlines()[-1], flush=True)
    table = markdown(rows, args.steps)
    print(table)
    if args.json:
        atomic_write_bytes(args.json, json.dumps({"threads": args.threads, "steps": args.steps, "rows": rows}, indent=1).encode())
    if args.md:
        atomic_write_bytes(args.md, table.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
