"""Training data: image discovery, deterministic splits, random patches.

Sources for ``-d``: a folder of images (searched recursively), a folder with
``train/`` and ``val/`` (or ``test/``) subfolders, or a ``.tar`` of images.
Every random choice (batch composition, crop, flip) is a function of
``(seed, step)``, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import io
import math
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from .imageio import to_rgb8

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
JPEG_EXTENSIONS = (".jpg", ".jpeg")

#: An image reference: a file path, or ``(tar path, member name)``.
ImageRef = Union[str, Tuple[str, str]]


class DataError(ValueError):
    """The data source cannot be used; the message names the path."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(root: Union[str, Path]) -> List[ImageRef]:
    """All images under ``root`` (a folder, searched recursively, or a .tar), sorted."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    if root.is_file():
        if not tarfile.is_tarfile(root):
            raise DataError(f"data path {root} is a file but not a .tar archive of images")
        with tarfile.open(root) as tar:
            names = sorted(m.name for m in tar.getmembers() if m.isfile() and _is_image(m.name))
        if not names:
            raise DataError(f"archive {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        return [(str(root), n) for n in names]
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and _is_image(p.name))
    if not files:
        raise DataError(f"data folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _stable_key(ref: ImageRef) -> str:
    name = ref[1] if isinstance(ref, tuple) else str(ref)
    return hashlib.sha1(name.encode()).hexdigest()


def split_dataset(
    roots: Union[str, Path, Sequence[Union[str, Path]]], val_split: float = 0.05
) -> Tuple[List[ImageRef], List[ImageRef]]:
    """``(train, val)`` image lists for one or several data sources.

    A folder with ``train/`` and ``val/`` (or ``test/``) contributes those
    splits; the images of every other source are pooled and a fraction
    ``val_split`` of the pool (at least one image) is held out by a hash of
    each file name, so the split never depends on the machine or file order.
    """
    if not 0 <= val_split < 1:
        raise DataError(f"--val-split must be in [0, 1), got {val_split}")
    if isinstance(roots, (str, Path)):
        roots = [roots]
    train: List[ImageRef] = []
    val: List[ImageRef] = []
    pool: List[ImageRef] = []
    for root in map(Path, roots):
        held = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        if root.is_dir() and (root / "train").is_dir() and held is not None:
            train += find_images(root / "train")
            val += find_images(held)
        else:
            pool += find_images(root)
    if pool and val_split > 0 and len(pool) >= 2:
        n_val = max(1, int(round(len(pool) * val_split)))
        held_out = set(map(str, sorted(pool, key=_stable_key)[:n_val]))
        val += [i for i in pool if str(i) in held_out]
        pool = [i for i in pool if str(i) not in held_out]
    return train + pool, val


def load_rgb(ref: ImageRef) -> Image.Image:
    """Open an image reference as 8-bit RGB (:func:`gainedvae.imageio.to_rgb8`)."""
    try:
        if isinstance(ref, tuple):
            with tarfile.open(ref[0]) as tar:
                member = tar.extractfile(ref[1])
                img = Image.open(io.BytesIO(member.read()))
        else:
            img = Image.open(ref)
        img.load()
        rgb = to_rgb8(img, ref)  # the codec's conversion (16-bit: round(v / 257))
    except Exception as err:
        raise DataError(f"cannot read image {ref}: {err}") from None
    return Image.fromarray(rgb)


def _downscale_if_jpeg(img: Image.Image, ref: ImageRef, patch: int) -> Image.Image:
    """Halve a large JPEG (smaller side >= max(512, 2 * patch)): averages away block artefacts."""
    name = ref[1] if isinstance(ref, tuple) else ref
    if name.lower().endswith(JPEG_EXTENSIONS) and min(img.size) >= max(512, 2 * patch):
        return img.resize((img.width // 2, img.height // 2), Image.BICUBIC)
    return img


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _fit(t: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-pad (or replicate when tiny) a uint8 CHW image to at least ``size``."""
    h, w = t.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return t
    mode = "reflect" if ph < h and pw < w else "replicate"
    return torch.nn.functional.pad(t[None].float(), (0, pw, 0, ph), mode=mode)[0].round().to(torch.uint8)


class PatchDataset(Dataset):
    """Random (train) or centre (validation) square patches, as float ``[0, 1]``.

    ``__getitem__`` takes ``(index, seed)``: the seed fixes crop and flips.
    Decoded images are cached in memory (``cache=True``), which on CPU saves
    the JPEG decode at every step.
    """

    def __init__(
        self,
        images: Sequence[ImageRef],
        patch_size: int = 256,
        train: bool = True,
        downscale_jpeg: bool = False,
        cache: bool = True,
    ):
        if patch_size < 1:
            raise DataError(f"patch size must be positive, got {patch_size}")
        self.images = list(images)
        self.patch_size = int(patch_size)
        self.train = train
        self.downscale_jpeg = downscale_jpeg
        self.cache = {} if cache else None
        self.unreadable: set = set()  # indexes of images found unreadable (skipped)

    def __len__(self) -> int:
        return len(self.images)

    def _decode(self, i: int) -> torch.Tensor:
        ref = self.images[i]
        img = load_rgb(ref)
        if self.downscale_jpeg:
            img = _downscale_if_jpeg(img, ref, self.patch_size)
        return _fit(_to_tensor(img), self.patch_size)

    def _skip(self, i: int, err: DataError) -> None:
        self.unreadable.add(i)
        warnings.warn(
            f"skipping an unreadable training image ({len(self.unreadable)} of {len(self.images)} unreadable so far): {err}",
            UserWarning,
            stacklevel=3,
        )

    def _load(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 CHW. For training, an unreadable image (corrupt, truncated,
        empty) is skipped with a warning and replaced by the next readable one, so the
        choice stays a function of ``i`` (resuming is still exact); validation raises."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        n = len(self.images)
        for j in ((i + k) % n for k in range(n if self.train else 1)):
            if j in self.unreadable:
                continue
            try:
                t = self._decode(j)
            except DataError as err:
                if not self.train:
                    raise
                self._skip(j, err)
                continue
            if self.cache is not None:
                self.cache[i] = t
            return t
        raise DataError(f"none of the {n} training images can be read (see the warnings above)")

    def __getitem__(self, item) -> torch.Tensor:
        i, seed = item if isinstance(item, tuple) else (item, 0)
        t = self._load(i)
        p = self.patch_size
        h, w = t.shape[-2:]
        if self.train:
            g = torch.Generator().manual_seed(int(seed))
            top = int(torch.randint(0, h - p + 1, (1,), generator=g))
            left = int(torch.randint(0, w - p + 1, (1,), generator=g))
            t = t[:, top : top + p, left : left + p]
            flips = torch.rand(2, generator=g)
            if flips[0] < 0.5:
                t = t.flip(-1)
            if flips[1] < 0.5:
                t = t.flip(-2)
        else:
            top, left = (h - p) // 2, (w - p) // 2
            t = t[:, top : top + p, left : left + p]
        return t.float().div_(255.0)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and machines)."""
    h = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@dataclass
class StepBatchSampler:
    """Yields the batches of steps ``start_step .. steps-1`` as lists of
    ``(index, augmentation seed)``.

    Each epoch is a :class:`~torch.utils.data.DistributedSampler` permutation
    (``set_epoch``), so ranks get disjoint shards; the batch of a step depends
    only on ``(seed, step, rank)``, which makes resuming exact.
    """

    num_images: int
    batch_size: int
    steps: int
    seed: int = 0
    start_step: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if self.num_images < 1:
            raise DataError("no training images")
        self._sampler = DistributedSampler(
            range(self.num_images), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=self.seed
        )

    def batch_indices(self, step: int) -> List[int]:
        per_epoch = max(1, len(self._sampler) // self.batch_size)
        epoch, k = divmod(step, per_epoch)
        self._sampler.set_epoch(epoch)
        order = list(self._sampler)
        if len(order) < self.batch_size:
            order = (order * math.ceil(self.batch_size / len(order)))[: self.batch_size]
        return order[k * self.batch_size : (k + 1) * self.batch_size]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for step in range(self.start_step, self.steps):
            yield [(i, mix_seed(self.seed, step, self.rank, j)) for j, i in enumerate(self.batch_indices(step))]

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)


def load_validation(images: Sequence[ImageRef], size: int, max_images: Optional[int] = None) -> torch.Tensor:
    """Centre crops of the validation images as one ``(n, 3, size, size)`` batch."""
    images = list(images)[: max_images or None]
    ds = PatchDataset(images, patch_size=size, train=False, cache=False)
    crops, skipped = [], 0
    for i in range(len(ds)):
        try:
            crops.append(ds[i])
        except DataError as err:
            skipped += 1
            warnings.warn(f"skipping an unreadable validation image ({skipped} of {len(ds)} so far): {err}",
                          UserWarning, stacklevel=2)
    return torch.stack(crops) if crops else torch.empty(0, 3, size, size)
