"""Start-up cost of the ``gainedvae`` command, and many files per call vs one call per file (issue 20).

Times whole processes (``python -m gainedvae ...``, what the ``gainedvae``
script runs): wall seconds from start to exit and the peak resident memory of
the process (``ru_maxrss`` from ``os.wait4``), median / min / max over
``--runs`` runs after ``--warmup`` uncounted ones. Each command runs for the
``--before`` tree (optional: a checkout of an older commit, e.g. made with
``git worktree add``) and this tree in turn (before, after, before, after,
...), so a drift in the machine's load hits both alike. Then the batch gain:
``--images`` small images coded (and decoded) by one call against one call per
file. Prints a markdown table and writes JSON.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/startup.py --before /tmp/wt-20-before
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(python: str, tree: Path, argv, cwd=None):
    """One process: ``(wall seconds, peak RSS in MB, exit status)``; its stdout is discarded.

    Started with ``os.posix_spawn`` (vfork-style: the child never holds a copy of
    this process's memory, so its ``ru_maxrss`` is the command's own peak).
    """
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as err:
        actions = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0), (os.POSIX_SPAWN_DUP2, err.fileno(), 2)]
        start = time.perf_counter()
        pid = os.posix_spawn(python, [python, "-m", "gainedvae", *argv], env, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            text = err.read().decode(errors="replace").strip()
            raise SystemExit(f"{' '.join(argv)} (PYTHONPATH={tree}) failed ({code}): {text}")
    return wall, usage.ru_maxrss / 1024, code


def stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def time_interleaved(trees: dict, argv_for, runs: int, warmup: int, python: str, cwd: Path):
    """``{label: {"wall": stats, "rss_mb": stats}}``, the trees taking turns run by run."""
    samples = {label: ([], []) for label in trees}
    for i in range(warmup + runs):
        for label, tree in trees.items():
            wall, rss, _ = run_once(python, tree, argv_for(label), cwd)
            if i >= warmup:
                samples[label][0].append(wall)
                samples[label][1].append(rss)
    return {label: {"wall": stats(w), "rss_mb": stats(r)} for label, (w, r) in samples.items()}


_MAKE_IMAGES = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
folder, count, height, width = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(count):
    rng = np.random.default_rng(i)
    smooth = np.kron(rng.random((height // 8 + 1, width // 8 + 1, 3)), np.ones((8, 8, 1)))[:height, :width]
    noisy = np.clip(smooth + 0.03 * rng.standard_normal((height, width, 3)), 0, 1)
    Image.fromarray((255 * noisy).astype("uint8")).save(folder / f"img{i:02d}.png")
"""


def make_images(python: str, folder: Path, count: int, height: int, width: int):
    """``count`` smooth noisy RGB images, made in a child process: this process stays small, since
    a child's peak memory (``ru_maxrss``) can never read below the memory of the process it was
    started from (Linux keeps the pre-``exec`` peak)."""
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.posix_spawn(python, [python, "-c", _MAKE_IMAGES, str(folder), str(count), str(height), str(width)],
                         dict(os.environ))
    _, status, _ = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("making the test images failed")
    return [folder / f"img{i:02d}.png" for i in range(count)]


def fmt(s):
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path,
                        help="source tree of the older gainedvae to compare against (its folder holding gainedvae/); "
                             "omitted: only this tree is timed")
    parser.add_argument("--after", type=Path, default=ROOT, help="source tree of the gainedvae to time (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="Python interpreter that runs the commands")
    parser.add_argument("--runs", type=int, default=5, help="counted runs per command and tree (median, min, max)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted runs per command and tree, first")
    parser.add_argument("--images", type=int, default=20, help="images for the batch comparison (0: skip it)")
    parser.add_argument("--batch-runs", type=int, default=2,
                        help="repeats of the batch comparison (one call for all files, one call per file)")
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"),
                        help="height and width of the synthetic test images")
    parser.add_argument("--checkpoint", help="checkpoint for compress/decompress (default: the shipped model)")
    parser.add_argument("--commands", nargs="+", default=["help", "version", "info", "compress", "decompress"],
                        choices=["help", "version", "info", "compress", "decompress"], help="start-up rows to time")
    parser.add_argument("--out", type=Path, default=ROOT / "results/benchmarks/startup.json", help="JSON output")
    args = parser.parse_args(argv)

    args.out = args.out.resolve()  # before the chdir below
    trees = {"before": args.before.resolve()} if args.before else {}
    trees["after"] = args.after.resolve()
    work = Path(tempfile.mkdtemp(prefix="gainedvae-startup-"))
    ckpt = ["-c", str(Path(args.checkpoint).resolve())] if args.checkpoint else []
    python = shutil.which(args.python) or args.python
    args.python = os.path.abspath(python)
    os.chdir(work)  # posix_spawn has no cwd: every path below is absolute
    load = [os.getloadavg()[0]]
    started = time.time()
    try:
        (image,) = make_images(args.python, work / "one", 1, *args.size)
        sample = work / "sample.gvae"
        run_once(args.python, trees["after"], ["compress", image, "-o", sample, *ckpt], work)
        commands = {
            "help": lambda label: ["--help"],
            "version": lambda label: ["--version"],
            "info": lambda label: ["info", sample],
            "compress": lambda label: ["compress", image, "-o", work / f"{label}.gvae", "--force", *ckpt],
            "decompress": lambda label: ["decompress", sample, "-o", work / f"{label}.png", "--force", *ckpt],
        }
        startup = {}
        for name in args.commands:
            startup[name] = time_interleaved(trees, commands[name], args.runs, args.warmup, args.python, work)
            load.append(os.getloadavg()[0])
            print(f"{name}: " + ", ".join(f"{k} {fmt(v['wall'])} s" for k, v in startup[name].items()), file=sys.stderr)

        batch = None
        if args.images:
            images = make_images(args.python, work / "many", args.images, *args.size)
            coded, decoded = work / "coded", work / "decoded"
            coded.mkdir()
            decoded.mkdir()
            after = trees["after"]
            rows = {"compress": {"one call": [], "per file": []}, "decompress": {"one call": [], "per file": []}}
            for _ in range(args.batch_runs):
                wall, _, _ = run_once(args.python, after, ["compress", *images, "-o", coded, "--force", *ckpt], work)
                rows["compress"]["one call"].append(wall)
                rows["compress"]["per file"].append(sum(
                    run_once(args.python, after, ["compress", p, "-o", coded / f"{p.stem}.gvae", "--force", *ckpt], work)[0]
                    for p in images))
                files = sorted(coded.glob("*.gvae"))
                wall, _, _ = run_once(args.python, after, ["decompress", *files, "-o", decoded, "--force", *ckpt], work)
                rows["decompress"]["one call"].append(wall)
                rows["decompress"]["per file"].append(sum(
                    run_once(args.python, after, ["decompress", p, "-o", decoded / f"{p.stem}.png", "--force", *ckpt],
                             work)[0]
                    for p in files))
                load.append(os.getloadavg()[0])
            batch = {cmd: {k: stats(v) for k, v in r.items()} for cmd, r in rows.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "python": args.python,
        "trees": {k: str(v) for k, v in trees.items()},
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "image_size": list(args.size),
        "benchmark_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "runs": args.runs,
        "warmup": args.warmup,
        "load_average_1min": load,
        "seconds": time.time() - started,
        "startup": startup,
        "batch": batch,
        "images": args.images,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    labels = list(trees)
    print(f"## Start-up: `python -m gainedvae ...`, whole process, median (min-max) of {args.runs} runs\n")
    head = " | ".join(f"{k} wall s | {k} peak MB" for k in labels)
    print(f"| command | {head} |" + (" after / before |" if len(labels) == 2 else ""))
    print("|---|" + "---|---|" * len(labels) + ("---|" if len(labels) == 2 else ""))
    for name, res in startup.items():
        cells = " | ".join(f"{fmt(res[k]['wall'])} | {res[k]['rss_mb']['median']:.0f}" for k in labels)
        ratio = (f" {res['after']['wall']['median'] / res['before']['wall']['median']:.3f} |"
                 if len(labels) == 2 else "")
        print(f"| {name} | {cells} |{ratio}")
    if batch:
        n = args.images
        print(f"\n## {n} images of {args.size[0]}x{args.size[1]}: one call vs {n} calls (after), "
              f"median (min-max) of {args.batch_runs}\n")
        print("| command | one call s | one call per file s (sum) | per file / one call |")
        print("|---|---|---|---|")
        for cmd, r in batch.items():
            print(f"| {cmd} | {fmt(r['one call'])} | {fmt(r['per file'])} | "
                  f"{r['per file']['median'] / r['one call']['median']:.1f} |")
    print(f"\nPeak memory of this benchmark process: {result['benchmark_peak_mb']:.0f} MB (a floor for the peaks above).")
    print(f"\n1-minute load average during the run: {', '.join(f'{v:.2f}' for v in load)} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
