#!/usr/bin/env python3
"""Time and peak memory of encoder-side latent refinement (``codec.encode(..., refine=STEPS)``).

Each measurement runs in a fresh worker process (``--worker``) so that its peak RSS (``ru_maxrss``)
is its own: load the model, read the image, encode it plainly (``refine=0``) or with ``--steps``
refinement steps. Per size the table gives both encodes, the seconds per refinement step
(``(refined - plain) / steps``) and the extra peak memory per padded pixel, the figure behind
``gainedvae.codec.REFINE_BYTES_PER_PIXEL`` (the refusal of images whose gradients would not fit).
The test image is a Kodak photograph resized (bicubic) to each size.

  python benchmarks/refine.py --sizes 768x512 1536x1024 --steps 5 --threads 1 \\
      --json results/benchmarks/refine.json --md results/benchmarks/refine.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from large_images import add_image_args, make_image, write_outputs  # benchmarks/ is on sys.path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_args(p, ["768x512", "1536x1024"])
    p.add_argument("--steps", type=int, default=5, help="refinement steps of the refined encode (default: %(default)s)")
    p.add_argument("--worker", nargs=2, metavar=("STEPS", "IMAGE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(steps: int, image: str, args) -> dict:
    import torch

    import gainedvae
    from gainedvae import codec

    torch.set_num_threads(args.threads)
    net = gainedvae.load_checkpoint(args.checkpoint)
    x = codec.load_image(image, max_pixels=None)
    t0 = time.perf_counter()
    data = codec.encode(net, x, args.quality, refine=steps)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"steps": steps, "seconds": seconds, "peak_rss_bytes": rss, "bytes": len(data)}


def run_worker(steps: int, image: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(steps), str(image), "--quality", str(args.quality),
           "--threads", str(args.threads)] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        return {"steps": steps, "error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def padded_pixels(size: str) -> int:
    from gainedvae.container import padded_pixels as padded

    w, h = (int(v) for v in size.lower().split("x"))
    return padded(h, w)


def summarise(size: str, plain: dict, refined: dict) -> dict:
    row = {"size": size, "plain": plain, "refined": refined}
    if "error" not in plain and "error" not in refined:
        steps = refined["steps"]
        row["seconds_per_step"] = (refined["seconds"] - plain["seconds"]) / steps
        row["extra_bytes_per_pixel"] = (refined["peak_rss_bytes"] - plain["peak_rss_bytes"]) / padded_pixels(size)
    return row


def markdown(rows, threads: int) -> str:
    lines = [f"| image | plain encode (s) | refined encode (s) | s / step ({threads} thread) | "
             "peak RSS plain / refined (GiB) | extra bytes / pixel |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        p, f = r["plain"], r["refined"]
        if "seconds_per_step" not in r:
            lines.append(f"| {r['size']} | {p.get('error', '-')} | {f.get('error', '-')} | - | - | - |")
            continue
        lines.append(f"| {r['size']} | {p['seconds']:.2f} | {f['seconds']:.2f} ({f['steps']} steps) | "
                     f"{r['seconds_per_step']:.2f} | {p['peak_rss_bytes'] / 2**30:.2f} / {f['peak_rss_bytes'] / 2**30:.2f} | "
                     f"{r['extra_bytes_per_pixel']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], args)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            image = make_image(args.source, size, Path(tmp) / f"{size}.png")
            row = summarise(size, run_worker(0, image, args), run_worker(args.steps, image, args))
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_outputs(args, rows, markdown(rows, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
