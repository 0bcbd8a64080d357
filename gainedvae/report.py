"""BD tables of a test curve against a set of baselines."""

from __future__ import annotations

from typing import Dict, List, Optional

from .bd import NoOverlap, bd_psnr, bd_rate


def _bd(fn, anchor: Dict, test: Dict, key: str) -> Optional[float]:
    a, t = anchor["results"], test["results"]
    if key not in a or key not in t:
        return None
    try:
        return fn(a["bpp"], a[key], t["bpp"], t[key])
    except NoOverlap:
        return "no overlap"  # type: ignore[return-value]
    except ValueError as err:  # fewer than 2 points
        return f"n/a ({err})"  # type: ignore[return-value]


def bd_table(test: Dict, baselines: List[Dict]) -> List[Dict]:
    """BD-rate (PSNR and MS-SSIM dB) and BD-PSNR of ``test`` against each baseline."""
    rows = []
    for base in baselines:
        rows.append({
            "baseline": base["name"],
            "bd_rate_psnr": _bd(bd_rate, base, test, "psnr-rgb"),
            "bd_psnr": _bd(bd_psnr, base, test, "psnr-rgb"),
            "bd_rate_ms_ssim": _bd(bd_rate, base, test, "ms-ssim-rgb-db"),
        })
    return rows


def _fmt(v, unit: str) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:+.2f} {unit}"


def bd_markdown(test_name: str, rows: List[Dict]) -> str:
    lines = [
        f"BD metrics of **{test_name}** against each baseline (negative BD-rate = fewer bits at equal quality;",
        "PCHIP interpolation over the overlapping range).",
        "",
        "| baseline | BD-rate (PSNR) | BD-PSNR | BD-rate (MS-SSIM dB) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['baseline']} | {_fmt(r['bd_rate_psnr'], '%')} | {_fmt(r['bd_psnr'], 'dB')} | "
                     f"{_fmt(r['bd_rate_ms_ssim'], '%')} |")
    return "\n".join(lines) + "\n"
