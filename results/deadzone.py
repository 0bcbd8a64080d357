#!/usr/bin/env python3
"""Does a dead-zone quantiser help the plain encoder? (issue 16: a measured "no").

The coder codes ``r = round(y - mu)`` (``mu`` the conditional's means). A dead zone rounds toward
the mean instead, ``sign(r) * floor(|y - mu| + 0.5 - theta)``: fewer bits, more distortion, the
same decoder (the symbols are just other integers). For each ``--theta`` this codes every image at
the integer qualities (real rANS streams, bpp of the streams), decodes it, and prints the mean
bpp / PSNR per quality and the BD-rate (PCHIP, PSNR-RGB) against ``theta = 0`` (plain rounding).

  python results/deadzone.py -d ../shared/data/kodak --images kodim01 kodim05 kodim14 kodim21 --theta 0 0.05 0.1 0.15
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from gainedvae import codec, load_checkpoint
from gainedvae.bd import bd_rate
from gainedvae.models import stream_bytes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", default="../shared/data/kodak", help="image folder (default: %(default)s)")
    p.add_argument("--images", nargs="+", default=["kodim01", "kodim05", "kodim14", "kodim21"], help="image names (.png) in -d")
    p.add_argument("--theta", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15], help="dead-zone widths; 0 is plain rounding")
    p.add_argument("--checkpoint", default=None, help="model (default: the shipped model)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    return p.parse_args(argv)


@torch.inference_mode()
def code(net, x: torch.Tensor, quality: float, theta: float):
    """``(bpp, PSNR)`` of ``x`` coded at ``quality`` with a dead zone of ``theta``."""
    h, w = x.shape[-2:]
    q = net.scalar_quality(quality)
    y, z = net.gained_latents(net.analysis(x), q)
    z_hat = net.entropy_bottleneck.decompress(net.entropy_bottleneck.compress(z), z.size()[-2:])
    _, means = net._entropy_params(net._coding_params(z_hat, q))
    r = y - means
    enc = net.compress_latents(means + torch.sign(r) * torch.floor(r.abs() + 0.5 - theta), z, quality, (h, w))
    x_hat = net.decompress(enc["strings"], enc["shape"], quality)["x_hat"]
    return stream_bytes(enc["strings"]) * 8 / (h * w), codec.psnr_8bit(x, x_hat)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    net = load_checkpoint(args.checkpoint)
    qualities = [float(q) for q in range(1, net.levels + 1)]
    images = [codec.image_to_tensor(codec.load_image(Path(args.d) / f"{n}.png")) for n in args.images]
    curves = {t: np.mean([[code(net, x, q, t) for q in qualities] for x in images], axis=0) for t in args.theta}
    plain = curves[args.theta[0]]
    print(f"{len(images)} images ({', '.join(args.images)}), qualities 1..{net.levels}; BD-rate against theta = {args.theta[0]:g}")
    print("| theta | bpp per quality | PSNR (dB) per quality | BD-rate |")
    print("|---:|---|---|---:|")
    for t, c in curves.items():
        bd = bd_rate(plain[:, 0], plain[:, 1], c[:, 0], c[:, 1])
        print(f"| {t:g} | {' '.join(f'{v:.3f}' for v in c[:, 0])} | {' '.join(f'{v:.2f}' for v in c[:, 1])} | {bd:+.2f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
