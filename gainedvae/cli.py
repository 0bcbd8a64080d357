"""The ``gainedvae`` command: compress / decompress images, inspect ``.gvae`` files.

::

    gainedvae compress IMG -o OUT.gvae [--quality Q | --bpp B | --psnr P] [--checkpoint C] [--force] [--max-pixels N]
    gainedvae decompress IN.gvae -o IMG.png [--checkpoint C] [--force] [--max-pixels N]
    gainedvae info IN.gvae
    gainedvae export TRAINING_CKPT -o MODEL.pt [--float32] [--weights ema|raw] [--force]

Every failure prints one line ``gainedvae: error: ...`` to stderr and exits
with status 2; outputs are written atomically and an existing output is only
replaced with ``--force``. Set ``GAINEDVAE_DEBUG=1`` to get tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

PROG = "gainedvae"
EXIT_ERROR = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message):  # noqa: D401 - argparse API
        hint = f" (see '{self.prog} -h')"
        raise CLIError(f"{message}{hint}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Variable-rate learned image compression with gain units.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{compress,decompress,info,export}", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("compress", help="code an image into a .gvae file")
    p.add_argument("image", help="input image (any format PIL reads)")
    p.add_argument("-o", "--output", required=True, help="output .gvae file")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("-q", "--quality", type=float, help="quality in [1, L] (default: middle of the range)")
    rate.add_argument("--bpp", type=float, help="target bits per pixel (rate control)")
    rate.add_argument("--psnr", type=float, help="target PSNR in dB (rate control)")
    p.add_argument("--tol", type=float, help="rate-control tolerance (relative for --bpp, default 0.02; dB for --psnr, default 0.1)")
    p.add_argument("--qmap", help="spatial quality map for gained-scgain: grayscale image (white = high quality) "
                   "or a number in [0, 1]")
    p.add_argument("-c", "--checkpoint", help="model checkpoint (default: the shipped model)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    _add_max_pixels(p, "refuse larger input images (checked in the image header before decoding pixels)")

    p = sub.add_parser("decompress", help="decode a .gvae file into an image (PNG by default)")
    p.add_argument("input", help="input .gvae file")
    p.add_argument("-o", "--output", required=True, help="output image (.png; format from the extension)")
    p.add_argument("-c", "--checkpoint", help="model checkpoint (default: the shipped model)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    _add_max_pixels(p, "refuse files announcing a larger image")

    p = sub.add_parser("info", help="describe a .gvae file (no model needed)")
    p.add_argument("input", help="input .gvae file")

    p = sub.add_parser("export", help="weights-only copy of a (training) checkpoint with its entropy tables (decodes the same everywhere), float16 by default")
    p.add_argument("checkpoint", help="checkpoint written by train_gain.py or save_checkpoint")
    p.add_argument("-o", "--output", required=True, help="output .pt file")
    p.add_argument("--float32", action="store_true", help="keep float32 weights")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="ema: the moving average of the weights where the checkpoint has one (default); raw: the raw weights")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    return parser


def _pixel_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (no limit) or a positive number of pixels, got {value}")
    return value


def _add_max_pixels(p: argparse.ArgumentParser, what: str) -> None:
    from .codec import DECODE_BYTES_PER_PIXEL, DEFAULT_MAX_PIXELS

    p.add_argument(
        "--max-pixels", type=_pixel_count, default=DEFAULT_MAX_PIXELS, metavar="N",
        help=f"{what}: limit on the image size padded to multiples of 64 (default {DEFAULT_MAX_PIXELS}, "
             f"about {DEFAULT_MAX_PIXELS * DECODE_BYTES_PER_PIXEL / 1e9:.1f} GB to decode; 0 = no limit)",
    )


def _max_pixels(args) -> Optional[int]:
    return args.max_pixels or None


def _check_output(path: str, force: bool, inputs: Sequence[str] = ()) -> Path:
    out = Path(path)
    for src in inputs:
        try:
            if Path(src).exists() and out.exists() and os.path.samefile(src, out):
                raise CLIError(f"output {out} is the same file as input {src}")
        except OSError:
            pass
    if out.is_dir():
        raise CLIError(f"output {out} is a directory")
    if out.exists() and not force:
        raise CLIError(f"output {out} already exists (use --force to overwrite)")
    folder = out.parent
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist (it is not created)"
        raise CLIError(f"cannot write output {out}: folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write output {out}: folder {folder} is not writable")
    return out


def _load_model(checkpoint: Optional[str]):
    from .checkpoint import load_checkpoint
    from .codec import require_gained

    net = load_checkpoint(checkpoint)
    require_gained(net)
    return net


def _cmd_compress(args) -> str:
    from . import codec
    from .checkpoint import atomic_write_bytes

    qmap = args.qmap
    if qmap is not None:
        try:
            qmap = float(qmap)  # a uniform map
        except ValueError:
            if not Path(qmap).is_file():
                raise CLIError(f"--qmap {qmap}: expected a number in [0, 1] or a grayscale image file") from None
    out = _check_output(args.output, args.force, [args.image])
    image = codec.load_image(args.image, max_pixels=_max_pixels(args))
    net = _load_model(args.checkpoint)
    h, w = image.shape[:2]
    if args.bpp is not None or args.psnr is not None:
        kw = {} if args.tol is None else {"tol": args.tol}
        if args.bpp is not None:
            result = codec.encode_to_bpp(net, image, args.bpp, qmap=qmap, **kw)
        else:
            result = codec.encode_to_psnr(net, image, args.psnr, qmap=qmap, **kw)
        atomic_write_bytes(out, result.data)
        return f"{out}: {w}x{h}, {result.summary()}"
    quality = args.quality if args.quality is not None else (1 + net.levels) / 2
    data = codec.encode(net, image, quality, qmap=qmap)
    atomic_write_bytes(out, data)
    bpp = len(data) * 8 / (h * w)
    return f"{out}: {w}x{h}, {len(data)} bytes, {bpp:.4f} bpp, quality {quality:g}"


def _cmd_decompress(args) -> str:
    from . import codec

    out = _check_output(args.output, args.force, [args.input])
    container = codec.read_container(args.input)  # validate before loading a model
    net = _load_model(args.checkpoint)
    try:
        x_hat = codec.decode(net, container, max_pixels=_max_pixels(args))
    except codec.CodecError as err:
        raise CLIError(f"{args.input}: {err}") from None
    codec.save_image(x_hat, out)
    return (
        f"{out}: {container.width}x{container.height} from {args.input} "
        f"({container.nbytes} bytes, {container.bpp:.4f} bpp, quality {container.quality:g})"
    )


def _cmd_info(args) -> str:
    from . import codec

    c = codec.read_container(args.input)
    flags = f"0x{c.flags:02x}" + (" (quality map)" if c.flags & codec.FLAG_QUALITY_MAP else "")
    names = ["y", "z"] if len(c.streams) == 2 else [str(i) for i in range(len(c.streams))]
    streams = ", ".join(f"{n}={len(s)}" for n, s in zip(names, c.streams))
    lines = [
        f"file:        {args.input}",
        f"size:        {c.nbytes} bytes",
        f"format:      version {c.version}, flags {flags}",
        f"model:       {c.model}",
        f"weights:     {c.weights_hash}",
        f"image:       {c.width}x{c.height} (WxH)",
        f"quality:     {c.quality:.10g}",
        f"bpp:         {c.bpp:.4f}",
        f"streams:     {len(c.streams)} ({streams} bytes)",
    ]
    return "\n".join(lines)


def _cmd_export(args) -> str:
    from .checkpoint import export_checkpoint, read_checkpoint

    out = _check_output(args.output, args.force, [args.checkpoint])
    export_checkpoint(args.checkpoint, out, half=not args.float32, weights=args.weights)
    payload = read_checkpoint(out)
    params = sum(t.numel() for t in payload["state_dict"].values())
    return (f"{out}: {payload['model']} {payload['config']}, {params:,} parameters, "
            f"{out.stat().st_size / 2**20:.2f} MiB, step {payload.get('step', '?')}, {payload['weights']} weights")


COMMANDS = {"compress": _cmd_compress, "decompress": _cmd_decompress, "info": _cmd_info, "export": _cmd_export}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error)."""
    debug = bool(os.environ.get("GAINEDVAE_DEBUG"))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            args = build_parser().parse_args(argv)
            message = COMMANDS[args.command](args)
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every failure: one line, no traceback
        if debug:
            raise
        from .checkpoint import CheckpointError
        from .codec import CodecError

        if isinstance(err, (CLIError, CodecError, CheckpointError)):
            text = str(err)
        elif isinstance(err, OSError):
            where = f" {err.filename}" if getattr(err, "filename", None) else ""
            text = f"{err.strerror or err}{':' if where else ''}{where}"
        elif isinstance(err, MemoryError):
            text = f"out of memory (MemoryError{': ' + str(err) if str(err) else ''})"
        elif isinstance(err, (ValueError, RuntimeError)):
            text = f"{type(err).__name__}: {err}"
        else:
            text = f"internal error: {type(err).__name__}: {err} (set GAINEDVAE_DEBUG=1 for a traceback)"
        print(f"{PROG}: error: {_one_line(text)}", file=sys.stderr)
        return EXIT_ERROR
    for w in caught:
        print(f"{PROG}: warning: {_one_line(w.message)}", file=sys.stderr)
    print(message)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
