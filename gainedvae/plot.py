"""Rate-distortion plots (matplotlib's Agg canvas: no display needed, no process-wide backend set)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .checkpoint import atomic_save

METRICS = {"psnr": ("psnr-rgb", "PSNR (RGB) [dB]"), "ms-ssim": ("ms-ssim-rgb-db", "MS-SSIM (RGB) [dB]")}


@dataclass
class Curve:
    """One entry of an RD plot.

    ``kind``: ``"gained"`` (line, integer qualities as markers), ``"single"``
    (markers), ``"anchor"`` (dashed, published results), ``"classic"``
    (dotted, codecs measured here).
    """

    label: str
    results: dict
    kind: str = "anchor"
    integer_mask: Optional[Sequence[bool]] = field(default=None)


def rd_plot(curves: List[Curve], metric: str, path: Path, title: str = "") -> Path:
    key, ylabel = METRICS[metric]
    fig = Figure(figsize=(8, 6), dpi=120)  # no pyplot: no backend chosen, no global figure state
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, c in enumerate(curves):
        res = c.results
        if key not in res or not res.get("bpp"):
            continue
        pts = sorted((b, v) for b, v in zip(res["bpp"], res[key]) if b is not None and v is not None)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if c.kind == "gained":
            (line,) = ax.plot(xs, ys, "-", lw=2, label=c.label, zorder=5)
            if c.integer_mask is not None:
                ib = [b for b, m in zip(res["bpp"], c.integer_mask) if m]
                iv = [v for v, m in zip(res[key], c.integer_mask) if m]
                ax.plot(ib, iv, "o", color=line.get_color(), ms=6, zorder=6)
        elif c.kind == "single":
            ax.plot(xs, ys, "s", ms=7, mfc="none", mew=2, label=c.label, zorder=7)
        elif c.kind == "classic":
            ax.plot(xs, ys, ":", marker=".", lw=1.5, label=c.label)
        else:
            ax.plot(xs, ys, "--", lw=1.2, alpha=0.8, label=c.label)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()

    def write(f):
        fig.savefig(f, format="png")

    atomic_save(write, path)
    return Path(path)
