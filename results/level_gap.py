#!/usr/bin/env python3
"""Where a gained model loses to the single-rate set: one row per trained level (issue 21).

For every integer quality ``q`` of the gained sweep (level ``q - 1``, trained at ``lambdas[q - 1]``)
the row puts the gained point beside the single-rate model of the same lambda and reads the
single-rate curve (PCHIP, as the BD metrics: PSNR over log bpp) at the gained point:

* ``dPSNR``: gained PSNR minus the single-rate curve's PSNR at the gained bpp (dB; > 0 = gained better);
* ``dRate``: gained bpp over the single-rate curve's bpp at the gained PSNR, minus 1 (%; < 0 = better);
* the same ``dPSNR`` on MS-SSIM in dB.

Outside the single-rate curve's range the interpolated columns are empty (no extrapolation). The
last lines give the bpp range each covers (the gained model's lowest and highest quality, the
single-rate set's lowest and highest lambda).

  python results/level_gap.py results/kodak/gained-mbt2018-mean.json \\
      results/kodak/mbt2018-mean-single-rate.json -o results/kodak/level-gap.md

The gained JSON is ``eval_gain.py``'s (its ``lambdas``); the single-rate one is the merged curve
``eval_gain.py --baseline <single-rate checkpoints>`` writes (its ``results.lambda``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gainedvae.checkpoint import atomic_write_bytes  # noqa: E402


def _curve(x: Sequence[float], y: Sequence[float]):
    """PCHIP through (x, y) sorted by x; None with fewer than 2 points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if x.size < 2 or np.any(np.diff(x) <= 0):
        return None
    return PchipInterpolator(x, y, extrapolate=False)


def _at(curve, value: float) -> Optional[float]:
    if curve is None:
        return None
    v = float(curve(value))
    return None if math.isnan(v) else v


def level_gap(gained: Dict, singles: Dict, lambdas: Optional[Sequence[float]] = None) -> Dict:
    """Rows per trained level of ``gained`` against the merged single-rate curve ``singles``."""
    lambdas = list(lambdas if lambdas is not None else gained.get("lambdas") or [])
    if not lambdas:
        raise ValueError(f"{gained.get('name')}: no 'lambdas' in the gained results (give --lambdas)")
    g, s = gained["results"], singles["results"]
    if "lambda" not in s or any(v is None for v in s["lambda"]):
        raise ValueError(f"{singles.get('name')}: expected a single-rate curve with 'lambda' per point")
    log_bpp = np.log(np.asarray(s["bpp"], dtype=np.float64))
    psnr_at_rate = _curve(log_bpp, s["psnr-rgb"])
    msssim_at_rate = _curve(log_bpp, s["ms-ssim-rgb-db"])
    rate_at_psnr = _curve(s["psnr-rgb"], log_bpp)
    by_lambda = {round(float(v), 6): i for i, v in enumerate(s["lambda"])}
    rows: List[Dict] = []
    for i, q in enumerate(g["quality"]):
        if q is None or float(q) != int(q) or not 1 <= int(q) <= len(lambdas):
            continue
        lam = float(lambdas[int(q) - 1])
        bpp, p, m = g["bpp"][i], g["psnr-rgb"][i], g["ms-ssim-rgb-db"][i]
        row = {"quality": int(q), "lambda": lam, "bpp": bpp, "psnr": p, "ms_ssim_db": m}
        j = by_lambda.get(round(lam, 6))
        row["single_bpp"] = s["bpp"][j] if j is not None else None
        row["single_psnr"] = s["psnr-rgb"][j] if j is not None else None
        ref_p = _at(psnr_at_rate, math.log(bpp))
        ref_m = _at(msssim_at_rate, math.log(bpp))
        ref_r = _at(rate_at_psnr, p)
        row["d_psnr"] = None if ref_p is None else p - ref_p
        row["d_ms_ssim_db"] = None if ref_m is None else m - ref_m
        row["d_rate_pct"] = None if ref_r is None else (bpp / math.exp(ref_r) - 1) * 100
        rows.append(row)
    if not rows:
        raise ValueError(f"{gained.get('name')}: no integer quality in 1..{len(lambdas)} in the sweep")
    return {
        "gained": gained.get("name"), "singles": singles.get("name"), "levels": rows,
        "gained_range_bpp": [rows[0]["bpp"], rows[-1]["bpp"]],
        "gained_range_psnr": [rows[0]["psnr"], rows[-1]["psnr"]],
        "singles_range_bpp": [min(s["bpp"]), max(s["bpp"])],
        "singles_range_psnr": [min(s["psnr-rgb"]), max(s["psnr-rgb"])],
    }


def _f(v: Optional[float], fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def markdown(gap: Dict, command: str = "") -> str:
    out = [f"Per-level gap of **{gap['gained']}** against **{gap['singles']}** (Kodak; dPSNR and dMS-SSIM at the",
           "gained point's bpp, dRate at its PSNR, on the single-rate curve: PCHIP, no extrapolation).", ""]
    if command:
        out += [f"`{command}`", ""]
    out += ["| q | lambda | gained bpp | gained PSNR | single bpp | single PSNR | dPSNR | dRate | dMS-SSIM |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in gap["levels"]:
        out.append(f"| {r['quality']} | {r['lambda']:g} | {r['bpp']:.4f} | {r['psnr']:.2f} | {_f(r['single_bpp'], '.4f')} "
                   f"| {_f(r['single_psnr'], '.2f')} | {_f(r['d_psnr'], '+.2f')} | {_f(r['d_rate_pct'], '+.1f')}"
                   f"{'' if r['d_rate_pct'] is None else ' %'} | {_f(r['d_ms_ssim_db'], '+.2f')} |")
    gb, sb, gp, sp = gap["gained_range_bpp"], gap["singles_range_bpp"], gap["gained_range_psnr"], gap["singles_range_psnr"]
    out += ["", f"Range: gained {gb[0]:.3f}-{gb[1]:.3f} bpp ({gp[0]:.2f}-{gp[1]:.2f} dB); "
                f"single-rate set {sb[0]:.3f}-{sb[1]:.3f} bpp ({sp[0]:.2f}-{sp[1]:.2f} dB)."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gained", type=Path, help="the gained model's results JSON (eval_gain.py)")
    ap.add_argument("singles", type=Path, help="the merged single-rate results JSON (eval_gain.py --baseline ...)")
    ap.add_argument("--lambdas", help="comma-separated lambdas of the gained levels (default: the JSON's 'lambdas')")
    ap.add_argument("-o", "--output", type=Path, help="write the markdown here (and the numbers beside it as .json)")
    args = ap.parse_args(argv)
    data = []
    for path in (args.gained, args.singles):
        try:
            data.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            raise SystemExit(f"{path}: cannot read a results JSON ({e})")
    lambdas = [float(v) for v in args.lambdas.split(",")] if args.lambdas else None
    try:
        gap = level_gap(*data, lambdas=lambdas)
    except ValueError as e:
        raise SystemExit(f"level_gap: {e}")
    command = "python results/level_gap.py " + " ".join(str(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = markdown(gap, command)
    print(text, end="")
    if args.output:
        atomic_write_bytes(args.output, text.encode())
        atomic_write_bytes(args.output.with_suffix(".json"), (json.dumps(gap, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
