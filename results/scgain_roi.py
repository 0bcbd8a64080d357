#!/usr/bin/env python3
"""Region-of-interest coding at equal file size with a ``gained-scgain`` model (issue 21, part 3b).

The claim to measure: with a centred ellipse map (1 inside, 0 outside) the PSNR inside the ellipse
is at least 1.5 dB above the uniform map's at the same file size, and the PSNR outside is lower.

For every image, every ROI map (``ellipse``, ``upper-half``) and every quality:

1. code the image with the ROI map at that quality (a real rANS bitstream, bytes counted as
   :func:`gainedvae.evaluate_scgain.code_with_map` counts them: the bitstream's strings, no
   container header, which is the same for both codings);
2. code it with a **uniform** map at the **same quality**, the map's value ``v`` in ``[0, 1]``
   searched until the file's bytes match the ROI file's within ``--tol`` (relative);
3. report the PSNR inside the region (map >= 0.5) and outside it for both codings.

The equal-size search: the quality is kept and only the uniform value is searched, so the two
codings differ in nothing but the map. ``v`` spans the whole lambda-scale range of the map
(0.25x to 4x the level's lambda by default), which brackets the rate of a 0/1 map at the same
quality; a search over the quality at a uniform 0.5 would not (a 20 %-area ellipse at quality 1
is smaller than any uniform-0.5 file). The search is :func:`gainedvae.ratecontrol.search` (the
codec's rate-control search) run on ``q = 1 + v`` in ``[1, 2]`` on log bytes; the trials encode
only (no decoding), the chosen value is then coded and decoded by ``code_with_map``. A target the
uniform maps cannot reach at that quality, or a jump in bytes the tolerance cannot meet, leaves
the row unmatched (``matched`` false in the CSV, closest trial reported); the summary averages the
matched rows only and counts them.

  python results/scgain_roi.py --checkpoint CKPT -d ../shared/data/kodak --qualities 2 4 6 --picture

(``CKPT``: a trained ``gained-scgain`` checkpoint or export.) Outputs in ``--output-dir``
(default ``results/scgain``), prefix ``--name`` (default ``roi``): ``roi-per-image.csv`` (one row
per image, map and quality), ``roi.md`` (mean over images per map and quality), ``roi.json`` (both,
with the settings) and with ``--picture`` ``roi-picture.png`` (first image, first quality: the
original with the region outlined, the ROI reconstruction and the equal-size uniform one).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from gainedvae import evaluate as ev
from gainedvae.atomic import atomic_save, atomic_write_bytes
from gainedvae.checkpoint import load_checkpoint
from gainedvae.evaluate_scgain import code_with_map, region_psnr
from gainedvae.metrics import psnr, to_uint8
from gainedvae.models import model_name, stream_bytes, takes_qmap
from gainedvae.qmap import DEFAULT_LAMBDA_RANGE, ellipse_qmap, half_qmap
from gainedvae.ratecontrol import Trial, search

MAPS = ("ellipse", "upper-half")
DEFAULT_QUALITIES = (2.0, 4.0, 6.0)


# ---------------------------------------------------------------------------
# maps and the model


def roi_map(name: str, height: int, width: int, factor: float = 0.5) -> Tensor:
    """The ``(1, 1, height, width)`` ROI map ``name``: ``ellipse`` (semi-axes ``factor`` times half
    the width / height) or ``upper-half``."""
    if name == "ellipse":
        return ellipse_qmap(height, width, factor)
    if name == "upper-half":
        return half_qmap(height, width, "upper")
    raise ValueError(f"unknown ROI map {name!r}; choose from {', '.join(MAPS)}")


def load_model(path: Path, device: str = "cpu") -> nn.Module:
    """The checkpoint's model; a :class:`ValueError` naming the file and the model unless it takes a quality map."""
    net = load_checkpoint(path, device=device)
    if not takes_qmap(net):
        raise ValueError(f"{path} holds {model_name(net)}, which takes no quality map; "
                         "ROI coding needs a gained-scgain checkpoint")
    return net


def check_qualities(net: nn.Module, qualities: Sequence[float]) -> List[float]:
    """``qualities`` as floats; a :class:`ValueError` for one outside the model's ``[1, levels]``."""
    out = [float(q) for q in qualities]
    bad = [q for q in out if not 1 <= q <= net.levels]
    if bad or not out:
        raise ValueError(f"qualities must lie in [1, {net.levels}] for {model_name(net)}, got {out}")
    return out


@torch.inference_mode()
def coded_bytes(net: nn.Module, x: Tensor, quality: float, qmap) -> int:
    """Bytes of the bitstream of ``x`` at ``quality`` with ``qmap``, counted as ``code_with_map``
    counts them (encoding only: the search's trials)."""
    return stream_bytes(net.compress(x, quality, qmap)["strings"])


# ---------------------------------------------------------------------------
# the equal-size search


class SizeMatchError(ValueError):
    """No uniform value gives the target size within the tolerance."""


@dataclass(frozen=True)
class SizeMatch:
    """The uniform value found: its bytes against the target, trials used, and how the search ended
    (``clamped``: the target lies beyond what ``v = 0`` / ``v = 1`` give; ``converged``: within ``tol``)."""

    value: float
    nbytes: int
    target: int
    iterations: int
    clamped: bool
    converged: bool

    @property
    def error(self) -> float:
        """Relative size error ``nbytes / target - 1``."""
        return self.nbytes / self.target - 1


def match_uniform_size(size_of: Callable[[float], int], target: int, tol: float = 0.01, max_iter: int = 30,
                       strict: bool = True) -> SizeMatch:
    """The uniform value ``v`` in ``[0, 1]`` whose coding has ``target`` bytes within ``tol`` (relative).

    ``size_of(v)`` codes with the uniform map ``v`` and returns its bytes (increasing with ``v``
    for a trained model). :func:`gainedvae.ratecontrol.search` runs on ``q = 1 + v`` in ``[1, 2]``
    with ``log`` bytes, its first step from the map's lambda range. With ``strict`` a target that
    is not met is a :class:`SizeMatchError`; without, the closest trial comes back with
    ``converged`` false.
    """
    if not (isinstance(target, int) and target > 0):
        raise ValueError(f"the target size must be a positive number of bytes, got {target!r}")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    sizes: Dict[float, int] = {}

    def evaluate(q: float) -> Trial:
        v = min(max(q - 1.0, 0.0), 1.0)
        n = int(size_of(v))
        if n <= 0:
            raise ValueError(f"a coding of {n} bytes at uniform value {v:g}")
        sizes[v] = n
        return Trial(quality=q, data=b"", bpp=float(n), psnr=None, value=float(n))

    low, high = DEFAULT_LAMBDA_RANGE
    slope = 0.5 * math.log(high / low)  # d log(bytes) / dv: rate ~ half the log lambda
    trial, iters, clamped, converged = search(
        evaluate, 2, math.log, float(target), lambda n: abs(n - target) <= tol * target, slope, max_iter)
    v = min(max(trial.quality - 1.0, 0.0), 1.0)
    found = SizeMatch(v, sizes[v], target, iters, clamped, converged)
    if strict and not converged:
        tried = ", ".join(f"v={k:.4g}: {n}" for k, n in sorted(sizes.items()))
        why = "beyond what uniform maps reach at this quality" if clamped else f"not met within {tol:.2%}"
        raise SizeMatchError(f"target {target} bytes {why} (bytes tried: {tried})")
    return found


# ---------------------------------------------------------------------------
# coding


@dataclass
class RoiRow:
    """One image, ROI map and quality: the ROI coding against the uniform one at equal size."""

    image: str
    map: str
    quality: float
    height: int
    width: int
    roi_fraction: float  # share of the pixels inside (map >= 0.5)
    roi_bytes: int
    roi_bpp: float
    uniform_value: float
    uniform_bytes: int
    uniform_bpp: float
    size_error: float  # uniform_bytes / roi_bytes - 1
    matched: bool  # |size_error| <= tol
    search_iterations: int
    roi_psnr: float
    uniform_psnr: float
    roi_psnr_inside: float
    uniform_psnr_inside: float
    roi_psnr_outside: float
    uniform_psnr_outside: float
    inside_gain: float  # roi_psnr_inside - uniform_psnr_inside
    outside_change: float  # roi_psnr_outside - uniform_psnr_outside


def compare_at_equal_size(net: nn.Module, ref: Tensor, image: str, name: str, qmap: Tensor, quality: float,
                          tol: float, max_iter: int, device: str = "cpu") -> Tuple[RoiRow, Tensor, Tensor]:
    """Code ``ref`` (uint8 ``(1, 3, H, W)``) with ``qmap`` at ``quality`` and with the uniform map of
    equal size; returns the row and both 8-bit reconstructions."""
    h, w = ref.shape[-2:]
    x = ref.float().div(255).to(device)
    x_roi, roi_bytes, _, _, _ = code_with_map(net, x, quality, qmap.to(device))
    match = match_uniform_size(lambda v: coded_bytes(net, x, quality, v), roi_bytes, tol, max_iter, strict=False)
    x_uni, uni_bytes, _, _, _ = code_with_map(net, x, quality, torch.full((1, 1, h, w), match.value, device=device))
    rec_roi, rec_uni = to_uint8(x_roi.cpu()), to_uint8(x_uni.cpu())
    inside = qmap[0, 0].cpu() >= 0.5
    pin = (region_psnr(ref, rec_roi, inside), region_psnr(ref, rec_uni, inside))
    pout = (region_psnr(ref, rec_roi, ~inside), region_psnr(ref, rec_uni, ~inside))
    error = uni_bytes / roi_bytes - 1  # the final coding's own bytes (the same as the search's trial on CPU)
    row = RoiRow(
        image, name, float(quality), int(h), int(w), float(inside.float().mean()),
        roi_bytes, roi_bytes * 8 / (h * w), match.value, uni_bytes, uni_bytes * 8 / (h * w),
        error, abs(error) <= tol, match.iterations,
        psnr(ref, rec_roi), psnr(ref, rec_uni), pin[0], pin[1], pout[0], pout[1],
        pin[0] - pin[1], pout[0] - pout[1],
    )
    return row, rec_roi, rec_uni


@dataclass
class Shown:
    """What the picture shows: the first image at the first quality, one entry per map."""

    ref: Tensor
    maps: List[Tuple[RoiRow, Tensor, Tensor, Tensor]]  # row, map, ROI and uniform reconstructions


def evaluate_roi(net: nn.Module, images: Sequence[Path], maps: Sequence[str], qualities: Sequence[float],
                 factor: float = 0.5, tol: float = 0.01, max_iter: int = 30, device: str = "cpu",
                 progress: bool = True) -> Tuple[List[RoiRow], Optional[Shown]]:
    """Every image x map x quality through :func:`compare_at_equal_size`."""
    rows: List[RoiRow] = []
    shown: Optional[Shown] = None
    bar = tqdm(total=len(images) * len(maps) * len(qualities), disable=not progress, desc="roi", dynamic_ncols=True)
    for i, path in enumerate(images):
        ref = ev.read_image(path)
        h, w = ref.shape[-2:]
        if i == 0:
            shown = Shown(ref, [])
        for name in maps:
            qmap = roi_map(name, h, w, factor)
            for j, q in enumerate(qualities):
                row, rec_roi, rec_uni = compare_at_equal_size(net, ref, path.name, name, qmap, q, tol, max_iter, device)
                rows.append(row)
                if i == 0 and j == 0:
                    shown.maps.append((row, qmap, rec_roi, rec_uni))
                bar.set_postfix_str(f"{path.name} {name} q={q:g}: {row.inside_gain:+.2f} dB inside")
                bar.update(1)
    bar.close()
    return rows, shown


# ---------------------------------------------------------------------------
# results


def _mean(vals: Sequence[float]) -> Optional[float]:
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def summarise(rows: Sequence[RoiRow], claim_db: float = 1.5) -> List[Dict]:
    """Mean over images per ``(map, quality)``, over the matched rows (``num_matched`` of ``num_images``);
    the size errors over all rows. ``claim``: mean inside gain >= ``claim_db`` and outside change < 0."""
    groups: Dict[Tuple[str, float], List[RoiRow]] = {}
    for r in rows:
        groups.setdefault((r.map, r.quality), []).append(r)
    out = []
    for (name, q), rs in groups.items():
        ok = [r for r in rs if r.matched]
        gain, change = _mean([r.inside_gain for r in ok]), _mean([r.outside_change for r in ok])
        out.append({
            "map": name, "quality": q, "num_images": len(rs), "num_matched": len(ok),
            "roi_bpp": _mean([r.roi_bpp for r in ok]), "uniform_bpp": _mean([r.uniform_bpp for r in ok]),
            "uniform_value": _mean([r.uniform_value for r in ok]),
            "mean_abs_size_error": _mean([abs(r.size_error) for r in rs]),
            "max_abs_size_error": max(abs(r.size_error) for r in rs),
            "roi_psnr_inside": _mean([r.roi_psnr_inside for r in ok]),
            "uniform_psnr_inside": _mean([r.uniform_psnr_inside for r in ok]),
            "roi_psnr_outside": _mean([r.roi_psnr_outside for r in ok]),
            "uniform_psnr_outside": _mean([r.uniform_psnr_outside for r in ok]),
            "inside_gain": gain, "outside_change": change,
            "claim": None if gain is None or change is None else bool(gain >= claim_db and change < 0),
        })
    return out


def summary_markdown(title: str, summary: Sequence[Dict], claim_db: float, command: str) -> str:
    """The summary table (one line per map and quality)."""
    f = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"# {title}",
        "",
        f"Generated by `{command}`.",
        "",
        "ROI map against the uniform map of equal file size at the same quality (uniform value searched; "
        "mean over the matched images; inside = map >= 0.5). Claim: inside gain >= "
        f"{claim_db:g} dB and outside lower.",
        "",
        "| map | quality | matched | ROI bpp | uniform bpp | size error mean / max | uniform v "
        "| inside ROI / uniform [dB] | inside gain [dB] | outside ROI / uniform [dB] | outside change [dB] | claim |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        claim = "n/a" if s["claim"] is None else "yes" if s["claim"] else "no"
        lines.append(
            f"| {s['map']} | {s['quality']:g} | {s['num_matched']}/{s['num_images']} | {f(s['roi_bpp'], '.4f')} | "
            f"{f(s['uniform_bpp'], '.4f')} | {f(s['mean_abs_size_error'], '.2%')} / {f(s['max_abs_size_error'], '.2%')} | "
            f"{f(s['uniform_value'], '.3f')} | {f(s['roi_psnr_inside'], '.2f')} / {f(s['uniform_psnr_inside'], '.2f')} | "
            f"{f(s['inside_gain'], '+.2f')} | {f(s['roi_psnr_outside'], '.2f')} / {f(s['uniform_psnr_outside'], '.2f')} | "
            f"{f(s['outside_change'], '+.2f')} | {claim} |")
    return "\n".join(lines) + "\n"


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def write_picture(shown: Shown, path: Path) -> None:
    """One row per map: original (region outlined), ROI reconstruction, uniform reconstruction at equal size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = shown.ref.shape[-2:]
    n = len(shown.maps)
    fig = Figure(figsize=(3 * 4.2, n * 4.2 * h / w + 0.6 * n))  # Agg canvas, no pyplot
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    as_image = lambda t: t[0].permute(1, 2, 0).numpy()  # noqa: E731
    for (row, qmap, rec_roi, rec_uni), (a0, a1, a2) in zip(shown.maps, axes):
        panels = [
            (a0, shown.ref, f"{row.image} ({row.map} region outlined)"),
            (a1, rec_roi, f"ROI map, quality {row.quality:g}: {row.roi_bpp:.3f} bpp\n"
                          f"inside {row.roi_psnr_inside:.2f} dB, outside {row.roi_psnr_outside:.2f} dB"),
            (a2, rec_uni, f"uniform v={row.uniform_value:.3f}: {row.uniform_bpp:.3f} bpp ({row.size_error:+.2%})\n"
                          f"inside {row.uniform_psnr_inside:.2f} dB, outside {row.uniform_psnr_outside:.2f} dB"),
        ]
        for ax, img, title in panels:
            ax.imshow(as_image(img))
            ax.contour(qmap[0, 0].numpy(), levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    atomic_save(lambda fh: fig.savefig(fh, format="png", dpi=100), path)


def write_outputs(rows: Sequence[RoiRow], summary: Sequence[Dict], meta: Dict, out: Path, name: str,
                  claim_db: float) -> Dict[str, Path]:
    """CSV, markdown and JSON under ``out``; returns their paths."""
    paths = {"csv": out / f"{name}-per-image.csv", "md": out / f"{name}.md", "json": out / f"{name}.json"}
    ev.write_csv(list(rows), paths["csv"])
    md = summary_markdown(meta["title"], summary, claim_db, meta["command"])
    atomic_write_bytes(paths["md"], md.encode())
    ev.write_json(_json_safe({**meta, "summary": list(summary), "rows": [asdict(r) for r in rows]}), paths["json"])
    return paths


# ---------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a gained-scgain checkpoint or export")
    p.add_argument("-d", "--dataset", type=Path, default=Path("../shared/data/kodak"),
                   help="folder of the images to code (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images (sorted by name)")
    p.add_argument("--maps", nargs="+", choices=MAPS, default=list(MAPS), help="ROI maps (default: %(default)s)")
    p.add_argument("--ellipse-factor", type=float, default=0.5,
                   help="semi-axes of the ellipse as a fraction of half the width / height (default: %(default)s)")
    p.add_argument("--qualities", type=float, nargs="+", default=list(DEFAULT_QUALITIES),
                   help="qualities in [1, levels] to code at (default: %(default)s)")
    p.add_argument("--tol", type=float, default=0.01,
                   help="relative tolerance of the equal-size match (default: %(default)s)")
    p.add_argument("--max-iter", type=int, default=30, help="trial codings of the size search at most (default: %(default)s)")
    p.add_argument("--claim-db", type=float, default=1.5,
                   help="inside gain the summary's claim column asks for, in dB (default: %(default)s)")
    p.add_argument("--output-dir", type=Path, default=Path("results/scgain"), help="output folder (default: %(default)s)")
    p.add_argument("--name", default="roi", help="prefix of the output files (default: %(default)s)")
    p.add_argument("--picture", action="store_true",
                   help="also write NAME-picture.png: the first image at the first quality, original / ROI / uniform")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python results/scgain_roi.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        net = load_model(args.checkpoint, args.device)
        qualities = check_qualities(net, args.qualities)
        if not 0 < args.tol < 1:
            raise ValueError(f"--tol must be in (0, 1), got {args.tol:g}")
        roi_map(args.maps[0], 8, 8, args.ellipse_factor)  # a bad factor fails before any coding
        images = ev.list_images(args.dataset, args.max_images)
    except (ValueError, OSError) as err:
        print(f"scgain_roi.py: error: {err}", file=sys.stderr)
        return 2
    rows, shown = evaluate_roi(net, images, args.maps, qualities, args.ellipse_factor, args.tol, args.max_iter,
                               args.device, not args.no_progress)
    summary = summarise(rows, args.claim_db)
    meta = {
        "title": f"ROI coding at equal file size: {model_name(net)} ({args.checkpoint.name})",
        "command": command, "checkpoint": str(args.checkpoint), "model": ev.describe_model(net),
        "dataset": str(args.dataset), "num_images": len(images), "maps": list(args.maps),
        "ellipse_factor": args.ellipse_factor, "qualities": qualities, "tol": args.tol, "claim_db": args.claim_db,
        "bytes": "rANS bitstream strings (no container header), as gainedvae.evaluate_scgain.code_with_map counts",
        "search": "uniform map value v in [0, 1] at the ROI coding's quality, gainedvae.ratecontrol.search on log bytes",
    }
    paths = write_outputs(rows, summary, meta, args.output_dir, args.name, args.claim_db)
    if args.picture and shown is not None:
        paths["picture"] = args.output_dir / f"{args.name}-picture.png"
        write_picture(shown, paths["picture"])
    print(summary_markdown(meta["title"], summary, args.claim_db, command))
    unmatched = sum(not r.matched for r in rows)
    if unmatched:
        print(f"warning: {unmatched} of {len(rows)} codings have no uniform map within {args.tol:.2%} of their size "
              "(left out of the means; see the CSV's matched column)", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
