#!/usr/bin/env python
"""Codec speed and bit accuracy of a gained model against its plain CompressAI backbone.

Measures, on the same images in one run:

1. encode / decode time per image of the gained model against CompressAI's plain
   ``MeanScaleHyperprior`` (``ScaleHyperprior`` for ``gained-bmshj2018-hyperprior``)
   as CompressAI runs it (its own ``update()``, 64-level scale table; gainedvae codes
   with 256 levels and one-pass scale indexes, see ``gainedvae.entropy``)
   of the same N, M with the gained model's backbone weights (its state dict minus
   the ``gain.*`` keys). The two are interleaved (alternating order) and the median
   over ``--repeats`` is taken. Two gained rows: the model methods
   (``compress`` / ``decompress``, the cost of the gain units; goal <= 1.05x) and the
   whole codec (``gainedvae.codec.encode`` / ``decode``: container, CRC and the rANS
   guards).
2. real bits (the rANS streams) against the estimate from the eval-mode forward
   likelihoods ``net(x, quality=q)`` for every quality from 1 to L in steps of 0.5
   (goal: real / estimated <= 1.01).
3. rate-control cost: ``encode_to_bpp`` against one ``encode`` at the quality it
   found (goal <= 2x).

Prints a markdown table and writes the numbers atomically as JSON::

    python benchmarks/codec_speed.py                       # shipped model, matplotlib's sample photo
    python benchmarks/codec_speed.py --checkpoint runs/x/best.pt -d data/kodak --max-images 24
    python benchmarks/codec_speed.py --random 32 48 --repeats 3   # smoke run, random weights
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

import gainedvae
from gainedvae import codec
from gainedvae.checkpoint import atomic_write_bytes, hash_state_dict
from gainedvae.models import pad_to_multiple

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp"}


def default_image() -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def find_images(folder: Path, limit: int) -> List[Path]:
    if folder.is_file():
        return [folder]
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        sys.exit(f"codec_speed: error: no images in {folder}")
    return images[:limit] if limit else images


def build_models(args):
    if args.random:
        n, m = args.random
        torch.manual_seed(0)
        net = gainedvae.get_model(args.model, N=n, M=m)
        # spread the gains so that a random model's rate varies with the quality
        net.gain.init_from_lambdas(net.lambdas, reference=1e-4)
        net.update(force=True)
        net.eval()
        net.weights_hash = hash_state_dict(net.state_dict())  # as load_checkpoint does
        source = f"random weights N={n} M={m}"
    else:
        net = gainedvae.load_checkpoint(args.checkpoint)
        source = str(net.checkpoint_path)
    codec.require_gained(net)
    name = gainedvae.model_name(net)
    plain_name = name[len("gained-"):]
    plain = gainedvae.get_model(plain_name, N=int(net.N), M=int(net.M))
    backbone = {k: v for k, v in net.state_dict().items() if not k.startswith("gain.")}
    plain.load_state_dict(backbone)
    plain.update(force=True)  # CompressAI as its users run it: its own update() and 64-level scale table
    plain.eval()
    return net, plain, name, plain_name, source


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runs: Dict, repeats: int) -> Dict:
    """Median seconds of each callable in ``runs`` over ``repeats`` rounds, the order alternating."""
    samples = {key: [] for key in runs}
    order = list(runs)
    for r in range(repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            samples[key].append(timed(runs[key]))
    return {key: statistics.median(values) for key, values in samples.items()}


def speed(net, plain, images, quality, repeats) -> Dict[str, Dict[str, List[float]]]:
    """Median seconds per image for every (row, direction), interleaved."""
    rows = {"plain": {"enc": [], "dec": []}, "gained": {"enc": [], "dec": []}, "codec": {"enc": [], "dec": []}}
    with torch.inference_mode():
        for x in images:
            xp = pad_to_multiple(x, 64)  # CompressAI's models need it; the gained model pads internally
            enc_g = net.compress(x, quality)
            enc_p = plain.compress(xp)
            data = codec.encode(net, x, quality)
            runs = {
                ("plain", "enc"): lambda: plain.compress(xp),
                ("gained", "enc"): lambda: net.compress(x, quality),
                ("codec", "enc"): lambda: codec.encode(net, x, quality),
                ("plain", "dec"): lambda: plain.decompress(enc_p["strings"], enc_p["shape"]),
                ("gained", "dec"): lambda: net.decompress(enc_g["strings"], enc_g["shape"], quality),
                ("codec", "dec"): lambda: codec.decode(net, data),
            }
            for (row, direction), median in interleaved(runs, repeats).items():
                rows[row][direction].append(median)
    return rows


def stages(net, images, quality, repeats) -> Dict[str, float]:
    """Mean over images of the median seconds of each stage of compress / decompress: where the time
    goes. ``h_s exact`` is the fixed-point hyper path the coder runs (:mod:`gainedvae.exact`),
    ``h_s float`` the float ``h_s`` it replaces (what CompressAI's model runs), timed beside it."""
    q = net.scalar_quality(quality)
    per: Dict[str, List[float]] = {}
    with torch.inference_mode():
        for x in images:
            y = net.analysis(x) * net.gain.y(q)
            z = net._hyper_analysis(y) * net.gain.z(q)
            z_hat = net.entropy_bottleneck.decompress(net.entropy_bottleneck.compress(z), z.size()[-2:])
            params = net._coding_params(z_hat, q)
            y_strings = net._y_compress(y, params)
            y_hat = net._y_decompress(y_strings, params)
            runs = {
                "g_a (analysis)": lambda: net.analysis(x),
                "h_a and z coding": lambda: net.entropy_bottleneck.compress(net._hyper_analysis(y) * net.gain.z(q)),
                "h_s exact (coded)": lambda: net._coding_params(z_hat, q),
                "h_s float (not coded)": lambda: net.h_s(z_hat * net.gain.z_inv(q)),
                "y encode (rANS)": lambda: net._y_compress(y, params),
                "y decode (rANS)": lambda: net._y_decompress(y_strings, params),
                "g_s (synthesis)": lambda: net._synthesis_transform(y_hat * net.gain.y_inv(q), z_hat * net.gain.z_inv(q)),
            }
            for key, median in interleaved(runs, repeats).items():
                per.setdefault(key, []).append(median)
    return {k: statistics.mean(v) for k, v in per.items()}


def bits(net, images, step=0.5):
    """Real stream bits vs the eval-mode likelihood estimate, per quality."""
    qualities = [1 + step * i for i in range(int(round((net.levels - 1) / step)) + 1)]
    out = []
    with torch.inference_mode():
        for q in qualities:
            real = est = container = 0.0
            for x in images:
                enc = net.compress(x, q)
                real += 8 * sum(len(s) for strings in enc["strings"] for s in strings)
                container += 8 * len(codec.encode(net, x, q))
                likelihoods = net(x, quality=q)["likelihoods"]
                est += sum(float(-torch.log2(v).sum()) for v in likelihoods.values())
            pixels = sum(x.shape[-2] * x.shape[-1] for x in images)
            out.append({
                "quality": q,
                "real_bpp": real / pixels,
                "estimated_bpp": est / pixels,
                "container_bpp": container / pixels,
                "ratio": real / est if est > 0 else math.inf,
            })
    return out


def rate_control(net, images, repeats):
    out = []
    for x in images:
        lo = len(codec.encode(net, x, 1))
        hi = len(codec.encode(net, x, net.levels))
        target = 8 * math.sqrt(lo * hi) / (x.shape[-2] * x.shape[-1])
        times, encodes = [], []
        result = codec.encode_to_bpp(net, x, target)
        for r in range(repeats):  # interleaved, alternating order
            for which in ("rc", "enc") if r % 2 == 0 else ("enc", "rc"):
                if which == "rc":
                    result = codec.encode_to_bpp(net, x, target)
                    times.append(result.seconds)
                else:
                    encodes.append(timed(lambda: codec.encode(net, x, result.quality)))
        out.append({
            "target_bpp": target,
            "bpp": result.bpp,
            "quality": result.quality,
            "iterations": result.iterations,
            "clamped": result.clamped,
            "converged": result.converged,
            "rate_control_s": statistics.median(times),
            "encode_s": statistics.median(encodes),
            "ratio": statistics.median(times) / statistics.median(encodes),
        })
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="gained checkpoint (default: the shipped model)")
    parser.add_argument("--random", nargs=2, type=int, metavar=("N", "M"), help="random-weight model instead (smoke runs)")
    parser.add_argument("--model", default="gained-mbt2018-mean", help="registry name for --random")
    parser.add_argument("-d", "--images", type=Path, help="image folder or file (default: matplotlib's grace_hopper.jpg)")
    parser.add_argument("--max-images", type=int, default=0, help="use at most this many images (0: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats per image (median)")
    parser.add_argument("--quality", type=float, help="quality for the speed comparison (default: middle)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/codec_speed.json"),
                        help="JSON file of the measurements (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    net, plain, name, plain_name, source = build_models(args)
    paths = find_images(args.images or default_image(), args.max_images)
    images = [codec.image_to_tensor(codec.load_image(p)) for p in paths]
    quality = args.quality if args.quality is not None else (1 + net.levels) / 2

    t0 = time.perf_counter()
    rows = speed(net, plain, images, quality, args.repeats)
    stage_s = stages(net, images, quality, args.repeats)
    bit_rows = bits(net, images)
    rc_rows = rate_control(net, images, max(1, args.repeats // 2))

    def med(row, direction):
        return statistics.median(rows[row][direction])

    summary = {
        "encode_ratio_model": med("gained", "enc") / med("plain", "enc"),
        "decode_ratio_model": med("gained", "dec") / med("plain", "dec"),
        "encode_ratio_codec": med("codec", "enc") / med("plain", "enc"),
        "decode_ratio_codec": med("codec", "dec") / med("plain", "dec"),
        "max_bits_ratio": max(r["ratio"] for r in bit_rows),
        "max_rate_control_ratio": max(r["ratio"] for r in rc_rows),
    }
    result = {
        "model": name,
        "baseline": f"compressai {plain_name} (same N, M, backbone weights)",
        "weights": source,
        "N": int(net.N),
        "M": int(net.M),
        "levels": net.levels,
        "quality": quality,
        "images": [str(p) for p in paths],
        "sizes": [list(x.shape[-2:]) for x in images],
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "speed_s": rows,
        "stages_s": stage_s,
        "bits": bit_rows,
        "rate_control": rc_rows,
        "summary": summary,
        "goals": {"speed_ratio": 1.05, "bits_ratio": 1.01, "rate_control_ratio": 2.0},
        "wall_s": time.perf_counter() - t0,
    }

    print(f"## Codec speed: {name} vs {plain_name} ({source}; {len(images)} image(s); "
          f"{torch.get_num_threads()} thread(s); median of {args.repeats})\n")
    print("| coder | encode s | decode s | encode ratio | decode ratio |")
    print("|---|---|---|---|---|")
    for row, label in [("plain", f"{plain_name} (CompressAI)"), ("gained", f"{name} compress/decompress, q={quality:g}"),
                       ("codec", "gainedvae.codec encode/decode")]:
        print(f"| {label} | {med(row, 'enc'):.4f} | {med(row, 'dec'):.4f} | "
              f"{med(row, 'enc') / med('plain', 'enc'):.3f} | {med(row, 'dec') / med('plain', 'dec'):.3f} |")
    print(f"\n| stage, q={quality:g} | seconds per image |")
    print("|---|---|")
    for key, v in stage_s.items():
        print(f"| {key} | {v:.4f} |")
    print("\n| quality | real bpp (streams) | estimated bpp | real / estimated | .gvae bpp |")
    print("|---|---|---|---|---|")
    for r in bit_rows:
        print(f"| {r['quality']:g} | {r['real_bpp']:.4f} | {r['estimated_bpp']:.4f} | {r['ratio']:.4f} | {r['container_bpp']:.4f} |")
    print("\n| image | target bpp | bpp | quality | iterations | rate control s | one encode s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for p, r in zip(paths, rc_rows):
        flag = " (clamped)" if r["clamped"] else ("" if r["converged"] else " (not converged)")
        print(f"| {p.name} | {r['target_bpp']:.4f} | {r['bpp']:.4f}{flag} | {r['quality']:.3f} | {r['iterations']} | "
              f"{r['rate_control_s']:.3f} | {r['encode_s']:.3f} | {r['ratio']:.2f} |")
    print(f"\nsummary: encode x{summary['encode_ratio_model']:.3f} / decode x{summary['decode_ratio_model']:.3f} "
          f"(model; goal <= 1.05), codec x{summary['encode_ratio_codec']:.3f} / x{summary['decode_ratio_codec']:.3f}; "
          f"bits real/estimated max {summary['max_bits_ratio']:.4f} (goal <= 1.01); "
          f"rate control / encode max {summary['max_rate_control_ratio']:.2f} (goal <= 2)")

    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
