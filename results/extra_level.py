"""A gained model with one more quality level above its top, extrapolated from its two top levels.

Measures how far the trained transforms carry the rate beyond the top level (issue 16: the shipped
model's top level sits at 1.66 bpp on Kodak where the single-rate lambda-0.18 model of the same start
reaches 1.86 bpp) and is the start of a fine-tune with that level trained (``train_gain.py --init``
with one more lambda). Each gain matrix (``gain.y``, ``gain.y_inv``, ``gain.z``, ``gain.z_inv``) gets
the row

    log m_(L+1) = 2 log m_L - log m_(L-1)

which is :func:`gainedvae.gain.interpolate_log_gains` continued one level up (quality ``L + t`` of
the new model codes what ``t`` more of the last pair's exponential interpolation would), and the
lambda ``lambda_L^2 / lambda_(L-1)`` (the same log step). Levels 1..L are unchanged, so their
bitstreams are too. The new level is untrained: an extrapolation, never the shipped codec.

    python results/extra_level.py results/campaign/finished/gained-ste5-top-m192-from-36k.pt -o runs/extra-level.pt
    python eval_gain.py -d ../shared/data/kodak --checkpoint runs/extra-level.pt --step 0.5 ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gainedvae.checkpoint import build_from_payload, model_config, model_from_config, read_checkpoint, save_checkpoint
from gainedvae.models import model_name

GAIN_KEYS = ("gain.y.log_gain", "gain.y_inv.log_gain", "gain.z.log_gain", "gain.z_inv.log_gain")


@torch.no_grad()
def add_level(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` (a gained model: at least 2 levels) with one extrapolated level above its top."""
    config = model_config(net)
    lambdas = list(config.pop("lambdas"))
    lambdas.append(lambdas[-1] ** 2 / lambdas[-2])
    out = model_from_config(model_name(net), config, lambdas)
    state = net.state_dict()
    for key in GAIN_KEYS:
        rows = state[key]
        state[key] = torch.cat([rows, 2 * rows[-1:] - rows[-2:-1]])
    out.load_state_dict(state)  # the coding tables too: they do not depend on the levels
    return out.eval()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a gained model's checkpoint or export")
    p.add_argument("-o", "--output", type=Path, required=True, help="checkpoint to write (the model with L+1 levels)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="which weights of a training checkpoint")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    payload = read_checkpoint(args.checkpoint)
    net = build_from_payload(payload, source=str(args.checkpoint), weights=args.weights)
    out = add_level(net)
    note = {"source": str(args.checkpoint), "levels": net.levels, "step": payload.get("step")}
    save_checkpoint(out, args.output, entropy_tables=True, extrapolated_level=note)
    print(f"{args.output}: {model_name(out)} with {out.levels} levels, lambdas {[round(x, 5) for x in out.lambdas]}")


if __name__ == "__main__":
    main()
