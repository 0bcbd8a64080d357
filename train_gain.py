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
from gainedvae.train import TrainConfig, TrainingError, add_config_arguments, config_flags, train
from gainedvae.checkpoint import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)  # one flag per TrainConfig field, with its help text
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:1 (default: cpu, or cuda with --cuda)")
    p.add_argument("--cuda", action="store_true", help="same as --device cuda")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="checkpoint to resume (default: latest in --save-dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar and no torch.compile line")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def config_from_args(args) -> TrainConfig:
    device = args.device or ("cuda" if args.cuda else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--cuda given but torch sees no CUDA device")
    values = {f.name: getattr(args, f.name) for f in config_flags()}
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}, device=device)


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
