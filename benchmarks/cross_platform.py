#!/usr/bin/env python
"""Do ``.gvae`` files decode identically under other CPU kernels? (issue 17)

Encodes images with the default kernels of this machine, then decodes every file
in one subprocess per configuration of the kernels torch picks:

================== ==========================================================
``reference``      no change (the encoder's kernels, decoded in a fresh process)
``onednn-sse41``   ``ONEDNN_MAX_CPU_ISA=SSE41`` (oneDNN convolutions)
``onednn-avx``     ``ONEDNN_MAX_CPU_ISA=AVX``
``aten-default``   ``ATEN_CPU_CAPABILITY=default`` (torch's elementwise kernels, no SIMD)
``aten-avx2``      ``ATEN_CPU_CAPABILITY=avx2``
``no-mkldnn``      ``torch.backends.mkldnn`` disabled (native convolutions)
``1-thread``       ``torch.set_num_threads(1)`` (the encoder uses ``--threads``)
================== ==========================================================

For each file and configuration it records: a decode failure (``CodecError`` or a
crash of the worker), whether the latent ``y_hat`` (decoded symbols + means) equals
the encoder's own decode bit for bit, the largest 8-bit pixel difference to the
encoder's decode, and a *wrong image* (any pixel more than one level off). It runs
with any gainedvae version that has ``codec.encode`` / ``decode`` (the latent is
taken from the model's ``_y_decompress``), so the same script measures the code
before and after a change::

    python benchmarks/cross_platform.py --max-images 8                    # this checkout
    PYTHONPATH=/tmp/wt-before python benchmarks/cross_platform.py ...     # another one

Prints a markdown table and writes JSON (``--output``).

``--rate-cost`` measures instead what the fixed-point hyper path
(:mod:`gainedvae.exact`, format version 3) costs against the float ``h_s`` it replaces:
every image is coded at ``--qualities`` both ways (the float path is the model's
float ``GainedModel._coding_params``, encoder and decoder), BD-rate
(:func:`gainedvae.bd.bd_rate`, PCHIP) of the real file sizes against the 8-bit PSNR
of the decoded images, and the median ratio of the decode times (``codec.decode``)::

    python benchmarks/cross_platform.py --rate-cost --max-images 24 --qualities 1 2 3 4 5 6 7 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

CONFIGS: Dict[str, Dict[str, str]] = {
    "reference": {},
    "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "onednn-avx": {"ONEDNN_MAX_CPU_ISA": "AVX"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "no-mkldnn": {"GAINEDVAE_BENCH_NO_MKLDNN": "1"},
    "1-thread": {"GAINEDVAE_BENCH_THREADS": "1"},
}
DEFAULT_QUALITIES = [1, 2, 3, 4, 5, 6, 7, 8, 1.5, 4.5, 7.25]


def _load(checkpoint):
    import gainedvae

    return gainedvae.load_checkpoint(checkpoint)


def _capture_latent(net, store: List):
    """Record every ``y_hat`` the model's ``_y_decompress`` returns."""
    inner = net._y_decompress

    def wrapped(*args, **kwargs):
        out = inner(*args, **kwargs)
        store.append(out.detach().clone())
        return out

    net._y_decompress = wrapped


def worker(folder: Path, checkpoint, threads: int) -> None:
    """Decode every ``*.gvae`` in ``folder``; write ``<name>.<config>.npz`` next to it."""
    import torch

    from gainedvae import codec

    if os.environ.get("GAINEDVAE_BENCH_NO_MKLDNN"):
        torch.backends.mkldnn.enabled = False
    torch.set_num_threads(int(os.environ.get("GAINEDVAE_BENCH_THREADS", threads)))
    tag = os.environ["GAINEDVAE_BENCH_TAG"]
    net = _load(checkpoint)
    latents: List = []
    _capture_latent(net, latents)
    for path in sorted(folder.glob("*.gvae")):
        latents.clear()
        out = {}
        start = time.perf_counter()
        try:
            x_hat = codec.decode(net, path.read_bytes())
            out["pixels"] = codec.tensor_to_image(x_hat)
            out["y_hat"] = latents[-1].numpy()
        except Exception as err:  # a failed decode is a result, not a crash
            out["error"] = np.array(f"{type(err).__name__}: {err}")
        out["seconds"] = np.array(time.perf_counter() - start)
        np.savez(path.with_suffix(f".{tag}.npz"), **out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--data", type=Path, default=Path("/work/shared/data/kodak"), help="folder of PNG images (default: Kodak)")
    p.add_argument("--max-images", type=int, default=8, help="use the first N images of --data, sorted by name (default 8)")
    p.add_argument("--crop", type=int, default=0, help="centre-crop images to CROP x CROP pixels (0: whole image, the default)")
    p.add_argument("--qualities", type=float, nargs="+", default=DEFAULT_QUALITIES, help="qualities to encode each image at (default: 1..8, 1.5, 4.5, 7.25)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="decoder configurations (default: all)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped gained-mbt2018-mean)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the encoder and of every decoder but 1-thread (default 2)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the .gvae files and decodes here (default: a temporary folder)")
    p.add_argument("--output", type=Path, default=Path("results/benchmarks/cross_platform.json"), help="JSON file to write (default: %(default)s)")
    p.add_argument("--label", default="", help="name of this run in the table and the JSON (e.g. 'before', 'after')")
    p.add_argument("--rate-cost", action="store_true", help="measure BD-rate and decode time of the fixed-point path against the float one instead (this checkout only)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.checkpoint, args.threads)
        return 0

    import torch

    from gainedvae import codec

    torch.set_num_threads(args.threads)
    net = _load(args.checkpoint)
    if args.rate_cost:
        return rate_cost(net, args)
    latents: List = []
    _capture_latent(net, latents)
    images = sorted(args.data.glob("*.png"))[: args.max_images]
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cross_platform.")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
        for old in list(work.glob("*.gvae")) + list(work.glob("*.npz")):
            old.unlink()
    reference = {}
    for img in images:
        x = codec.load_image(img)
        if args.crop:
            h, w = x.shape[:2]
            c = min(args.crop, h, w)
            x = np.ascontiguousarray(x[(h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c])
        for q in args.qualities:
            name = f"{img.stem}_q{q:g}"
            data = codec.encode(net, x, q)
            (work / f"{name}.gvae").write_bytes(data)
            latents.clear()
            x_hat = codec.decode(net, data)
            reference[name] = (codec.tensor_to_image(x_hat).astype(np.int16), latents[-1].numpy(), len(data))
    env_base = dict(os.environ)
    for key in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA"):
        env_base.pop(key, None)
    rows = []
    for cfg in args.configs:
        env = dict(env_base, **CONFIGS[cfg], GAINEDVAE_BENCH_TAG=cfg)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(work), "--threads", str(args.threads)]
        if args.checkpoint:
            cmd += ["--checkpoint", str(args.checkpoint)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        stats = {"config": cfg, "env": CONFIGS[cfg], "files": 0, "failed": 0, "wrong_images": 0, "max_pixel_diff": 0,
                 "latent_mismatches": 0, "decode_seconds": 0.0, "errors": [], "worker_rc": proc.returncode}
        for name, (ref_px, ref_y, _) in reference.items():
            stats["files"] += 1
            path = work / f"{name}.{cfg}.npz"
            if not path.exists():
                stats["failed"] += 1
                stats["errors"].append(f"{name}: worker died (rc {proc.returncode}): {proc.stderr[-300:]}")
                continue
            got = np.load(path)
            stats["decode_seconds"] += float(got["seconds"])
            if "error" in got:
                stats["failed"] += 1
                stats["errors"].append(f"{name}: {got['error']}")
                continue
            diff = int(np.abs(got["pixels"].astype(np.int16) - ref_px).max())
            stats["max_pixel_diff"] = max(stats["max_pixel_diff"], diff)
            stats["wrong_images"] += diff > 1
            same = got["y_hat"].shape == ref_y.shape and np.array_equal(got["y_hat"].view(np.uint32), ref_y.view(np.uint32))
            stats["latent_mismatches"] += not same
        rows.append(stats)
    result = {
        "label": args.label,
        "images": [p.name for p in images],
        "crop": args.crop,
        "qualities": args.qualities,
        "threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mean_bytes": float(np.mean([r[2] for r in reference.values()])),
        "configs": rows,
    }
    lines = [
        f"{args.label or 'run'}: {len(images)} images x {len(args.qualities)} qualities"
        + (f", {args.crop}x{args.crop} crops" if args.crop else "")
        + f", encoder {args.threads} threads, torch {torch.__version__} ({result['cpu_capability']})",
        "",
        "| decoder config | files | failed decodes | wrong images (> 1 level) | max pixel diff | latent mismatches | decode s/file |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ok = r["files"] - r["failed"]
        lines.append(
            f"| {r['config']} | {r['files']} | {r['failed']} | {r['wrong_images']} | {r['max_pixel_diff']} | "
            f"{r['latent_mismatches']} | {r['decode_seconds'] / max(ok, 1):.2f} |"
        )
    print("\n".join(lines))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.output.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    os.replace(tmp_out, args.output)
    if tmp is not None:
        tmp.cleanup()
    return 0


def _images(args):
    from gainedvae import codec

    for img in sorted(args.data.glob("*.png"))[: args.max_images]:
        x = codec.load_image(img)
        if args.crop:
            h, w = x.shape[:2]
            c = min(args.crop, h, w)
            x = np.ascontiguousarray(x[(h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c])
        yield img, x


def rate_cost(net, args) -> int:
    """BD-rate and decode-time ratio of the fixed-point hyper path against the float one."""
    import statistics
    import types

    from gainedvae import bd, codec
    from gainedvae.models import GainedModel

    exact_params = net._coding_params
    float_params = types.MethodType(GainedModel._coding_params, net)
    curves = {"fixed": {}, "float": {}}
    times = {"fixed": [], "float": []}
    names = []
    for img, x in _images(args):
        names.append(img.name)
        for path, fn in (("fixed", exact_params), ("float", float_params)):
            net._coding_params = fn
            for q in args.qualities:
                data = codec.encode(net, x, q)
                start = time.perf_counter()
                x_hat = codec.decode(net, data)
                times[path].append(time.perf_counter() - start)
                bpp = len(data) * 8 / (x.shape[0] * x.shape[1])
                curves[path].setdefault(q, []).append((bpp, codec.psnr_8bit(x, x_hat)))
    del net._coding_params
    per_image = []
    for i in range(len(names)):
        ref = [curves["float"][q][i] for q in args.qualities]
        new = [curves["fixed"][q][i] for q in args.qualities]
        per_image.append(bd.bd_rate([r[0] for r in ref], [r[1] for r in ref], [n[0] for n in new], [n[1] for n in new]))
    mean = {path: [(float(np.mean([v[0] for v in curves[path][q]])), float(np.mean([v[1] for v in curves[path][q]]))) for q in args.qualities] for path in curves}
    bd_mean = bd.bd_rate([m[0] for m in mean["float"]], [m[1] for m in mean["float"]], [m[0] for m in mean["fixed"]], [m[1] for m in mean["fixed"]])
    ratios = [a / b for a, b in zip(times["fixed"], times["float"])]
    result = {
        "images": names, "crop": args.crop, "qualities": args.qualities, "threads": args.threads,
        "bd_rate_mean_curve_percent": bd_mean, "bd_rate_per_image_mean_percent": float(np.mean(per_image)),
        "bd_rate_per_image_percent": per_image, "mean_curves": mean,
        "decode_seconds_median": {k: statistics.median(v) for k, v in times.items()},
        "decode_time_ratio_median": statistics.median(ratios),
    }
    lines = [
        f"rate cost of the fixed-point hyper path: {len(names)} images x {len(args.qualities)} qualities"
        + (f", {args.crop}x{args.crop} crops" if args.crop else ""),
        "",
        "| quality | float bpp | float PSNR | fixed bpp | fixed PSNR | bpp change |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for q, a, b in zip(args.qualities, mean["float"], mean["fixed"]):
        lines.append(f"| {q:g} | {a[0]:.4f} | {a[1]:.3f} | {b[0]:.4f} | {b[1]:.3f} | {100 * (b[0] / a[0] - 1):+.3f} % |")
    lines += [
        "",
        f"BD-rate fixed vs float: {bd_mean:+.3f} % (mean curve), {np.mean(per_image):+.3f} % (mean of per-image BD-rates)",
        f"decode time: median {result['decode_seconds_median']['fixed']:.3f} s fixed, "
        f"{result['decode_seconds_median']['float']:.3f} s float, median ratio {result['decode_time_ratio_median']:.3f}",
    ]
    print("\n".join(lines))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.output.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    os.replace(tmp_out, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
