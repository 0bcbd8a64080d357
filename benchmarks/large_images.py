#!/usr/bin/env python3
"""Peak memory and time of coding large images, tiled vs untiled (issue 20).

Every measurement runs in a fresh worker process (``--worker``) so that its peak RSS
(``ru_maxrss``) is its own: load the model, read the image, encode it to a ``.gvae`` file (or
decode that file to 8 bits with ``codec.decode_image``, the CLI's path), and report seconds, peak
RSS and hashes of the file and of the decoded pixels (tiled and untiled must agree). The test image is a Kodak photograph
upscaled (bicubic) to the requested size, so the content is photographic at every size.

  python benchmarks/large_images.py --sizes 3840x2160 6000x4000 --threads 1 \
      --json results/benchmarks/large_images.json --md results/benchmarks/large_images.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def add_image_args(p: argparse.ArgumentParser, sizes) -> None:
    """The flags of a per-image-size benchmark worker (this script's and ``benchmarks/refine.py``'s)."""
    p.add_argument("--sizes", nargs="+", default=sizes, help="WIDTHxHEIGHT of the test images")
    p.add_argument("--source", default="../shared/data/kodak/kodim23.png", help="photograph resized to each size")
    p.add_argument("--quality", type=float, default=4.0, help="quality to code at (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="model (default: the shipped model)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each worker (default: %(default)s)")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--md", default=None, help="write the markdown table here")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_args(p, ["3840x2160", "6000x4000"])
    p.add_argument("--modes", nargs="+", default=["tiled", "untiled"], choices=("tiled", "untiled"),
                   help="tiled: the models' default tiling; untiled: g_a / g_s / the fixed-point h_s on the whole image")
    p.add_argument("--worker", nargs=4, metavar=("OP", "MODE", "IMAGE", "GVAE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(op: str, mode: str, image: str, gvae: str, args) -> dict:
    import torch

    import gainedvae
    from gainedvae import codec

    torch.set_num_threads(args.threads)
    net = gainedvae.load_checkpoint(args.checkpoint)
    if mode == "untiled":
        net.analysis_tiling = net.synthesis_tiling = net.hyper_synthesis_tiling = None
    t0 = time.perf_counter()
    if op == "encode":
        data = codec.encode(net, codec.load_image(image, max_pixels=None), args.quality)
        Path(gvae).write_bytes(data)
        extra = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()[:16]}
    else:
        x = codec.decode_image(net, Path(gvae).read_bytes(), max_pixels=None)  # the CLI's path
        extra = {"shape": list(x.shape), "pixels_sha256": hashlib.sha256(x.tobytes()).hexdigest()[:16]}
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"op": op, "mode": mode, "seconds": seconds, "peak_rss_bytes": rss, **extra}


def make_image(source: str, size: str, out: Path) -> Path:
    from PIL import Image

    w, h = (int(v) for v in size.lower().split("x"))
    Image.open(source).convert("RGB").resize((w, h), Image.BICUBIC).save(out)
    return out


def run_worker(op, mode, image, gvae, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", op, mode, str(image), str(gvae), "--quality", str(args.quality),
           "--threads", str(args.threads)] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        return {"op": op, "mode": mode, "error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown(rows) -> str:
    lines = ["| image | mode | op | seconds | peak RSS (GiB) | notes |", "|---|---|---|---:|---:|---|"]
    for r in rows:
        note = r.get("error", f"{r['bytes']} bytes, sha256 {r['sha256']}" if "bytes" in r
                     else f"pixels sha256 {r.get('pixels_sha256', '?')}")
        sec = f"{r['seconds']:.1f}" if "seconds" in r else "-"
        rss = f"{r['peak_rss_bytes'] / 2**30:.2f}" if "peak_rss_bytes" in r else "-"
        lines.append(f"| {r['size']} | {r['mode']} | {r['op']} | {sec} | {rss} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            image = make_image(args.source, size, Path(tmp) / f"{size}.png")
            for mode in args.modes:
                gvae = Path(tmp) / f"{size}-{mode}.gvae"
                for op in ("encode", "decode"):
                    row = {"size": size, **run_worker(op, mode, image, gvae, args)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    write_outputs(args, rows, markdown(rows))
    return 0


def write_outputs(args, rows, table: str) -> None:
    """Print ``table``; write it to ``--md`` and the rows to ``--json`` (with the threads and quality)."""
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "quality": args.quality, "rows": rows}, indent=1))
    if args.md:
        Path(args.md).write_text(table)


if __name__ == "__main__":
    raise SystemExit(main())
