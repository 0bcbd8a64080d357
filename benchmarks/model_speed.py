#!/usr/bin/env python3
"""Encode / decode time per image on CPU for every model family, gained vs its
single-rate twin, timed interleaved in one run (quality 4 for gained models).

Families (gained model | twin):

  bmshj2018-hyperprior      gained-bmshj2018-hyperprior        | bmshj2018-hyperprior
  mbt2018-mean              gained-mbt2018-mean                | mbt2018-mean
  mbt2018-mean asymmetric   gained-mbt2018-mean (asymmetric)   | mbt2018-mean
  mbt2018-mean gmm          gained-mbt2018-mean (gmm, K=3)     | mbt2018-mean
  mbt2018                   gained-mbt2018 (serial context)    | mbt2018 (CompressAI)
  mbt2018 checkerboard      gained-mbt2018-checkerboard        | gained-mbt2018 (serial: parallel vs serial decoding)
  cheng2020-attn gmm        gained-cheng2020-attn (GMM, K=3)   | cheng2020-attn-gmm

Without checkpoints the models have random weights (stated in the table):
timings of the transforms are then representative, but the entropy-coding
parts are not (random latents are nearly all zero, so the GMM's CDF windows
stay tiny and rANS codes few bits). Pass trained weights with --checkpoint.

  python benchmarks/model_speed.py                                  # Kodak, all families, N=128 M=192
  python benchmarks/model_speed.py -d ../shared/data/kodak --max-images 4 --checkpoint a.pt --checkpoint b.pt
  python benchmarks/model_speed.py --max-images 1 -N 16 -M 16 --size 64  # smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from gainedvae.checkpoint import atomic_write_bytes, load_checkpoint
from gainedvae.entropy import update_entropy_tables
from gainedvae.evaluate import list_images, read_image
from gainedvae.models import code, get_model, is_variable_rate, model_name

#: (family, (registry name, kwargs) of the gained model, (name, kwargs) of its twin)
FAMILIES = [
    ("bmshj2018-hyperprior", ("gained-bmshj2018-hyperprior", {}), ("bmshj2018-hyperprior", {})),
    ("mbt2018-mean", ("gained-mbt2018-mean", {}), ("mbt2018-mean", {})),
    ("mbt2018-mean asymmetric", ("gained-mbt2018-mean", {"entropy_model": "asymmetric"}), ("mbt2018-mean", {})),
    ("mbt2018-mean gmm", ("gained-mbt2018-mean", {"entropy_model": "gmm"}), ("mbt2018-mean", {})),
    ("mbt2018", ("gained-mbt2018", {}), ("mbt2018", {})),
    ("mbt2018 checkerboard", ("gained-mbt2018-checkerboard", {}), ("gained-mbt2018", {})),
    ("cheng2020-attn gmm", ("gained-cheng2020-attn", {}), ("cheng2020-attn-gmm", {})),
]


def label(name: str, kwargs: Dict) -> str:
    return f"{name} ({kwargs['entropy_model']})" if "entropy_model" in kwargs else name


class Models:
    """Builds (or loads) each model once; checkpoints are matched by registry name + entropy model."""

    def __init__(self, args):
        self.args = args
        self.cache: Dict[str, torch.nn.Module] = {}
        self.weights: Dict[str, str] = {}
        self.checkpoints = {}
        self.backbone = None
        if args.backbone:  # trained tensors for the random-weight models (see copy_matching)
            self.backbone = (load_checkpoint(args.backbone).state_dict(), Path(args.backbone).name)
        for path in args.checkpoint:
            net = load_checkpoint(path)
            kind = getattr(net, "entropy_model", "gaussian")
            key = label(model_name(net), {} if kind == "gaussian" else {"entropy_model": kind})
            self.checkpoints[key] = (net, path)

    def get(self, name: str, kwargs: Dict) -> torch.nn.Module:
        key = label(name, kwargs)
        if key not in self.cache:
            if key in self.checkpoints:
                net, path = self.checkpoints[key]
                self.weights[key] = f"checkpoint {Path(path).name}"
            else:
                torch.manual_seed(0)
                N, M = self.args.N, self.args.M
                widths = {"N": N} if "cheng2020" in name else {"N": N, "M": M}
                net = get_model(name, **widths, **kwargs)
                self.weights[key] = f"random (N={N}{'' if 'cheng2020' in name else f', M={M}'})"
                if self.backbone is not None:
                    n, total = copy_matching(net, self.backbone[0])
                    self.weights[key] += f", {n}/{total} tensors from {self.backbone[1]}"
                update_entropy_tables(net)
            self.cache[key] = net.eval()
        return self.cache[key]


def copy_matching(net: torch.nn.Module, trained: Dict[str, torch.Tensor]):
    """Copy every trained tensor whose name and shape fit ``net`` (a Gaussian ``h_s`` output
    layer is first widened for the asymmetric / GMM models); returns (copied, total).

    A random-weight model's latents are nearly all zero, so its entropy coding times say
    little; with the transforms (and gains) of a trained mbt2018-mean family model its
    latents look like real ones, while the parts that model lacks (context model,
    entropy parameters, attention) stay random."""
    from gainedvae.entropy import widen_gaussian_state

    if getattr(net, "entropy_model", "gaussian") != "gaussian":
        trained = widen_gaussian_state(net, trained)
    own = net.state_dict()
    tables = ("._quantized_cdf", "._offset", "._cdf_length")  # rebuilt by update()
    fit = {k: v for k, v in trained.items() if k in own and own[k].shape == v.shape and not k.endswith(tables)}
    torch.nn.Module.load_state_dict(net, fit, strict=False)
    return len(fit), len(own)


def time_one(net, x: torch.Tensor, quality: float):
    """(encode s, decode s, bytes) for one image (single-rate twins at their only rate)."""
    coded = code(net, x, quality if is_variable_rate(net) else None)
    return coded.encode_s, coded.decode_s, coded.nbytes


def load_images(args) -> List[torch.Tensor]:
    paths = list_images(Path(args.d), args.max_images)
    images = [read_image(p).float() / 255 for p in paths]
    if args.size:
        images = [x[..., : args.size, : args.size] for x in images]
    return images


def run(args) -> Dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    images = load_images(args)
    models = Models(args)
    families = [f for f in FAMILIES if not args.family or f[0] in args.family]
    times: Dict[str, Dict[str, List[float]]] = {}
    for family, gained, twin in families:
        pair = [gained, twin]
        for name, kw in pair:  # build (and warm up on the first image) before timing
            time_one(models.get(name, kw), images[0][..., :64, :64], args.quality)
        for x in images:
            for name, kw in pair:  # interleaved: gained, twin, gained, twin, ...
                key = label(name, kw)
                enc, dec, nbytes = time_one(models.get(name, kw), x, args.quality)
                t = times.setdefault(key, {"encode": [], "decode": [], "bpp": []})
                t["encode"].append(enc)
                t["decode"].append(dec)
                t["bpp"].append(8 * nbytes / (x.shape[-2] * x.shape[-1]))
    rows = []
    for family, gained, twin in families:
        g, s = label(*gained), label(*twin)
        for key, ref in ((g, s), (s, None)):
            t = times[key]
            row = {
                "family": family,
                "model": key,
                "weights": models.weights[key],
                "encode_s": statistics.mean(t["encode"]),
                "decode_s": statistics.mean(t["decode"]),
                "bpp": statistics.mean(t["bpp"]),
            }
            if ref is not None:
                row["encode_vs_twin"] = row["encode_s"] / statistics.mean(times[ref]["encode"])
                row["decode_vs_twin"] = row["decode_s"] / statistics.mean(times[ref]["decode"])
            rows.append(row)
    sizes = sorted({tuple(x.shape[-2:]) for x in images})
    return {
        "quality": args.quality,
        "images": len(images),
        "image_sizes": [list(s) for s in sizes],
        "folder": str(args.d),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
    }


def markdown(result: Dict) -> str:
    sizes = ", ".join(f"{h}x{w}" for h, w in result["image_sizes"])
    lines = [
        f"Encode / decode time per image, CPU ({result['cpu']}, {result['threads']} threads, torch {result['torch']}), "
        f"{result['images']} image(s) from {result['folder']} ({sizes}); gained models at quality {result['quality']:g}, "
        "single-rate twins at their only rate. Means over images; each gained model timed interleaved with its twin.",
        "",
        "| family | model | weights | encode s | decode s | bpp | encode / twin | decode / twin |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ratio_e = f"{r['encode_vs_twin']:.2f}" if "encode_vs_twin" in r else ""
        ratio_d = f"{r['decode_vs_twin']:.2f}" if "decode_vs_twin" in r else ""
        lines.append(
            f"| {r['family']} | {r['model']} | {r['weights']} | {r['encode_s']:.3f} | {r['decode_s']:.3f} | "
            f"{r['bpp']:.3f} | {ratio_e} | {ratio_d} |"
        )
    if any(r["weights"].startswith("random") for r in result["rows"]):
        lines += [
            "",
            "Random weights (no checkpoint for these models): transform timings are representative; entropy "
            "coding is only where the row says tensors came from a trained model (its transforms and gains give "
            "realistic latents; the rest, e.g. context model and entropy parameters, stays random, so bpp is not "
            "a result).",
        ]
    lines += [
        "",
        "The mbt2018 twin is CompressAI's own serial coder, which hands the whole Gaussian CDF table to the rANS "
        "decoder at every latent position; gained-mbt2018 hands over only the CDFs a position uses, so part of "
        "its decode-time ratio is implementation, not gains. The checkerboard row's twin is the serial gained-mbt2018.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"),
                   help="image folder (default ../shared/data/kodak, next to the repository)")
    p.add_argument("--max-images", type=int, default=None, help="use the first N images")
    p.add_argument("--size", type=int, default=None, help="crop images to at most SIZE x SIZE (smoke tests)")
    p.add_argument("-q", "--quality", type=float, default=4.0, help="quality of the gained models (default 4)")
    p.add_argument("-N", type=int, default=128, help="width N of models built with random weights")
    p.add_argument("-M", type=int, default=192, help="width M of models built with random weights (cheng2020: M = N)")
    p.add_argument("--checkpoint", action="append", default=[], help="trained weights (repeatable); matched by model name")
    p.add_argument("--backbone", default=None,
                   help="trained checkpoint whose matching tensors the random-weight models take (realistic latents)")
    p.add_argument("--family", action="append", default=[], help="only these families (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    result = run(args)
    print(markdown(result), end="")
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
