"""How well can a latent of M channels reconstruct Kodak at all? (issue 16: the 37 dB target)

Two measurements, printed as one table:

* block PCA: Kodak cut into 16x16x3 blocks (the footprint of one latent position at 16x down-sampling),
  principal components fitted on kodim13-24 and applied to kodim01-12, keeping k of 768 components
  (a linear transform with k numbers per latent position, no quantisation);
* optionally, a trained model without quantisation: ``g_s(g_a(x))`` (the floor its transforms set,
  whatever the rate) and ``g_s(round(g_a(x)))`` on the same twelve images.

    python results/latent_floor.py [--checkpoint CKPT ...]
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
from PIL import Image

BLOCK = 16


def blocks(path: str) -> np.ndarray:
    x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    h, w = x.shape[0] // BLOCK * BLOCK, x.shape[1] // BLOCK * BLOCK
    x = x[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK, 3).transpose(0, 2, 1, 3, 4)
    return x.reshape(-1, BLOCK * BLOCK * 3)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`gainedvae.metrics.psnr` of two arrays on the 0-255 scale."""
    import torch

    from gainedvae.metrics import psnr as tensor_psnr

    return tensor_psnr(torch.from_numpy(np.asarray(a, dtype=np.float64)), torch.from_numpy(np.asarray(b, dtype=np.float64)))


def pca_psnr(files, components):
    train = np.concatenate([blocks(f) for f in files[12:]])
    mean = train.mean(0)
    _, vectors = np.linalg.eigh(np.cov((train - mean).T))
    vectors = vectors[:, ::-1]
    rows = []
    for k in components:
        basis = vectors[:, :k]
        values = [psnr(np.clip((b - mean) @ basis @ basis.T + mean, 0, 255), b) for b in map(blocks, files[:12])]
        rows.append((k, float(np.mean(values))))
    return rows


def model_psnr(checkpoint: str, files):
    import torch

    from gainedvae.checkpoint import load_checkpoint
    from gainedvae.imageio import load_image

    net = load_checkpoint(checkpoint)
    plain, rounded = [], []
    for f in files[:12]:
        img = load_image(f)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            y = net.g_a(x)
            for out, latent in ((plain, y), (rounded, torch.round(y))):
                x_hat = (net.g_s(latent).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
                out.append(psnr(x_hat, img.astype(np.float64)))
    return int(net.M), float(np.mean(plain)), float(np.mean(rounded))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kodak", default="../shared/data/kodak", help="folder of the 24 Kodak PNG files")
    parser.add_argument("--components", type=int, nargs="+", default=[48, 96, 144, 192, 256, 320],
                        help="numbers of principal components per 16x16x3 block")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="models to measure without quantisation")
    args = parser.parse_args(argv)
    files = sorted(glob.glob(os.path.join(args.kodak, "*.png")))
    if len(files) != 24:
        parser.error(f"{args.kodak}: expected the 24 Kodak PNG files, found {len(files)}")
    print("| reconstruction (kodim01-12) | numbers per 16x16 latent position | PSNR (dB) |")
    print("|---|---:|---:|")
    for k, value in pca_psnr(files, args.components):
        print(f"| block PCA, {k} of 768 components | {k} | {value:.2f} |")
    for ckpt in args.checkpoint:
        M, plain, rounded = model_psnr(ckpt, files)
        print(f"| `{ckpt}`: g_s(g_a(x)), no quantisation | {M} | {plain:.2f} |")
        print(f"| `{ckpt}`: g_s(round(g_a(x))) | {M} | {rounded:.2f} |")


if __name__ == "__main__":
    main()
