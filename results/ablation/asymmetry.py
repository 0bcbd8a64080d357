#!/usr/bin/env python3
"""How asymmetric did the asymmetric Gaussian become? Left / right scale ratio on Kodak.

  python results/ablation/asymmetry.py runs/protocol/ablation-asymmetric/ckpt-0008000.pt \
      -d ../shared/data/kodak --max-images 4 --quality 4

Prints statistics of |log2(s_left / s_right)| over every latent element of ``y`` (the
model starts from the Gaussian, where it is 0 everywhere).
"""

import argparse
import sys
from pathlib import Path

import torch


import gainedvae
from gainedvae.evaluate import list_images, read_image


@torch.inference_mode()
def log_ratios(net, images, quality: float) -> torch.Tensor:
    if getattr(net, "entropy_model", None) != "asymmetric":
        raise SystemExit(f"asymmetry.py: error: expected an asymmetric-Gaussian model, got entropy_model="
                         f"{getattr(net, 'entropy_model', None)!r}")
    bound = float(net.gaussian_conditional.lower_bound_scale.bound)
    found = []
    orig = net._entropy_params

    def record(params):
        scales, means = orig(params)
        left, right = scales.chunk(2, 1)
        found.append(torch.log2(left.clamp_min(bound) / right.clamp_min(bound)).flatten())
        return scales, means

    net._entropy_params = record
    for path in images:
        x = read_image(path).float() / 255
        net(x[None] if x.dim() == 3 else x, quality=quality)
    return torch.cat(found)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint of a model trained with --entropy-model asymmetric")
    p.add_argument("-d", default="../shared/data/kodak", help="image folder (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=4, help="images of -d used (default: %(default)s)")
    p.add_argument("--quality", type=float, default=4.0, help="quality at which the scales are compared (default: %(default)s)")
    args = p.parse_args(argv)
    net = gainedvae.load_checkpoint(args.checkpoint)
    a = log_ratios(net, list_images(Path(args.d), args.max_images), args.quality).abs()
    print(f"|log2(s_left / s_right)| over {a.numel()} elements of y at quality {args.quality:g}: median {a.median():.3f}, "
          f"mean {a.mean():.3f}, 90th percentile {a.quantile(0.9):.3f}; elements whose scales differ by more "
          f"than 10 %: {100 * (a > torch.log2(torch.tensor(1.1))).float().mean():.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
