"""The ``gainedvae`` command: compress / decompress images, inspect ``.gvae`` files.

::

    gainedvae compress IMG -o OUT.gvae [--quality Q | --bpp B | --psnr P] [--refine STEPS] [--checkpoint C] [--force] [--max-pixels N]
    gainedvae compress IMG [IMG ...] -o DIR/ [options as above]
    gainedvae decompress IN.gvae -o IMG.png [--checkpoint C] [--force] [--max-pixels N]
    gainedvae decompress IN.gvae [IN.gvae ...] -o DIR/ [options as above]
    gainedvae info IN.gvae
    gainedvae export TRAINING_CKPT -o MODEL.pt [--float32] [--weights ema|raw] [--force]
    gainedvae widen CKPT -M 192 -o WIDE.pt [--seed S] [--weights ema|raw] [--force]

Every failure prints one line ``gainedvae: error: ...`` to stderr and exits
with status 2; outputs are written atomically and an existing output is only
replaced with ``--force``. Set ``GAINEDVAE_DEBUG=1`` to get tracebacks.

With several inputs (or ``-o`` ending in ``/``), ``-o`` is an existing folder
and each input ``NAME.ext`` is written to ``DIR/NAME.gvae`` (``DIR/NAME.png``):
the model is loaded once, a failing file prints one error line naming it and
the others are still coded, a summary line follows, and the exit status is 2
if any file failed.

Start-up is cheap: ``--help``, ``--version`` and ``info`` import neither torch
nor CompressAI (the container is read by :mod:`gainedvae.container`);
``compress`` / ``decompress`` import the codec when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

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
    sub = parser.add_subparsers(dest="command", metavar="{compress,decompress,info,export,widen}", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("compress", help="code images into .gvae files")
    p.add_argument("images", nargs="+", metavar="IMG", help="input image(s) (any format PIL reads)")
    p.add_argument("-o", "--output", required=True,
                   help="output .gvae file; with several inputs (or a trailing /) an existing folder, "
                        "written as FOLDER/NAME.gvae for each input NAME.ext")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("-q", "--quality", type=float, help="quality in [1, L] (default: middle of the range)")
    rate.add_argument("--bpp", type=float, help="target bits per pixel (rate control)")
    rate.add_argument("--psnr", type=float, help="target PSNR in dB (rate control)")
    p.add_argument("--tol", type=float, help="rate-control tolerance (relative for --bpp, default 0.02; dB for --psnr, default 0.1)")
    p.add_argument("--qmap", help="spatial quality map for gained-scgain: grayscale image (white = high quality) "
                   "or a number in [0, 1]")
    p.add_argument("--refine", type=_steps, default=0, metavar="STEPS",
                   help="slower, smaller files: optimise each image's latents for STEPS steps before coding "
                        "(about 0.9 s a step for a 768x512 image on one core; 60 steps saved 10 %% of the bits on Kodak; "
                        "same decoder; with --bpp/--psnr up to 4 refined trials after the plain search; default 0: off)")
    p.add_argument("-c", "--checkpoint", help="model checkpoint (default: the shipped model)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output (per file)")
    _add_max_pixels(p, "refuse larger input images (checked in the image header before decoding pixels)")

    p = sub.add_parser("decompress", help="decode .gvae files into images (PNG by default)")
    p.add_argument("inputs", nargs="+", metavar="IN.gvae", help="input .gvae file(s)")
    p.add_argument("-o", "--output", required=True,
                   help="output image (.png; format from the extension); with several inputs (or a trailing /) "
                        "an existing folder, written as FOLDER/NAME.png for each input NAME.gvae")
    p.add_argument("-c", "--checkpoint", help="model checkpoint (default: the shipped model)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output (per file)")
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

    p = sub.add_parser("widen", help="the checkpoint's model with more latent channels (M), same reconstruction: "
                                     "a start for train_gain.py --init (gainedvae.widen)")
    p.add_argument("checkpoint", help="checkpoint of a hyperprior model (bmshj2018-hyperprior, mbt2018-mean or their gained variants)")
    p.add_argument("-M", type=int, required=True, help="latent channels of the widened model (at least the model's M)")
    p.add_argument("-o", "--output", required=True, help="output .pt file")
    p.add_argument("--seed", type=int, default=0, help="seed of the new channels' initial weights (default 0)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="ema: the moving average of the weights where the checkpoint has one (default); raw: the raw weights")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    return parser


def _count(what: str, negative: str) -> Callable[[str], int]:
    """An argparse type: a whole number >= 0 of ``what``; ``negative`` is the message's expectation."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number of {what}, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"expected {negative}, got {value}")
        return value

    return parse


_pixel_count = _count("pixels", "0 (no limit) or a positive number of pixels")
_steps = _count("steps", "steps >= 0")  # --refine


def _add_max_pixels(p: argparse.ArgumentParser, what: str) -> None:
    from .container import DEFAULT_MAX_PIXELS, decode_memory_bytes

    p.add_argument(
        "--max-pixels", type=_pixel_count, default=DEFAULT_MAX_PIXELS, metavar="N",
        help=f"{what}: limit on the image size padded to multiples of 64 (default {DEFAULT_MAX_PIXELS}, "
             f"about {decode_memory_bytes(8192, 8192) / 1e9:.1f} GB to decode with the shipped model; 0 = no limit)",
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


#: One file's outcome: (the line to print, bytes of its .gvae file, its bpp).
Done = Tuple[str, int, float]
#: With more files than this (and stderr a terminal), a progress bar is shown.
PROGRESS_MIN_FILES = 3


def _is_batch(args, inputs: Sequence[str]) -> bool:
    """Several inputs, or ``-o DIR/``: one output per input, in an existing folder."""
    return len(inputs) > 1 or args.output.endswith(("/", os.sep))


def _batch_outputs(args, inputs: Sequence[str], suffix: str) -> List[Tuple[str, Path]]:
    """``[(input, DIR/STEM.suffix)]``; refuses a missing folder and two inputs with one output, before any work."""
    folder = Path(args.output)
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist (it is not created)"
        raise CLIError(f"with several inputs (or -o ending in /), -o must be an existing folder: {args.output} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write outputs: folder {folder} is not writable")
    pairs, seen = [], {}
    for src in inputs:
        out = folder / (Path(src).stem + suffix)
        key = os.path.normcase(out.name)
        if key in seen:
            raise CLIError(f"inputs {seen[key]} and {src} would both be written to {out}; "
                           "rename one or code them in separate calls")
        seen[key] = src
        pairs.append((src, out))
    return pairs


def _check_single_output(args, inputs: Sequence[str], suffix: str) -> Path:
    if Path(args.output).is_dir():
        raise CLIError(f"output {args.output} is a directory (end it with / to write NAME{suffix} into it)")
    return _check_output(args.output, args.force, inputs)


def _compress_file(args, src: str, out: Path, model: Callable) -> Done:
    from . import codec
    from .atomic import atomic_write_bytes

    image = codec.load_image(src, max_pixels=_max_pixels(args))
    net = model()
    h, w = image.shape[:2]
    with _refine_bar(src, args.refine) as progress:
        refine = {"refine": args.refine, "progress": progress}
        if args.bpp is not None or args.psnr is not None:
            kw = {} if args.tol is None else {"tol": args.tol}
            if args.bpp is not None:
                result = codec.encode_to_bpp(net, image, args.bpp, qmap=args.qmap, **refine, **kw)
            else:
                result = codec.encode_to_psnr(net, image, args.psnr, qmap=args.qmap, **refine, **kw)
            atomic_write_bytes(out, result.data)
            return f"{out}: {w}x{h}, {result.summary()}", result.nbytes, result.bpp
        quality = args.quality if args.quality is not None else (1 + net.levels) / 2
        data = codec.encode(net, image, quality, qmap=args.qmap, **refine)
    atomic_write_bytes(out, data)
    bpp = len(data) * 8 / (h * w)
    refined = f", refined {args.refine} steps" if args.refine else ""
    return f"{out}: {w}x{h}, {len(data)} bytes, {bpp:.4f} bpp, quality {quality:g}{refined}", len(data), bpp


@contextmanager
def _refine_bar(src: str, steps: int) -> Iterator[Optional[Callable[[int, float], None]]]:
    """A progress bar over the refinement steps of one file (stderr, a terminal only; it starts
    again for each refined trial of rate control); yields its ``progress(step, loss)`` callback."""
    if not steps:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=steps, desc=f"{Path(src).name}: refining", unit="step", file=sys.stderr, disable=None, leave=False)

    def progress(step: int, loss: float) -> None:
        if step == 0:
            bar.reset()
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(1)

    try:
        yield progress
    finally:
        bar.close()


def _decompress_file(args, src: str, out: Path, model: Callable) -> Done:
    from . import codec

    container = codec.read_container(src)  # validate before loading a model
    net = model()
    try:
        image = codec.decode_image(net, container, max_pixels=_max_pixels(args))
    except codec.CodecError as err:
        raise CLIError(f"{src}: {err}") from None
    codec.save_image(image, out)
    message = (f"{out}: {container.width}x{container.height} from {src} "
               f"({container.nbytes} bytes, {container.bpp:.4f} bpp, quality {container.quality:g})")
    return message, container.nbytes, container.bpp


def _run_batch(args, inputs: Sequence[str], suffix: str, code_file: Callable) -> Tuple[str, int]:
    """Code every input into ``-o DIR/``: one model load, per-file errors, a summary line.

    Returns ``(summary, exit status)``: 2 when any file failed.
    """
    start = time.perf_counter()
    pairs = _batch_outputs(args, inputs, suffix)
    net = _load_model(args.checkpoint)  # one load; a model error stops everything (one line, status 2)
    debug = bool(os.environ.get("GAINEDVAE_DEBUG"))
    bar = None
    if len(pairs) > PROGRESS_MIN_FILES:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), file=sys.stderr, unit="file", disable=None, leave=False)  # None: a terminal only
    write = bar.write if bar is not None else (lambda text, file=None: print(text, file=file))
    failed, nbytes, bpps = 0, 0, []
    try:
        for src, out in pairs:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                warnings.filterwarnings("ignore", category=FutureWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                try:
                    out = _check_output(str(out), args.force, [src])
                    message, size, bpp = code_file(args, src, out, lambda: net)
                except KeyboardInterrupt:
                    raise
                except Exception as err:
                    if debug:
                        raise
                    text = _error_text(err)
                    failed += 1
                    message = None
            for w in caught:
                write(f"{PROG}: warning: {_one_line(w.message)}", file=sys.stderr)
            if message is None:
                named = text if src in text else f"{src}: {text}"
                write(f"{PROG}: error: {_one_line(named)}", file=sys.stderr)
            else:
                nbytes += size
                bpps.append(bpp)
                write(message, file=sys.stdout)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    ok = len(pairs) - failed
    mean = f"mean {sum(bpps) / len(bpps):.4f} bpp" if bpps else "mean - bpp"
    summary = (f"{len(pairs)} files: {ok} ok, {failed} failed; {nbytes} bytes, {mean}; "
               f"{time.perf_counter() - start:.2f} s")
    return summary, (EXIT_ERROR if failed else 0)


def _cmd_compress(args):
    qmap = args.qmap
    if qmap is not None:
        try:
            args.qmap = float(qmap)  # a uniform map
        except ValueError:
            if not Path(qmap).is_file():
                raise CLIError(f"--qmap {qmap}: expected a number in [0, 1] or a grayscale image file") from None
    if _is_batch(args, args.images):
        return _run_batch(args, args.images, ".gvae", _compress_file)
    out = _check_single_output(args, args.images, ".gvae")
    return _compress_file(args, args.images[0], out, lambda: _load_model(args.checkpoint))[0]


def _cmd_decompress(args):
    if _is_batch(args, args.inputs):
        return _run_batch(args, args.inputs, ".png", _decompress_file)
    out = _check_single_output(args, args.inputs, ".png")
    return _decompress_file(args, args.inputs[0], out, lambda: _load_model(args.checkpoint))[0]


def _cmd_info(args) -> str:
    from . import container  # torch-free: info needs no model

    c = container.read_container(args.input)
    flags = f"0x{c.flags:02x}" + (" (quality map)" if c.flags & container.FLAG_QUALITY_MAP else "")
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


def _cmd_widen(args) -> str:
    from .checkpoint import read_checkpoint
    from .widen import widen_checkpoint

    out = _check_output(args.output, args.force, [args.checkpoint])
    try:
        widen_checkpoint(args.checkpoint, out, args.M, seed=args.seed, weights=args.weights)
    except ValueError as err:
        raise CLIError(f"{args.checkpoint}: {err}") from None
    payload = read_checkpoint(out)
    return f"{out}: {payload['model']} {payload['config']} (M {payload['widened_from']['M']} -> {args.M}, step {payload['widened_from']['step']})"


COMMANDS = {"compress": _cmd_compress, "decompress": _cmd_decompress, "info": _cmd_info, "export": _cmd_export,
            "widen": _cmd_widen}


def _error_text(err: BaseException) -> str:
    """The message of the one error line for ``err``."""
    from .container import CodecError

    checkpoint = sys.modules.get(f"{__package__}.checkpoint")  # not imported: no CheckpointError was raised
    if isinstance(err, (CLIError, CodecError)) or (checkpoint and isinstance(err, checkpoint.CheckpointError)):
        return str(err)
    if isinstance(err, OSError):
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        return f"{err.strerror or err}{':' if where else ''}{where}"
    if isinstance(err, MemoryError):
        return f"out of memory (MemoryError{': ' + str(err) if str(err) else ''})"
    if isinstance(err, (ValueError, RuntimeError)):
        return f"{type(err).__name__}: {err}"
    return f"internal error: {type(err).__name__}: {err} (set GAINEDVAE_DEBUG=1 for a traceback)"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error or, with several files, any file failed)."""
    debug = bool(os.environ.get("GAINEDVAE_DEBUG"))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            args = build_parser().parse_args(argv)
            result = COMMANDS[args.command](args)
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every failure: one line, no traceback
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(_error_text(err))}", file=sys.stderr)
        return EXIT_ERROR
    for w in caught:
        print(f"{PROG}: warning: {_one_line(w.message)}", file=sys.stderr)
    message, status = result if isinstance(result, tuple) else (result, 0)
    print(message)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
