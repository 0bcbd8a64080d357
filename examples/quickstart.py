#!/usr/bin/env python3
"""Quickstart: train a small gained model for a minute on CPU, then code a real photo
at integer and fractional qualities with real bitstreams.

Uses the photograph that ships with matplotlib (no download). Prints bpp and PSNR
per quality and writes the reconstructions to quickstart-out/.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

import gainedvae
from gainedvae.evaluate import code, default_images, read_image
from gainedvae.metrics import psnr, to_uint8
from gainedvae.train import TrainConfig, train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300, help="training steps of the small model (default: %(default)s)")
    p.add_argument("--out", default="quickstart-out", help="folder of the reconstructions (default: %(default)s)")
    args = p.parse_args(argv)

    images, source = default_images()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        shutil.copy(images[0], data / images[0].name)
        cfg = TrainConfig(data=(str(data),), model="gained-mbt2018-mean", N=32, M=48,
                          lambdas=(0.0067, 0.025, 0.0932), steps=args.steps, batch_size=4, patch_size=128,
                          lr=1e-3, milestones=(0.8,), val_split=0, save_every=args.steps,
                          val_every=args.steps + 1, save_dir=str(Path(tmp) / "run"))
        print(f"training gained-mbt2018-mean (N=32, M=48, 3 levels) for {args.steps} steps on {source}")
        net = gainedvae.load_checkpoint(train(cfg))

    out = Path(args.out)
    out.mkdir(exist_ok=True)
    ref = read_image(images[0])
    x = ref.float() / 255
    print(f"\n{'quality':>8} {'bytes':>8} {'bpp':>7} {'PSNR':>7}")
    from PIL import Image

    for q in (1, 1.5, 2, 2.5, 3):
        x_hat, nbytes, _, _, _ = code(net, x, q)
        rec = to_uint8(x_hat)
        print(f"{q:8.2f} {nbytes:8d} {nbytes * 8 / ref[0, 0].numel():7.3f} {psnr(ref, rec):7.2f}")
        Image.fromarray(rec[0].permute(1, 2, 0).numpy()).save(out / f"q{q}.png")
    print(f"\nreconstructions in {out}/ (a {args.steps}-step model: expect low PSNR; "
          "see README 'Training' for real runs)")


if __name__ == "__main__":
    main()
