"""train_gain.py's flags, generated from TrainConfig: help on every flag, and the command
lines of results/campaign.sh and friends parse to the configs they gave before the flags were
generated (values recorded from the hand-written parser at d94e286)."""

import argparse

import pytest

from gainedvae.models import DEFAULT_LAMBDAS
from gainedvae.train import TrainConfig, config_flags
from train_gain import build_parser, config_from_args, parse_args

CAMPAIGN = (
    "-d a b c -N 64 -M 96 --batch-size 8 --patch-size 128 --downscale-jpeg --val-size 256 --val-max-images 16 "
    "--val-every 2000 --save-every 1000 --keep 2 --log-every 100 --seed 0 --no-progress --compile on --threads 0 "
    "--ema-decay 0.999 -m mbt2018-mean --lambda 0.18 --steps 200000 --lr 1e-3 --milestones 0.9 --save-dir runs/x "
    "--init p.pt --warmup-steps 500"
).split()
MANY = ["-d", "x.tar", "--model", "gained-scgain", "--lambdas", "0.01,0.05 0.1", "--metric", "ms-ssim",
        "--level-sampling", "sample", "--milestones", "0.5, 0.8", "--gamma", "0.5", "--aux-lr", "0.002",
        "--clip-max-norm", "0", "--num-workers", "2", "--device", "cpu", "--channels-last", "--no-channels-last",
        "--log-images", "--entropy-model", "gmm", "--qmap-lambda-range", "0.5", "2", "--resume", "runs/a/ckpt.pt",
        "--val-split", "0.1"]


def test_every_flag_has_help():
    actions = [a for a in build_parser()._actions if not isinstance(a, argparse._HelpAction)]
    assert len(actions) == len(config_flags()) + 4 == 42  # + --device --cuda --resume --no-progress
    assert [a.option_strings for a in actions if not (a.help or "").strip()] == []


@pytest.mark.parametrize("argv, expect, resume, no_progress", [
    (["-d", "data/"], TrainConfig(
        data=("data/",), model="gained-mbt2018-mean", N=128, M=192, lambdas=DEFAULT_LAMBDAS, lmbda=None, metric="mse",
        level_sampling="batch", steps=100000, batch_size=8, patch_size=256, lr=0.0001, milestones=(0.75, 0.9),
        gamma=0.1, warmup_steps=0, aux_lr=0.001, clip_max_norm=1.0, seed=0, num_workers=0, device="cpu",
        save_dir="runs/default", save_every=1000, keep=3, val_every=1000, val_split=0.05, val_size=256,
        val_max_images=16, log_every=50, log_images=False, downscale_jpeg=False, init=None, threads=0,
        channels_last=False, compile="auto", qmap_lambda_range=(0.25, 4.0), entropy_model=None, ema_decay=0.999,
        extra={}), None, False),
    (CAMPAIGN, TrainConfig(
        data=("a", "b", "c"), model="mbt2018-mean", N=64, M=96, lambdas=DEFAULT_LAMBDAS, lmbda=0.18, metric="mse",
        level_sampling="batch", steps=200000, batch_size=8, patch_size=128, lr=0.001, milestones=(0.9,), gamma=0.1,
        warmup_steps=500, aux_lr=0.001, clip_max_norm=1.0, seed=0, num_workers=0, device="cpu", save_dir="runs/x",
        save_every=1000, keep=2, val_every=2000, val_split=0.05, val_size=256, val_max_images=16, log_every=100,
        log_images=False, downscale_jpeg=True, init="p.pt", threads=0, channels_last=False, compile="on",
        qmap_lambda_range=(0.25, 4.0), entropy_model=None, ema_decay=0.999, extra={}), None, True),
    (MANY, TrainConfig(
        data=("x.tar",), model="gained-scgain", N=128, M=192, lambdas=(0.01, 0.05, 0.1), lmbda=None,
        metric="ms-ssim", level_sampling="sample", steps=100000, batch_size=8, patch_size=256, lr=0.0001,
        milestones=(0.5, 0.8), gamma=0.5, warmup_steps=0, aux_lr=0.002, clip_max_norm=0.0, seed=0, num_workers=2,
        device="cpu", save_dir="runs/default", save_every=1000, keep=3, val_every=1000, val_split=0.1, val_size=256,
        val_max_images=16, log_every=50, log_images=True, downscale_jpeg=False, init=None, threads=0,
        channels_last=False, compile="auto", qmap_lambda_range=(0.5, 2.0), entropy_model="gmm", ema_decay=0.999,
        extra={}), "runs/a/ckpt.pt", False),
    (["-d", "d", "--channels-last", "--compile", "off", "--ema-decay", "0", "--resume", "--save-dir", "r"],
     TrainConfig(data=("d",), channels_last=True, compile="off", ema_decay=0.0, save_dir="r"), "latest", False),
])
def test_command_lines_give_the_recorded_configs(argv, expect, resume, no_progress):
    args = parse_args(argv)
    got = config_from_args(args)
    assert got == expect  # tuples stay tuples: (0.9,) != [0.9]
    assert (args.resume, args.no_progress) == (resume, no_progress)


@pytest.mark.parametrize("argv", [[], ["-d"], ["-d", "x", "-m", "nope"], ["-d", "x", "--lambdas", "a,b"],
                                  ["-d", "x", "--qmap-lambda-range", "1"], ["-d", "x", "--compile", "maybe"]])
def test_bad_command_lines_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err
