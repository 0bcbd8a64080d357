#!/usr/bin/env python3
"""Training-step throughput on this machine: ours vs plain CompressAI, and CPU options.

Table 1: steps/s of gainedvae's training step (gained-mbt2018-mean, level sampled
per batch) versus a plain CompressAI MeanScaleHyperprior step with the same
widths, batch and patch, timed interleaved in one run (goal: ours/plain >= 0.95).

Table 2: CPU options for the gained step: threads, channels_last,
torch.compile, and data loading in-process vs in worker processes; each
option's first-step loss is compared with the default's (same weights, batch
and noise) so that only options giving the same loss are eligible.

  python benchmarks/train_throughput.py                      # N=64 M=96 B=8 P=128
  python benchmarks/train_throughput.py -N 128 -M 192 --json results/benchmarks/train_throughput.json
"""

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from compressai.models import MeanScaleHyperprior

from gainedvae.checkpoint import atomic_write_bytes
from gainedvae.models import get_model
from gainedvae.models import DEFAULT_LAMBDAS
from gainedvae.train import compiled, configure_optimizers, model_forward, rate_distortion


LEVELS = len(DEFAULT_LAMBDAS)


def make_step(net, xs, gained=True, channels_last=False, compiled_fwd=False):
    """One training step per call, as train.py runs it: step i trains on ``xs[i % len(xs)]`` at
    level ``i % 8`` (a Python int, like per-batch level sampling); the plain model at lambda 0.013."""
    opt, aux = configure_optimizers(net, 1e-4, 1e-3)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    fwd = compiled(net) if compiled_fwd else net
    counter = itertools.count()

    def step():
        i = next(counter)
        x, level = xs[i % len(xs)], i % LEVELS
        lmbda = torch.tensor(DEFAULT_LAMBDAS[level] if gained else 0.013)
        opt.zero_grad(set_to_none=True)
        aux.zero_grad(set_to_none=True)
        out = model_forward(fwd, x, level if gained else None)
        loss = rate_distortion(out, x, lmbda)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        a = net.aux_loss()
        a.backward()
        aux.step()
        return float(loss.detach())

    return step


def timed(step, n):
    t = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - t)


def build(args, name, seed=0):
    torch.manual_seed(seed)
    if name == "plain":
        return MeanScaleHyperprior(args.N, args.M)
    return get_model("gained-mbt2018-mean", N=args.N, M=args.M)


def trajectory(args, xs, **opts):
    """Losses of the first ``--trajectory`` steps from the same weights, batches and noise seed."""
    net = build(args, "gained")
    step = make_step(net, xs, **opts)
    torch.manual_seed(123)
    return [step() for _ in range(args.trajectory)]


def compare_ours_plain(args, xs):
    steps = {"ours": make_step(build(args, "gained"), xs), "plain": make_step(build(args, "plain"), xs, gained=False)}
    for s in steps.values():
        for _ in range(args.warmup):
            s()
    rates = {k: [] for k in steps}
    for _ in range(args.repeats):  # interleaved
        for k, s in steps.items():
            rates[k].append(timed(s, args.steps))
    return {k: statistics.median(v) for k, v in rates.items()}


def loader_rate(args, workers):
    """Steady-state batches/s: the decode cache is warmed by a full pass first."""
    from torch.utils.data import DataLoader

    from gainedvae.data import PatchDataset, StepBatchSampler, split_dataset

    images, _ = split_dataset(args.data, 0)
    ds = PatchDataset(images, args.patch)
    warm = -(-len(ds) // args.batch) * max(1, workers)
    n = warm + 50
    loader = DataLoader(ds, batch_sampler=StepBatchSampler(len(ds), args.batch, n, 0), num_workers=workers)
    it = iter(loader)
    for _ in range(warm):
        next(it)
    t = time.perf_counter()
    count = sum(1 for _ in it)
    return count / (time.perf_counter() - t)


def options_table(args, xs):
    """Every option's step built and warmed up (every level seen twice, so torch.compile has made
    all its graphs) first, then timed interleaved (round-robin) so that drifting machine speed hits
    all options alike. Each option's loss trajectory is compared with the default's."""
    configs = [("default (2 threads)", {}, 2), ("1 thread", {}, 1), ("channels_last", {"channels_last": True}, 2)]
    if args.compile:
        configs.append(("torch.compile", {"compiled_fwd": True}, 2))
    built = []
    for label, opts, threads in configs:
        torch.set_num_threads(threads)
        try:
            t = time.perf_counter()  # the option's first use: torch.compile compiles here
            losses = trajectory(args, xs, **opts)
            first_s = time.perf_counter() - t
            step = make_step(build(args, "gained"), xs, **opts)
            for _ in range(args.warmup):
                step()
            built.append([label, threads, step, losses, first_s, ""])
        except Exception as err:  # e.g. no compiler available for torch.compile
            built.append([label, threads, None, None, float("nan"), f"failed: {type(err).__name__}"])
    rates = {b[0]: [] for b in built}
    for _ in range(args.repeats):
        for label, threads, step, *_ in built:
            if step is not None:
                torch.set_num_threads(threads)
                rates[label].append(timed(step, args.steps))
    torch.set_num_threads(2)
    ref = built[0][3]
    rows = []
    for label, _, step, losses, first_s, note in built:
        rate = statistics.median(rates[label]) if rates[label] else float("nan")
        diff = max(abs(a - b) / abs(b) for a, b in zip(losses, ref)) if losses else float("nan")
        extra_s = first_s - args.trajectory / rate if rate == rate else float("nan")  # first use beyond steady speed
        rows.append({"option": label, "steps_per_s": rate, "max_rel_loss_diff": diff,
                     "same_loss": diff <= args.rtol, "warmup_extra_s": extra_s, "note": note})
    base = rows[0]["steps_per_s"]
    for r in rows:  # steps after which the option's extra warm-up is repaid
        saving = 1 / base - 1 / r["steps_per_s"]
        r["break_even_steps"] = max(0.0, r["warmup_extra_s"]) / saving if saving > 0 else float("inf")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-N", type=int, default=64, help="channels of the hidden layers (default: %(default)s)")
    p.add_argument("-M", type=int, default=96, help="channels of the latent y (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default: %(default)s)")
    p.add_argument("--patch", type=int, default=128, help="side of the random training patches (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="steps per timing")
    p.add_argument("--repeats", type=int, default=5, help="timings per option, interleaved; the median is reported (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2 * 8 + 2, help="untimed steps first (every level twice)")
    p.add_argument("--trajectory", type=int, default=24, help="steps whose losses are compared between options")
    p.add_argument("--rtol", type=float, default=1e-4, help="largest relative loss difference called the same loss")
    p.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    p.add_argument("--data", default="../shared/data/bsds500/train", help="images for the data-loading rows")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    xs = [torch.rand(args.batch, 3, args.patch, args.patch) for _ in range(4)]
    print(f"N={args.N} M={args.M} batch={args.batch} patch={args.patch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; level cycles through the 8 levels; "
          f"median of {args.repeats} x {args.steps} steps\n")

    rates = compare_ours_plain(args, xs)
    ratio = rates["ours"] / rates["plain"]
    print("| training step | steps/s |\n|---|---|")
    print(f"| gainedvae gained-mbt2018-mean | {rates['ours']:.3f} |\n| CompressAI MeanScaleHyperprior | {rates['plain']:.3f} |")
    print(f"| ratio ours / plain (goal >= 0.95) | {ratio:.3f} |\n")

    rows = options_table(args, xs)
    print(f"| CPU option (gained step) | steps/s | max rel. loss diff over {args.trajectory} steps | same loss (<= {args.rtol:g}) "
          "| first use beyond steady (s) | pays off after (steps) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['option']} | {r['steps_per_s']:.3f} | {r['max_rel_loss_diff']:.1e} | {'yes' if r['same_loss'] else 'no'} "
              f"{r['note']}| {r['warmup_extra_s']:.1f} | {r['break_even_steps']:.0f} |")
    loaders = {}
    if Path(args.data).exists():
        for workers in (0, 1, 2):
            loaders[workers] = loader_rate(args, workers)
        print("\n| data loading (real JPEGs, decode cache warm) | batches/s |\n|---|---|")
        for w, r in loaders.items():
            print(f"| {'in-process' if w == 0 else f'{w} worker(s)'} | {r:.1f} |")
    eligible = [r for r in rows if r["same_loss"] and r["steps_per_s"] == r["steps_per_s"]]
    best = max(eligible, key=lambda r: r["steps_per_s"])
    print(f"\nfastest option with the default's loss: {best['option']}")
    if args.json:
        data = {"config": vars(args), "torch": torch.__version__, "ours_vs_plain": {**rates, "ratio": ratio},
                "options": rows, "loader_batches_per_s": loaders, "fastest": best["option"]}
        atomic_write_bytes(args.json, json.dumps(data, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
