"""Evaluation of a ``gained-scgain`` model with quality maps (``eval_gain.py --mode scgain``).

Measured as :mod:`gainedvae.evaluate` measures everything (real rANS
bitstreams, 8-bit reconstructions), for every image and every trained level:

* uniform maps at several values (``--qmap-values``, default 0, 0.25, 0.5,
  0.75, 1): the uniform-map RD curves, one per value, written as one
  CompressAI-layout JSON with a ``qmap`` list next to ``quality``;
* a horizontal (0 at the left, 1 at the right) and a vertical (0 at the top,
  1 at the bottom) gradient;
* each ``--qmap mask.png`` (grayscale, white = high quality, resized to the
  image) as a region-of-interest map: PSNR inside (map >= 0.5) and outside.

PSNR inside / outside is reported for every non-uniform map (the region
``q >= 0.5`` and its complement). With ``--gain-checkpoint`` (a channel-gain
checkpoint or a results JSON) the plot shows the uniform-map curves next to
the ``gain`` curve, and ``bd.md`` compares the uniform 0.5 curve with it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import evaluate as ev
from .metrics import ms_ssim, ms_ssim_db, psnr, to_uint8
from .models import model_name, stream_bytes, takes_qmap
from .qmap import gradient_qmap, load_qmap, prepare_qmap

DEFAULT_QMAP_VALUES: Tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class MapRow:
    """One image coded at one quality with one map (field names as :class:`gainedvae.evaluate.Row`)."""

    image: str
    quality: float
    map: str  # "uniform", "gradient-h", "gradient-v" or "roi:<mask file name>"
    map_value: float  # the value of a uniform map, NaN otherwise
    map_mean: float
    bpp: float
    est_bpp: float
    psnr: float
    ms_ssim: float
    psnr_inside: float  # region q >= 0.5 (NaN for uniform maps or an empty region)
    psnr_outside: float  # region q < 0.5
    encoding_time: float
    decoding_time: float


@torch.inference_mode()
def code_with_map(net: nn.Module, x: Tensor, quality: float, qmap) -> Tuple[Tensor, int, float, float, float]:
    """Encode with ``qmap`` and decode (no map) ``x`` ``(1, 3, H, W)``.

    Returns ``(x_hat, num_bytes, estimated_bits, encode_s, decode_s)``.
    """
    t0 = time.perf_counter()
    enc = net.compress(x, quality, qmap)
    t1 = time.perf_counter()
    x_hat = net.decompress(enc["strings"], enc["shape"], quality)["x_hat"]
    t2 = time.perf_counter()
    out = net(x, quality=quality, qmap=qmap)
    est_bits = sum(float(-torch.log2(lk).sum()) for lk in out["likelihoods"].values())
    return x_hat, stream_bytes(enc["strings"]), est_bits, t1 - t0, t2 - t1


def region_psnr(ref: Tensor, rec: Tensor, mask: Tensor) -> float:
    """PSNR (dB, peak 255) of uint8 images ``(1, 3, H, W)`` over the pixels where ``mask`` ``(H, W)`` is true.

    NaN for an empty region, inf for an exact one.
    """
    mask = mask.to(torch.bool)
    n = int(mask.sum())
    if n == 0:
        return math.nan
    diff = (ref.double() - rec.double())[..., mask]
    mse = diff.pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def evaluation_maps(height: int, width: int, values: Sequence[float], roi: Sequence[Path],
              gradients: bool = True) -> List[Tuple[str, float, Tensor]]:
    """``(name, uniform value or NaN, (1, 1, H, W) map)`` for one image size."""
    maps = [("uniform", float(v), torch.full((1, 1, height, width), float(v))) for v in values]
    if gradients:
        maps.append(("gradient-h", math.nan, gradient_qmap(height, width, "horizontal")))
        maps.append(("gradient-v", math.nan, gradient_qmap(height, width, "vertical")))
    probe = torch.empty(1, 3, height, width)
    for path in roi:
        maps.append((f"roi:{Path(path).name}", math.nan, prepare_qmap(load_qmap(path), probe)))
    return maps


def evaluate_scgain(
    net: nn.Module,
    images: Sequence[Path],
    qualities: Sequence[float],
    values: Sequence[float] = DEFAULT_QMAP_VALUES,
    roi: Sequence[Path] = (),
    gradients: bool = True,
    device: str = "cpu",
    progress: bool = True,
) -> List[MapRow]:
    """Code every image at every quality with every map of :func:`evaluation_maps`."""
    if not takes_qmap(net):
        raise ValueError(f"{model_name(net)} takes no quality map; --mode scgain needs a gained-scgain model")
    for v in values:
        if not 0 <= v <= 1:
            raise ValueError(f"uniform map values must lie in [0, 1], got {v:g}")
    rows: List[MapRow] = []
    n_maps = len(values) + 2 * bool(gradients) + len(roi)
    bar = tqdm(total=len(images) * len(qualities) * n_maps, disable=not progress, desc="scgain", dynamic_ncols=True)
    for path in images:
        ref = ev.read_image(path)
        x = ref.float().div(255).to(device)
        h, w = ref.shape[-2:]
        for name, value, qmap in evaluation_maps(h, w, values, roi, gradients):
            inside = qmap[0, 0] >= 0.5
            uniform = name == "uniform"
            for q in qualities:
                x_hat, nbytes, est_bits, t_enc, t_dec = code_with_map(net, x, q, qmap.to(device))
                rec = to_uint8(x_hat.cpu())
                rows.append(MapRow(
                    path.name, float(q), name, value, float(qmap.mean()), nbytes * 8 / (h * w), est_bits / (h * w),
                    psnr(ref, rec), ms_ssim(ref, rec),
                    math.nan if uniform else region_psnr(ref, rec, inside),
                    math.nan if uniform else region_psnr(ref, rec, ~inside),
                    t_enc, t_dec,
                ))
                bar.update(1)
    bar.close()
    return rows


# ---------------------------------------------------------------------------
# results


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def uniform_results(rows: Sequence[MapRow], name: str, description: str) -> Dict:
    """The uniform-map RD points in CompressAI's layout: one entry per
    ``(map value, quality)`` (mean over images), ``results.qmap`` giving the value."""
    uni = [r for r in rows if r.map == "uniform"]
    values = sorted({r.map_value for r in uni})
    merged: Dict[str, list] = {}
    for v in values:
        res = ev.aggregate([r for r in uni if r.map_value == v], name, description)["results"]
        merged.setdefault("qmap", []).extend([v] * len(res["quality"]))
        for k, vals in res.items():
            merged.setdefault(k, []).extend(vals)
    return {"name": name, "description": description, "results": merged}


def curve_for_value(data: Dict, value: float) -> Dict:
    """The ``results`` of one uniform value out of :func:`uniform_results`."""
    res = data["results"]
    idx = [i for i, v in enumerate(res["qmap"]) if v == value]
    return {k: [vals[i] for i in idx] for k, vals in res.items()}


def map_summary(rows: Sequence[MapRow]) -> List[Dict]:
    """Mean over images per ``(map, uniform value, quality)``: bpp, PSNR, PSNR inside / outside."""
    groups: Dict[Tuple, List[MapRow]] = {}
    for r in rows:
        key = (r.map, None if math.isnan(r.map_value) else r.map_value, r.quality)
        groups.setdefault(key, []).append(r)

    def mean(rs, field):
        vals = [getattr(r, field) for r in rs if not math.isnan(getattr(r, field))]
        return _finite(sum(vals) / len(vals)) if vals else None

    out = []
    for (m, value, q), rs in groups.items():
        out.append({
            "map": m, "qmap": value, "quality": q, "num_images": len(rs), "map_mean": mean(rs, "map_mean"),
            "bpp": mean(rs, "bpp"), "psnr-rgb": mean(rs, "psnr"), "ms-ssim-rgb": mean(rs, "ms_ssim"),
            "psnr_inside": mean(rs, "psnr_inside"), "psnr_outside": mean(rs, "psnr_outside"),
        })
    return out


def summary_markdown(name: str, summary: Sequence[Dict]) -> str:
    """Table of the non-uniform maps (gradients, ROI): bpp, PSNR overall, inside and outside."""
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    lines = [
        f"Quality maps on **{name}** (mean over images; inside = map >= 0.5, for ROI maps the mask's white part).",
        "",
        "| map | quality | mean q | bpp | PSNR [dB] | PSNR inside [dB] | PSNR outside [dB] |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        if s["map"] == "uniform":
            continue
        lines.append(f"| {s['map']} | {s['quality']:g} | {fmt(s['map_mean'], '.2f')} | {fmt(s['bpp'], '.4f')} | "
                     f"{fmt(s['psnr-rgb'], '.2f')} | {fmt(s['psnr_inside'], '.2f')} | {fmt(s['psnr_outside'], '.2f')} |")
    return "\n".join(lines) + "\n"


def _gain_curve(path: Path, images, source: str, step: float, device: str, progress: bool, out: Path) -> Dict:
    """The channel-gain curve: a results JSON as it is, or a checkpoint evaluated here."""
    from .checkpoint import load_checkpoint
    from .models import is_variable_rate

    if path.suffix == ".json":
        return ev.load_results_json(path)
    gnet = load_checkpoint(path, device=device)
    if not is_variable_rate(gnet):
        raise ValueError(f"--gain-checkpoint {path} holds the single-rate model {model_name(gnet)}")
    rows = ev.evaluate_model(gnet, images, ev.qualities_for(gnet, step), device, progress, model_name(gnet))
    data = ev.aggregate(rows, model_name(gnet), f"{ev.describe_model(gnet)}; real rANS bitstreams; {source}",
                        {"checkpoint": str(path)})
    ev.write_json(data, out / f"{model_name(gnet)}.json")
    ev.write_csv(rows, out / f"{model_name(gnet)}-per-image.csv")
    return data


def run_scgain(checkpoint: Path, images: Sequence[Path], source: str, output_dir: Path, *,
               qmaps: Sequence[Path] = (), qmap_values: Sequence[float] = DEFAULT_QMAP_VALUES,
               gain_checkpoint: Optional[Path] = None, step: float = 0.25, name: Optional[str] = None,
               device: str = "cpu", progress: bool = True) -> Path:
    """The evaluation behind ``eval_gain.py --mode scgain``: the ``gained-scgain`` ``checkpoint``
    on ``images`` (described as ``source``) with uniform maps at ``qmap_values``, the two
    gradients and each ROI mask of ``qmaps``; with ``gain_checkpoint``, its channel-gain curve
    (quality ``step``) beside them and ``bd.json``. Writes the JSON, CSV, markdown and plots to
    ``output_dir`` (labelled ``name``, default the registry name) and returns it. A checkpoint
    without quality maps or an unreadable mask is a :class:`ValueError`."""
    from .checkpoint import load_checkpoint
    from .plot import Curve, rd_plot
    from .report import bd_markdown, bd_table

    net = load_checkpoint(checkpoint, device=device)
    if not takes_qmap(net):
        raise ValueError(f"--mode scgain needs a gained-scgain checkpoint; {checkpoint} "
                         f"holds {model_name(net)} (use --mode gain for it)")
    roi = [Path(p) for p in qmaps]
    qmap_values = list(qmap_values)
    for p in roi:
        load_qmap(p)  # fail early with a clear message
    out = Path(output_dir)
    name = name or model_name(net)
    qualities = [float(q) for q in range(1, net.levels + 1)]
    rows = evaluate_scgain(net, images, qualities, qmap_values, roi, True, device, progress)
    desc = f"{ev.describe_model(net)}; uniform quality maps; real rANS bitstreams; {source}"
    uniform = uniform_results(rows, f"{name} (uniform maps)", desc)
    summary = map_summary(rows)
    ev.write_json(uniform, out / f"{name}-uniform.json")
    ev.write_json({"name": name, "description": desc.replace("uniform quality maps", "all maps"), "rows": summary},
                  out / f"{name}-maps.json")
    ev.write_csv(rows, out / f"{name}-per-image.csv")
    md = summary_markdown(name, summary)

    values = sorted(set(qmap_values))
    curves = []
    for v in values:
        res = curve_for_value(uniform, v)
        curves.append(Curve(f"{name}, uniform map q={v:g}", res, "gained", [True] * len(res["bpp"])))
    for m in sorted({s["map"] for s in summary if s["map"] != "uniform"}):
        pts = [s for s in summary if s["map"] == m]
        curves.append(Curve(f"{name}, {m}", {
            "bpp": [s["bpp"] for s in pts], "psnr-rgb": [s["psnr-rgb"] for s in pts],
            "ms-ssim-rgb-db": [None if s["ms-ssim-rgb"] is None else ms_ssim_db(s["ms-ssim-rgb"]) for s in pts],
        }, "single"))
    title = f"{name} with quality maps on {source}"
    if gain_checkpoint:
        gain = _gain_curve(Path(gain_checkpoint), images, source, step, device, progress, out)
        integer = [q is not None and float(q).is_integer() for q in gain["results"].get("quality", [])] or None
        curves.insert(0, Curve(f"{gain['name']} (channel gain)", gain["results"], "gained", integer))
        mid = min(values, key=lambda v: abs(v - 0.5))
        test = {"name": f"{name} uniform q={mid:g}", "results": curve_for_value(uniform, mid)}
        table = bd_table(test, [gain])
        ev.write_json({"test": test["name"], "rows": table}, out / "bd.json")
        md += "\n" + bd_markdown(test["name"], table)
    for metric in ("psnr", "ms-ssim"):
        rd_plot(curves, metric, out / f"rd-{metric}.png", title)
    (out / f"{name}-maps.md").write_text(md)
    print(md)
    print(f"wrote {out}/{name}-uniform.json, {name}-maps.json, {name}-maps.md, per-image CSV, rd-psnr.png, rd-ms-ssim.png")
    return out
