#!/usr/bin/env python3
"""results/checkerboard/README.md: the checkerboard context model against the mean-scale gained model (issue 21.4).

One table: BD-rate (PSNR and MS-SSIM dB) of ``gained-mbt2018-checkerboard`` against
``gained-mbt2018-mean`` of the same budget, read from the ``bd.json`` that
``results/evaluate.sh checkerboard`` writes, beside encode / decode time per image of both models
timed here, interleaved (the same timing code as ``results/peers_report.py``), their parameters and
float16 export sizes, and the decode-time ratio.

  python -m results.checkerboard_report --checkerboard runs/protocol/checkerboard-m192-from-36k/ckpt-0015000.pt \\
      --gained runs/protocol/gained-m192-from-36k/ckpt-0015000.pt -d ../shared/data/kodak --max-images 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gainedvae.checkpoint import atomic_write_bytes  # noqa: E402
from results.peers_report import add_timing_args, pct, read_json, time_models  # noqa: E402


def bd_against_mean_scale(bd: Optional[Dict]) -> Optional[Dict]:
    """The row of ``bd.json`` whose baseline is the mean-scale gained model (ours, not an anchor)."""
    if not bd:
        return None
    return next((r for r in bd["rows"] if r["baseline"].startswith("gained-mbt2018-mean") and "anchor" not in r["baseline"]), None)


def markdown(result: Dict, bd: Optional[Dict], budget: str = "") -> str:
    r = result["rows"]
    row = bd_against_mean_scale(bd)
    mib = 1 << 20
    out = ["# Checkerboard context model vs the mean-scale gained model, same budget (issue 21.4)", ""]
    if budget:
        out += [budget, ""]
    out += [
        "BD-rate: all 24 Kodak images, real rANS bitstreams, qualities 1..8 (`results/evaluate.sh checkerboard`,",
        "PCHIP, negative = the checkerboard model needs fewer bits). Times: mean over "
        f"{result['images']} Kodak image(s) of the median of {result['repeats']} interleaved runs at quality "
        f"{result['quality']:g}, CPU ({result['cpu']}, {result['threads']} thread(s), torch {result['torch']}).",
        "",
        "| model | BD-rate (PSNR) | BD-PSNR | BD-rate (MS-SSIM dB) | parameters | fp16 export | encode s | decode s | decode time ratio | bpp there |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = r["gained"]
    for key, label in (("gained", "gained-mbt2018-mean (baseline)"), ("checkerboard", "gained-mbt2018-checkerboard")):
        m = r[key]
        if key == "checkerboard" and row:
            bd_cells = f"{pct(row['bd_rate_psnr'])} | {row['bd_psnr']:+.2f} dB | {pct(row.get('bd_rate_ms_ssim'))}"
        elif key == "checkerboard":
            bd_cells = "n/a | n/a | n/a"
        else:
            bd_cells = "0 | 0 | 0"
        out.append(f"| {label} | {bd_cells} | {m['parameters'] / 1e6:.2f} M | {m['weights_fp16_bytes'] / mib:.2f} MiB "
                   f"| {m['encode_s']:.3f} | {m['decode_s']:.3f} | {m['decode_s'] / base['decode_s']:.2f} | {m['bpp']:.3f} |")
    if not row:
        out += ["", "(the BD-rate row is missing: run `results/evaluate.sh checkerboard` first)"]
    out += ["", "Checkpoints: " + ", ".join(f"{k} `{v['checkpoint']}`" for k, v in r.items()) + ".", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkerboard", required=True, help="gained-mbt2018-checkerboard checkpoint")
    p.add_argument("--gained", required=True, help="gained-mbt2018-mean checkpoint of the same budget")
    add_timing_args(p, max_images=8)
    p.add_argument("--bd", type=Path, default=HERE / "checkerboard" / "bd.json",
                   help="BD-rates of results/evaluate.sh checkerboard (default: %(default)s)")
    p.add_argument("--budget", default="", help="one line on the training budget, printed under the title")
    p.add_argument("--out", type=Path, default=HERE / "checkerboard" / "README.md",
                   help="markdown to write (and the timings beside it as .json) (default: %(default)s)")
    args = p.parse_args(argv)
    for flag, path in (("--checkerboard", args.checkerboard), ("--gained", args.gained)):
        if not Path(path).is_file():
            raise SystemExit(f"checkerboard_report: {flag} {path}: no such checkpoint")
    paths = {"gained": Path(args.gained), "checkerboard": Path(args.checkerboard)}
    result = time_models(paths, Path(args.d), args.max_images, args.quality, args.repeats, args.threads)
    text = markdown(result, read_json(args.bd, "BD-rates"), args.budget)
    atomic_write_bytes(args.out, text.encode())
    atomic_write_bytes(args.out.with_suffix(".json"), (json.dumps(result, indent=2) + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
