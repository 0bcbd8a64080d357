#!/usr/bin/env python3
"""First run: the shipped codec on a real photograph, against JPEG and WebP at the same file size.

Codes the photograph that ships with matplotlib (no download) with the shipped gained model at
several qualities (real ``.gvae`` files, header included), codes it with Pillow's JPEG and WebP at
the quality whose file is the largest not exceeding ours (matched file size), and prints one table
(bytes, bpp, PSNR, MS-SSIM). Writes to ``--out``:

- ``table.csv``: the table;
- ``rd-psnr.png``: PSNR against bpp of the three codecs;
- ``crops.png``: original / ours / JPEG / WebP crops at the same file size (``--crop-quality``).

Runs offline on the CPU in well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

import gainedvae
from gainedvae.codec import decode, encode, load_image, tensor_to_image
from gainedvae.evaluate import default_images
from gainedvae.metrics import ms_ssim, psnr
from gainedvae.plot import Curve, rd_plot

PILLOW = {"jpeg": "JPEG", "webp": "WEBP"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=None, help="image to code (default: matplotlib's sample photograph)")
    p.add_argument("--checkpoint", default=None, help="model to use (default: the shipped model)")
    p.add_argument("--qualities", default=None,
                   help="comma-separated qualities of our codec, floats in [1, L] (default: every trained level, 1..L)")
    p.add_argument("--crop-quality", type=float, default=2.0,
                   help="quality of the crop comparison picture (default: %(default)s)")
    p.add_argument("--crop", type=int, nargs=3, metavar=("TOP", "LEFT", "SIZE"), default=None,
                   help="crop window in pixels (default: a centred square of a third of the shorter side)")
    p.add_argument("--out", default="first-run-out", help="output folder (default: %(default)s)")
    return p.parse_args(argv)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` uint8, the layout of :mod:`gainedvae.metrics`."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C")).permute(2, 0, 1)[None]


def measure(ref: np.ndarray, rec: np.ndarray, nbytes: int) -> Dict[str, float]:
    a, b = to_tensor(ref), to_tensor(rec)
    return {"bytes": nbytes, "bpp": 8 * nbytes / (ref.shape[0] * ref.shape[1]), "psnr": psnr(a, b), "ms_ssim": ms_ssim(a, b)}


def code_ours(net, rgb: np.ndarray, quality: float) -> Tuple[int, np.ndarray]:
    """A real ``.gvae`` file at ``quality``: its size and its decoded image."""
    data = encode(net, rgb, quality)
    return len(data), tensor_to_image(decode(net, data))


def pillow_bytes(img: Image.Image, codec: str, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=PILLOW[codec], quality=quality)
    return buf.getvalue()


def code_pillow_at_size(rgb: np.ndarray, codec: str, max_bytes: int) -> Tuple[int, int, np.ndarray]:
    """Pillow ``codec`` at the highest quality (1..100) whose file is at most ``max_bytes``
    (quality 1 when even that is larger): ``(quality, bytes, decoded image)``. Bisection; file
    sizes of both codecs grow with the quality except for rare one-step dips, which can only
    make the match slightly smaller than ours."""
    img = Image.fromarray(rgb)
    lo, hi = 1, 100
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(pillow_bytes(img, codec, mid)) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    data = pillow_bytes(img, codec, lo)
    return lo, len(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def compare(net, rgb: np.ndarray, qualities: List[float]) -> Tuple[List[Dict], Dict]:
    """Table rows for every quality, and the reconstructions for each (quality, codec)."""
    rows, recs = [], {}
    for q in qualities:
        nbytes, rec = code_ours(net, rgb, q)
        recs[(q, "ours")] = rec
        rows.append({"quality": q, "codec": "gainedvae", "setting": f"q={q:g}", **measure(rgb, rec, nbytes)})
        for codec in PILLOW:
            pq, pbytes, prec = code_pillow_at_size(rgb, codec, nbytes)
            recs[(q, codec)] = prec
            rows.append({"quality": q, "codec": f"pillow-{codec}", "setting": f"quality={pq}", **measure(rgb, prec, pbytes)})
    return rows, recs


def print_table(rows: List[Dict]) -> None:
    print(f"{'codec':<14} {'setting':<12} {'bytes':>8} {'bpp':>7} {'PSNR dB':>8} {'MS-SSIM':>8}")
    for r in rows:
        print(f"{r['codec']:<14} {r['setting']:<12} {r['bytes']:>8d} {r['bpp']:>7.3f} {r['psnr']:>8.2f} {r['ms_ssim']:>8.4f}")


def write_csv(rows: List[Dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(rows: List[Dict], path: Path, title: str) -> None:
    curves = []
    for codec, kind in (("gainedvae", "gained"), ("pillow-jpeg", "classic"), ("pillow-webp", "classic")):
        sel = [r for r in rows if r["codec"] == codec]
        curves.append(Curve(codec, {"bpp": [r["bpp"] for r in sel], "psnr-rgb": [r["psnr"] for r in sel]}, kind))
    rd_plot(curves, "psnr", path, title)


def crop_picture(rgb: np.ndarray, recs: Dict, rows: List[Dict], quality: float, window, path: Path) -> None:
    """Original / ours / JPEG / WebP crops side by side (2x nearest-neighbour), each labelled."""
    h, w = rgb.shape[:2]
    if window is None:
        size = min(h, w) // 3
        window = ((h - size) // 2, (w - size) // 2, size)
    top, left, size = window
    if top < 0 or left < 0 or size < 8 or top + size > h or left + size > w:
        raise SystemExit(f"--crop {top} {left} {size} does not fit in the {h}x{w} image")
    panels = [("original", rgb)]
    for codec, label in (("ours", "gainedvae"), ("jpeg", "pillow-jpeg"), ("webp", "pillow-webp")):
        r = next(r for r in rows if r["quality"] == quality and r["codec"] == label)
        panels.append((f"{label} {r['bytes']} B, {r['psnr']:.2f} dB", recs[(quality, codec)]))
    scale, label_h, gap = 2, 18, 4
    side = size * scale
    canvas = Image.new("RGB", (len(panels) * (side + gap) - gap, side + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(panels):
        tile = Image.fromarray(np.ascontiguousarray(img[top : top + size, left : left + size]))
        x0 = i * (side + gap)
        canvas.paste(tile.resize((side, side), Image.NEAREST), (x0, label_h))
        draw.text((x0 + 2, 3), label, fill="black")
    canvas.save(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.image:
        path, source = Path(args.image), args.image
    else:
        images, source = default_images()
        path = images[0]
    net = gainedvae.load_checkpoint(args.checkpoint)
    if args.qualities is None:
        qualities = [float(q) for q in range(1, net.levels + 1)]
    else:
        qualities = [float(q) for q in args.qualities.split(",")]
    if args.crop_quality not in qualities:
        qualities = sorted(qualities + [args.crop_quality])
    rgb = load_image(path)
    print(f"{source}: {rgb.shape[1]}x{rgb.shape[0]}; model {Path(net.checkpoint_path).name}\n")
    rows, recs = compare(net, rgb, qualities)
    print_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "table.csv")
    plot(rows, out / "rd-psnr.png", f"{path.name}: gainedvae vs Pillow JPEG / WebP at the same file size")
    crop_picture(rgb, recs, rows, args.crop_quality, args.crop, out / "crops.png")
    print(f"\nwrote {out}/table.csv, {out}/rd-psnr.png, {out}/crops.png ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
