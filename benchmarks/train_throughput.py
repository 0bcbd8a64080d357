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
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from compressai.models import MeanScaleHyperprior

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gainedvae.checkpoint import atomic_write_bytes  # noqa: E402
from gainedvae.models import get_model  # noqa: E402
from gainedvae.train import configure_optimizers, model_forward, rate_distortion  # noqa: E402


def make_step(net, x, level, channels_last=False, compiled=False):
    opt, aux = configure_optimizers(net, 1e-4, 1e-3)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fwd = torch.compile(net) if compiled else net
    lmbda = torch.tensor(0.013)

    def step():
        opt.zero_grad(set_to_none=True)
        aux.zero_grad(set_to_none=True)
        out = model_forward(fwd, x, level)
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


def first_loss(args, x, **opts):
    net = build(args, "gained")
    torch.manual_seed(123)
    return make_step(net, x.clone(), torch.tensor(3), **opts)()


def compare_ours_plain(args, x):
    steps = {"ours": make_step(build(args, "gained"), x, torch.tensor(3)), "plain": make_step(build(args, "plain"), x, None)}
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


def options_table(args, x):
    """Every option's step built first, then timed interleaved (round-robin), so
    that drifting machine speed hits all options alike."""
    base_loss = first_loss(args, x)
    configs = [("default (2 threads)", {}, 2), ("1 thread", {}, 1), ("channels_last", {"channels_last": True}, 2)]
    if args.compile:
        configs.append(("torch.compile", {"compiled": True}, 2))
    built = []
    for label, opts, threads in configs:
        torch.set_num_threads(threads)
        try:
            loss = first_loss(args, x, **opts)
            step = make_step(build(args, "gained"), x, torch.tensor(3), **opts)
            for _ in range(args.warmup):
                step()
            built.append((label, opts, threads, step, loss, ""))
        except Exception as err:  # e.g. no compiler available for torch.compile
            built.append((label, opts, threads, None, float("nan"), f"failed: {type(err).__name__}"))
    rates = {label: [] for label, *_ in built}
    for _ in range(args.repeats):
        for label, _, threads, step, _, _ in built:
            if step is not None:
                torch.set_num_threads(threads)
                rates[label].append(timed(step, args.steps))
    torch.set_num_threads(2)
    rows = []
    for label, _, _, step, loss, note in built:
        rate = statistics.median(rates[label]) if rates[label] else float("nan")
        same = step is not None and abs(loss - base_loss) <= 1e-4 * abs(base_loss)
        rows.append((label, rate, loss, same, note))
    return base_loss, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-N", type=int, default=64)
    p.add_argument("-M", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    p.add_argument("--data", default="../shared/data/bsds500/train", help="images for the data-loading rows")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.patch, args.patch)
    print(f"N={args.N} M={args.M} batch={args.batch} patch={args.patch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} x {args.steps} steps\n")

    rates = compare_ours_plain(args, x)
    ratio = rates["ours"] / rates["plain"]
    print("| training step | steps/s |\n|---|---|")
    print(f"| gainedvae gained-mbt2018-mean | {rates['ours']:.3f} |\n| CompressAI MeanScaleHyperprior | {rates['plain']:.3f} |")
    print(f"| ratio ours / plain (goal >= 0.95) | {ratio:.3f} |\n")

    base_loss, rows = options_table(args, x)
    print("| CPU option (gained step) | steps/s | first-step loss | same loss as default |\n|---|---|---|---|")
    for label, rate, loss, same, note in rows:
        print(f"| {label} | {rate:.3f} | {loss:.4f} | {'yes' if same else 'no'} {note} |")
    loaders = {}
    if Path(args.data).exists():
        for workers in (0, 1, 2):
            loaders[workers] = loader_rate(args, workers)
        print("\n| data loading (real JPEGs, decode cache warm) | batches/s |\n|---|---|")
        for w, r in loaders.items():
            print(f"| {'in-process' if w == 0 else f'{w} worker(s)'} | {r:.1f} |")
    eligible = [r for r in rows if r[3] and r[1] == r[1]]
    best = max(eligible, key=lambda r: r[1])
    print(f"\nfastest option with the default's loss: {best[0]}")
    if args.json:
        data = {"config": vars(args), "torch": torch.__version__, "ours_vs_plain": {**rates, "ratio": ratio},
                "options": [dict(zip(("option", "steps_per_s", "loss", "same_loss", "note"), r)) for r in rows],
                "loader_batches_per_s": loaders, "fastest": best[0]}
        atomic_write_bytes(args.json, json.dumps(data, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
