#!/usr/bin/env python3
"""Train a gained model or a single-rate baseline.

Examples:
  python train_gain.py -d data/ --cuda                                  # gained-mbt2018-mean, 8 lambdas
  python train_gain.py -d data/ -m mbt2018-mean --lambda 0.013          # single-rate baseline
  python train_gain.py -d data/ -m gained-scgain --qmap-lambda-range 0.25 4   # + quality maps (docs/scgain.md)
  python train_gain.py -d data/ --save-dir runs/x --resume              # continue the latest checkpoint
  torchrun --nproc_per_node=4 train_gain.py -d data/ --cuda             # several GPUs
"""

import argparse
import sys

import torch

from gainedvae.data import DataError
from gainedvae.models import DEFAULT_LAMBDAS, MODELS
from gainedvae.train import TrainConfig, TrainingError, train
from gainedvae.checkpoint import CheckpointError


def floats(text):
    return tuple(float(v) for v in text.replace(",", " ").split())


def parse_args(argv=None):
    d = TrainConfig(data="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, nargs="+",
                   help="image folder(s) (recursive), folder with train/ and val/, or .tar")
    p.add_argument("-m", "--model", default=d.model, choices=MODELS)
    p.add_argument("-N", type=int, default=d.N)
    p.add_argument("-M", type=int, default=d.M)
    p.add_argument("--lambdas", type=floats, default=DEFAULT_LAMBDAS, help="lambdas of a gained model, increasing")
    p.add_argument("--lambda", dest="lmbda", type=float, help="lambda of a single-rate model")
    p.add_argument("--metric", choices=("mse", "ms-ssim"), default=d.metric)
    p.add_argument("--level-sampling", choices=("batch", "sample"), default=d.level_sampling)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--patch-size", type=int, default=d.patch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--milestones", type=floats, default=d.milestones, help="fractions of --steps where lr drops")
    p.add_argument("--gamma", type=float, default=d.gamma, help="lr factor at each milestone")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--aux-lr", type=float, default=d.aux_lr)
    p.add_argument("--clip-max-norm", type=float, default=d.clip_max_norm, help="0 disables clipping")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--cuda", action="store_true", help="same as --device cuda")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0 = torch default)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=d.channels_last,
                   help="channels_last memory format: faster on CPU for the hyperprior models (see results/benchmarks/train_throughput.md) but off by default: it corrupts memory with cheng2020 models on torch 2.15")
    p.add_argument("--compile", choices=("auto", "on", "off"), default=d.compile,
                   help="torch.compile the training forward; auto = on for the models measured faster on CPU "
                        "with the same losses, in runs of 2000+ steps (results/benchmarks/train_throughput.md)")
    p.add_argument("--save-dir", default=d.save_dir)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--keep", type=int, default=d.keep, help="number of periodic checkpoints kept (plus best.pt)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, help="checkpoint to resume (default: latest in --save-dir)")
    p.add_argument("--init", default=None, help="start from these weights (e.g. a single-rate checkpoint: shared start)")
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--val-split", type=float, default=d.val_split)
    p.add_argument("--val-size", type=int, default=d.val_size)
    p.add_argument("--val-max-images", type=int, default=d.val_max_images)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--log-images", action="store_true")
    p.add_argument("--downscale-jpeg", action="store_true", help="halve large JPEGs before cropping")
    p.add_argument("--entropy-model", choices=("gaussian", "asymmetric", "gmm"), default=None,
                   help="entropy model of the gained hyperprior models (default: gaussian)")
    p.add_argument("--qmap-lambda-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=d.qmap_lambda_range,
                   help="gained-scgain: pixel lambda = level lambda * LOW**(1-q) * HIGH**q for map value q "
                        "(default: %(default)s, i.e. 1 at q=0.5)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay,
                   help="decay of the moving average of the weights used for validation, best.pt and export "
                        "(gainedvae/ema.py; 0 disables; default: %(default)s)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def config_from_args(args) -> TrainConfig:
    device = args.device or ("cuda" if args.cuda else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--cuda given but torch sees no CUDA device")
    return TrainConfig(
        data=tuple(args.dataset), model=args.model, N=args.N, M=args.M, lambdas=args.lambdas, lmbda=args.lmbda,
        metric=args.metric, level_sampling=args.level_sampling, steps=args.steps, batch_size=args.batch_size,
        patch_size=args.patch_size, lr=args.lr, milestones=args.milestones, gamma=args.gamma,
        warmup_steps=args.warmup_steps, aux_lr=args.aux_lr, clip_max_norm=args.clip_max_norm, seed=args.seed,
        num_workers=args.num_workers, device=device, save_dir=args.save_dir, save_every=args.save_every,
        keep=args.keep, val_every=args.val_every, val_split=args.val_split, val_size=args.val_size,
        val_max_images=args.val_max_images, log_every=args.log_every, log_images=args.log_images,
        downscale_jpeg=args.downscale_jpeg, init=args.init, threads=args.threads, channels_last=args.channels_last, compile=args.compile,
        qmap_lambda_range=tuple(args.qmap_lambda_range), entropy_model=args.entropy_model,
        ema_decay=args.ema_decay,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        final = train(config_from_args(args), resume=args.resume, progress=not args.no_progress)
    except (DataError, TrainingError, CheckpointError, ValueError) as err:
        print(f"train_gain.py: error: {err}", file=sys.stderr)
        return 2
    print(f"final checkpoint: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
