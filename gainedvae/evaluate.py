"""Rate-distortion evaluation from real bitstreams.

Every point is measured the same way for every model: encode to rANS
bitstreams, decode, round the reconstruction to 8 bits, then PSNR / MS-SSIM
against the 8-bit original; bpp from the compressed byte count, estimated bpp
from the eval-mode likelihoods. Results use CompressAI's JSON layout.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from .atomic import atomic_save
from .container import FORMAT_VERSION
from .imageio import load_image
from .data import IMAGE_EXTENSIONS
from .metrics import ms_ssim, ms_ssim_db, psnr, to_uint8
from .models import DEFAULT_LAMBDAS, is_variable_rate, model_name, rate_model, stream_bytes
from .models import code as code_image


@dataclass
class Row:
    """One image coded at one quality."""

    image: str
    quality: float
    bpp: float
    est_bpp: float
    psnr: float
    ms_ssim: float
    encoding_time: float
    decoding_time: float


class RowCache:
    """Measured rows kept in a JSON-lines file, so that re-running an evaluation (another
    baseline, a new plot) codes only what it has not coded before.

    A row is keyed by the model's weights hash and gainedvae's coding version (the container
    format version; or a classic codec and the Pillow version),
    the image's content (SHA-256 of the file: a copied or re-provisioned data folder keeps its
    rows, an edited image is coded again) and the quality. A model without a weights hash
    (not loaded from a checkpoint) is never cached. Delete the file to measure everything again.

    Files written before the content key (``model|path|size|mtime|quality``) are read too:
    such a row is kept when that file still has that size and modification time.
    """

    def __init__(self, path: Optional[Path]):
        self.path = Path(path) if path else None
        self.rows: Dict[str, Row] = {}
        if self.path and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    key = self._legacy(rec["key"]) or rec["key"]
                    self.rows[key] = Row(**rec["row"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from an interrupted run

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _digest(path: str, size: int, mtime_ns: int) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]

    @classmethod
    def image_digest(cls, image: Path) -> str:
        """Content hash of an image file (memoised per path, size and modification time)."""
        st = Path(image).stat()
        return cls._digest(str(Path(image).resolve()), st.st_size, st.st_mtime_ns)

    @classmethod
    def _legacy(cls, key: str) -> Optional[str]:
        """The content key of a ``model|path|size|mtime|quality`` key whose file is unchanged."""
        parts = key.rsplit("|", 4)
        if len(parts) != 5 or not parts[1].startswith("/"):
            return None
        model_key, path, size, mtime, quality = parts
        try:
            st = Path(path).stat()
        except OSError:
            return None
        if str(st.st_size) != size or str(st.st_mtime_ns) != mtime:
            return None
        return f"{model_key}|{cls._digest(path, st.st_size, st.st_mtime_ns)}|{quality}"

    @classmethod
    def key(cls, model_key: Optional[str], image: Path, quality: float) -> Optional[str]:
        if not model_key:
            return None
        return f"{model_key}|{cls.image_digest(image)}|{quality!r}"

    def get(self, key: Optional[str]) -> Optional[Row]:
        return self.rows.get(key) if key and self.path else None

    def put(self, key: Optional[str], row: Row) -> None:
        if not key or not self.path:
            return
        self.rows[key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab+") as f:
            if f.seek(0, 2) and (f.seek(-1, 2), f.read(1))[1] != b"\n":
                f.write(b"\n")  # end a torn line of an interrupted run instead of joining it
            f.write((json.dumps({"key": key, "row": asdict(row)}) + "\n").encode())


# ---------------------------------------------------------------------------
# images


def list_images(folder: Path, max_images: Optional[int] = None) -> List[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"image folder {folder} contains no images")
    return files[:max_images] if max_images else files


def default_images() -> Tuple[List[Path], str]:
    """Real photographs shipped inside an installed dependency (no download)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib's sample photograph {path} is missing")
    return [path], f"matplotlib's sample photograph {path.name} (512x600)"


def read_image(path: Path) -> Tensor:
    """``(1, 3, H, W)`` uint8 tensor of an image file, converted to 8-bit RGB exactly
    as the codec converts its input (:func:`gainedvae.imageio.load_image`)."""
    return torch.from_numpy(load_image(path)).permute(2, 0, 1)[None]


# ---------------------------------------------------------------------------
# coding


def qualities_for(net: nn.Module, step: float = 0.25) -> List[float]:
    """The sweep of a variable-rate model: 1, 1 + step, ..., L (integers always included)."""
    if not is_variable_rate(net):
        return [math.nan]
    n = int(round((net.levels - 1) / step))
    qs = sorted({round(1 + i * step, 6) for i in range(n + 1)} | set(map(float, range(1, net.levels + 1))))
    return [q for q in qs if q <= net.levels]


@torch.inference_mode()
def code(net: nn.Module, x: Tensor, quality: Optional[float]) -> Tuple[Tensor, int, float, float, float]:
    """Encode and decode ``x`` (float, ``(1, 3, H, W)``) through the one coding path
    (:func:`gainedvae.models.code`; a single-rate model ignores ``quality``).

    Returns ``(x_hat, num_bytes, estimated_bits, encode_s, decode_s)``; the estimate is
    from the eval-mode likelihoods of the same model.
    """
    if not is_variable_rate(net):
        quality = None  # a single-rate model's row quality is a label (single_rate_label)
    coded = code_image(net, x, quality)
    out = rate_model(net)(x, quality=quality)
    est_bits = sum(float(-torch.log2(lk).sum()) for lk in out["likelihoods"].values())
    return coded.x_hat, coded.nbytes, est_bits, coded.encode_s, coded.decode_s


def code_refined(net: nn.Module, x: Tensor, quality: float, steps: int,
                 compile: bool = False) -> Tuple[Tensor, int, float, float, float]:
    """:func:`code` with ``steps`` of encoder-side latent refinement (:func:`gainedvae.refine.refine`):
    the encode time includes the refinement, the estimate is the refined latents' likelihoods."""
    from .refine import refine

    t0 = time.perf_counter()
    refined = refine(net, x, quality, steps, compile=compile)
    with torch.inference_mode():
        enc = net.compress_latents(refined.y, refined.z, quality, tuple(x.shape[-2:]))
        t1 = time.perf_counter()
        x_hat = net.decompress(enc["strings"], enc["shape"], quality)["x_hat"]
        t2 = time.perf_counter()
    return x_hat, stream_bytes(enc["strings"]), refined.bits, t1 - t0, t2 - t1


def evaluate_model(
    net: nn.Module,
    images: Sequence[Path],
    qualities: Sequence[float],
    device: str = "cpu",
    progress: bool = True,
    desc: str = "",
    cache: Optional[RowCache] = None,
    refine: int = 0,
    refine_compile: bool = False,
) -> List[Row]:
    """Code every image at every quality; one :class:`Row` per pair (``cache``: see :class:`RowCache`).
    ``refine``: steps of encoder-side latent refinement (:func:`code_refined`; 0: the plain encoder),
    with ``torch.compile`` d transforms if ``refine_compile`` (faster; the same loss, not the same bits)."""
    rows = []
    cache = cache or RowCache(None)
    model_key = getattr(net, "weights_hash", None)
    if model_key:  # the bits also depend on how gainedvae codes (scale table, ...): the container version
        model_key = f"{model_key}|coding-v{FORMAT_VERSION}"
        if refine:  # refined files are other files (compiled transforms: the same loss, other bits)
            model_key += f"|refine-{refine}" + ("-compiled" if refine_compile else "")
    bar = tqdm(total=len(images) * len(qualities), disable=not progress, desc=desc or "evaluate", dynamic_ncols=True)
    for path in images:
        ref = x = None
        for q in qualities:
            key = cache.key(model_key, path, q)
            row = cache.get(key)
            if row is None:
                if ref is None:
                    ref = read_image(path)
                    x = ref.float().div(255).to(device)
                pixels = ref.shape[-2] * ref.shape[-1]
                if refine:
                    x_hat, nbytes, est_bits, t_enc, t_dec = code_refined(net, x, q, refine, refine_compile)
                else:
                    x_hat, nbytes, est_bits, t_enc, t_dec = code(net, x, None if math.isnan(q) else q)
                rec = to_uint8(x_hat.cpu())
                row = Row(path.name, q, nbytes * 8 / pixels, est_bits / pixels, psnr(ref, rec),
                          ms_ssim(ref, rec), t_enc, t_dec)
                cache.put(key, row)
            rows.append(row)
            bar.update(1)
    bar.close()
    return rows


# ---------------------------------------------------------------------------
# classic codecs (Pillow)

CLASSIC_QUALITIES = {
    "jpeg": [5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95],
    "webp": [0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95],
    "avif": [5, 10, 20, 30, 40, 50, 60, 70, 80, 90],
}
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}


def evaluate_classic(codec: str, images: Sequence[Path], progress: bool = True,
                     cache: Optional[RowCache] = None) -> List[Row]:
    """Pillow's JPEG / WebP / AVIF over a quality sweep, bpp from the encoded bytes."""
    import PIL
    from PIL import features

    cache = cache or RowCache(None)

    if codec not in _PIL_FORMAT:
        raise ValueError(f"unknown classic codec {codec!r}; choose from {', '.join(_PIL_FORMAT)}")
    if codec != "jpeg" and not features.check(codec):
        raise RuntimeError(f"this Pillow build has no {codec.upper()} support")
    rows = []
    qualities = CLASSIC_QUALITIES[codec]
    bar = tqdm(total=len(images) * len(qualities), disable=not progress, desc=f"pillow-{codec}", dynamic_ncols=True)
    for path in images:
        ref = img = None
        for q in qualities:
            key = cache.key(f"pillow-{codec}-{PIL.__version__}", path, float(q))
            row = cache.get(key)
            if row is not None:
                rows.append(row)
                bar.update(1)
                continue
            if ref is None:
                ref = read_image(path)
                img = Image.fromarray(ref[0].permute(1, 2, 0).numpy())
            buf = io.BytesIO()
            t0 = time.perf_counter()
            img.save(buf, format=_PIL_FORMAT[codec], quality=q)
            t1 = time.perf_counter()
            dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            t2 = time.perf_counter()
            rec = torch.from_numpy(dec.copy()).permute(2, 0, 1)[None]
            bpp = len(buf.getvalue()) * 8 / (ref.shape[-2] * ref.shape[-1])
            row = Row(path.name, float(q), bpp, math.nan, psnr(ref, rec), ms_ssim(ref, rec), t1 - t0, t2 - t1)
            cache.put(key, row)
            rows.append(row)
            bar.update(1)
    bar.close()
    return rows


# ---------------------------------------------------------------------------
# results


# Marks the results JSON files this library writes, so that a file passed back as a baseline
# is labelled as ours and not as a published anchor.
PRODUCER = "gainedvae"


def is_ours(data: Dict) -> bool:
    """Whether a results JSON was written by this library's evaluation."""
    return data.get("producer") == PRODUCER


def aggregate(rows: Iterable[Row], name: str, description: str, extra: Optional[Dict] = None) -> Dict:
    """Mean over images per quality, in CompressAI's results JSON layout."""
    by_q: Dict[float, List[Row]] = {}
    for r in rows:
        by_q.setdefault(r.quality, []).append(r)
    keys = sorted(by_q, key=lambda q: (math.isnan(q), q))
    mean = lambda q, f: float(np.mean([getattr(r, f) for r in by_q[q]]))  # noqa: E731
    results = {
        "quality": [None if math.isnan(q) else q for q in keys],
        "bpp": [mean(q, "bpp") for q in keys],
        "est_bpp": [mean(q, "est_bpp") for q in keys],
        "psnr-rgb": [mean(q, "psnr") for q in keys],
        "ms-ssim-rgb": [mean(q, "ms_ssim") for q in keys],
        "ms-ssim-rgb-db": [ms_ssim_db(mean(q, "ms_ssim")) for q in keys],
        "encoding_time": [mean(q, "encoding_time") for q in keys],
        "decoding_time": [mean(q, "decoding_time") for q in keys],
        "num_images": [len(by_q[q]) for q in keys],
    }
    results["est_bpp"] = [None if math.isnan(v) else v for v in results["est_bpp"]]
    out = {"name": name, "description": description, "producer": PRODUCER, "results": results}
    if extra:
        out.update(extra)
    return out


def merge_points(results: Sequence[Dict], name: str, description: str) -> Dict:
    """Single-rate models (one point each) as one curve, sorted by rate."""
    order = sorted(range(len(results)), key=lambda i: results[i]["results"]["bpp"][0])
    keys = [k for k in results[0]["results"] if all(k in r["results"] for r in results)]
    merged = {k: [results[i]["results"][k][0] for i in order] for k in keys}
    merged["quality"] = [i + 1 for i in range(len(order))]
    merged["lambda"] = [results[i].get("lambda") for i in order]
    return {"name": name, "description": description, "producer": PRODUCER, "results": merged}


def load_results_json(path: Path) -> Dict:
    """A results JSON (CompressAI layout); missing MS-SSIM dB is derived when possible."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        res = data["results"]
        res["bpp"], res["psnr-rgb"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a results JSON with results.bpp and results.psnr-rgb ({err})") from None
    if "ms-ssim-rgb" in res and "ms-ssim-rgb-db" not in res:
        res["ms-ssim-rgb-db"] = [ms_ssim_db(v) for v in res["ms-ssim-rgb"]]
    data.setdefault("name", path.stem)
    return data


def write_json(data: Dict, path: Path) -> None:
    text = json.dumps(data, indent=2, allow_nan=False, default=float)
    atomic_save(lambda f: f.write(text.encode()), path)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    buf = io.StringIO()
    fields = list(asdict(rows[0])) if rows else list(Row.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    atomic_save(lambda f: f.write(buf.getvalue().encode()), path)


def describe_model(net: nn.Module) -> str:
    name = model_name(net)
    lambdas = getattr(net, "lambdas", None)
    if is_variable_rate(net):
        return f"{name} N={net.N} M={net.M}, {net.levels} levels (lambdas {list(lambdas)})"
    lam = f" lambda={lambdas[0]}" if lambdas else ""
    return f"{name} N={net.N} M={net.M}{lam} (single-rate)"


def single_rate_label(net: nn.Module) -> float:
    """The quality number CompressAI would give a single-rate model of this lambda."""
    lam = (getattr(net, "lambdas", None) or [None])[0]
    if lam in DEFAULT_LAMBDAS:
        return float(DEFAULT_LAMBDAS.index(lam) + 1)
    return math.nan
