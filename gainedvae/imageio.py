"""Image I/O: files and arrays to 8-bit RGB and back, one conversion for the whole library.

The codec (:mod:`gainedvae.codec`), the training data (:mod:`gainedvae.data`)
and the evaluation (:mod:`gainedvae.evaluate`) read images through
:func:`to_rgb8`, so a file means the same pixels everywhere (one 16-bit rule:
``round(v / 257)``). Array layout: ``uint8`` ``(H, W, 3)``; tensor layout:
float ``(1, 3, H, W)`` in ``[0, 1]`` (``v / 255``). Depends on numpy, PIL, torch
and the torch-free :mod:`gainedvae.container` (errors, size limits) only.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .atomic import atomic_write_bytes
from .container import DEFAULT_MAX_PIXELS, CodecError, check_pixels

__all__ = ["image_to_tensor", "load_image", "psnr_8bit", "save_image", "tensor_to_image", "to_rgb8"]

PathLike = Union[str, os.PathLike]
ImageLike = Union[np.ndarray, Tensor]


def load_image(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as 8-bit RGB, ``uint8`` array of shape ``(H, W, 3)``.

    Grayscale, palette, CMYK, YCbCr, ... are converted to RGB; 16-bit images
    (``I;16*``, and ``I`` with values above 255) are scaled to 8 bits
    (``round(v / 257)``, see :func:`to_rgb8`); an alpha channel is dropped with a warning naming
    the file; the EXIF orientation is applied; of an animated image (GIF,
    WebP, APNG) only the first frame is read, with a warning naming the frame
    count. The size in the file's header is checked against ``max_pixels``
    (padded to 64, as for :func:`decode`) before any pixel is decoded.
    Raises :class:`CodecError` for missing, unreadable, non-image or too
    large files.
    """
    path = Path(path)
    if not path.exists():
        raise CodecError(f"image {path} does not exist")
    if path.is_dir():
        raise CodecError(f"image {path} is a directory")
    try:
        with Image.open(path) as img:
            check_pixels(img.height, img.width, max_pixels, f"image {path}")
            _warn_if_animated(img, path)
            img.load()
            try:
                upright = ImageOps.exif_transpose(img)  # a copy, turned as the EXIF orientation says
            except Exception:  # malformed EXIF: keep the stored orientation
                upright = img
            if upright is not img:
                img.close()  # frees the decoded pixels now: one full-size buffer less (96 MB at 24 MP)
            if has_alpha(upright):
                warnings.warn(f"{path}: dropping the alpha channel ({upright.mode} image coded as RGB)", UserWarning,
                              stacklevel=2)
            return to_rgb8(upright, path)
    except CodecError:
        raise
    except UnidentifiedImageError:
        raise CodecError(f"cannot read image {path}: not an image file (or a format PIL cannot read)") from None
    except Image.DecompressionBombError as err:
        raise CodecError(f"cannot read image {path}: {err}") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as err:
        raise CodecError(f"cannot read image {path}: {type(err).__name__}: {err}") from None


def _warn_if_animated(img: Image.Image, path: Path) -> None:
    frames = getattr(img, "n_frames", 1)
    if isinstance(frames, int) and frames > 1:
        warnings.warn(
            f"{path}: animated image with {frames} frames; only the first frame is coded", UserWarning, stacklevel=3
        )


def has_alpha(img: Image.Image) -> bool:
    """Whether ``img`` has an alpha channel (or a transparent palette entry)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def to_rgb8(img: Image.Image, source: object = "image") -> np.ndarray:
    """A decoded PIL image as 8-bit RGB, ``uint8`` array of shape ``(H, W, 3)``.

    The one conversion of the library (codec input, training data, evaluation):

    * 16-bit (``I;16*``, and ``I`` with values above 255): ``round(v / 257)``,
      which maps ``0..65535`` onto ``0..255`` with both ends fixed
      (``65535 / 257 = 255`` exactly; ``v / 256`` would never reach 255);
      ``I`` images holding 8-bit values are taken as they are;
    * float (``F``): values in ``[0, 1]`` are scaled by 255, then rounded and
      clipped to ``0..255``; NaN becomes 0;
    * everything else (grayscale, palette, CMYK, YCbCr, alpha): PIL's
      ``convert("RGB")`` (alpha is dropped).

    Raises :class:`CodecError` naming ``source`` for a decoded shape that is not an RGB image.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        if mode == "I" and arr.size and arr.max() <= 255 and arr.min() >= 0:
            gray = arr  # 8-bit values stored in a 32-bit image
        else:
            gray = np.clip(arr, 0, 65535) / 257.0
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif mode == "F":
        gray = np.asarray(img, dtype=np.float64)
        gray = np.nan_to_num(gray, nan=0.0)
        if gray.size and gray.max() <= 1.0:
            gray = gray * 255.0  # float images in [0, 1]
        rgb = np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    else:
        rgb = np.asarray(img if mode == "RGB" else img.convert("RGB"))  # (converting RGB would only copy it)
    rgb = np.array(rgb, dtype=np.uint8, order="C")  # a writable copy
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise CodecError(f"cannot read image {source}: unexpected decoded shape {rgb.shape}")
    return rgb


def image_to_tensor(image: ImageLike) -> Tensor:
    """``uint8`` ``(H, W, 3)`` array (or a float tensor) -> float ``(1, 3, H, W)`` in [0, 1]."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise CodecError(f"expected a uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}")
        if not image.flags.writeable or not image.flags.c_contiguous:
            image = np.array(image, dtype=np.uint8, order="C")
        return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div_(255)
    if isinstance(image, Tensor):
        x = image.unsqueeze(0) if image.dim() == 3 else image
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise CodecError(f"expected an image tensor of shape (1, 3, H, W) or (3, H, W), got {tuple(image.shape)}")
        if not x.is_floating_point():
            raise CodecError(f"expected a float image tensor in [0, 1], got {x.dtype}")
        return x
    raise CodecError(f"expected an image array or tensor, got {type(image).__name__}")


def float_to_uint8(x: Tensor) -> Tensor:
    """The one float -> 8-bit rule: ``round(255 * clamp(x, 0, 1))`` as ``uint8``, same shape
    (NaN stays NaN through the clamp: callers that can get one check first)."""
    return x.float().clamp(0, 1).mul_(255).round_().to(torch.uint8)


def tensor_to_image(x: Tensor) -> np.ndarray:
    """Float ``(1, 3, H, W)`` / ``(3, H, W)`` in [0, 1] -> ``uint8`` ``(H, W, 3)`` (rounded)."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise CodecError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise CodecError(f"expected an image tensor of shape (3, H, W), got {tuple(x.shape)}")
    x = x.detach()
    out = torch.empty(x.shape[1], x.shape[2], 3, dtype=torch.uint8)
    rows = max(1, (1 << 22) // max(1, x.shape[2]))  # ~4 M values per chunk: no full-size float temporaries
    for r in range(0, x.shape[1], rows):
        out[r : r + rows] = float_to_uint8(x[:, r : r + rows]).permute(1, 2, 0).cpu()
    return out.numpy()


def save_image(image: ImageLike, path: PathLike) -> Path:
    """Write an image atomically (temp file + ``os.replace``).

    The format follows the file extension when PIL knows it, PNG otherwise.
    """
    arr = image if isinstance(image, np.ndarray) else tensor_to_image(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise CodecError(f"expected a uint8 (H, W, 3) image, got {arr.dtype} {arr.shape}")
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    buf = io.BytesIO()
    try:
        Image.fromarray(arr, "RGB").save(buf, format=fmt)
    except (OSError, KeyError, ValueError) as err:
        raise CodecError(f"cannot write {path} as {fmt}: {err}") from None
    atomic_write_bytes(path, buf.getvalue())
    return path


def psnr_8bit(x: ImageLike, x_hat: ImageLike) -> float:
    """PSNR (dB) between two images after rounding both to 8 bits (inf if equal)."""
    a = image_to_tensor(x) if isinstance(x, np.ndarray) else x
    b = image_to_tensor(x_hat) if isinstance(x_hat, np.ndarray) else x_hat
    a8 = a.detach().double().clamp(0, 1).mul(255).round()
    b8 = b.detach().double().clamp(0, 1).mul(255).round().to(a8.device)
    if a8.shape != b8.shape:
        raise CodecError(f"PSNR of images with different shapes {tuple(a8.shape)} and {tuple(b8.shape)}")
    mse = torch.mean((a8 - b8) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
