"""Exponential moving average (EMA) of a model's weights, kept beside the raw weights in training.

After the ``n``-th optimiser step (``n = 1, 2, ...``) every floating-point parameter ``w`` updates
its average ``a``::

    d_n = min(decay, (1 + n) / (10 + n))
    a  <- d_n * a + (1 - d_n) * w

The warm-up term ``(1 + n) / (10 + n)`` (TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``) keeps a short run's average from being dominated by the initial weights; from
``n = (10 * decay - 1) / (1 - decay)`` on (8,991 updates at ``decay = 0.999``) the decay is
``decay`` itself, an average over roughly the last ``1 / (1 - decay)`` steps. Buffers are not
averaged: a checkpoint's averaged state dict (:func:`gainedvae.checkpoint.checkpoint_weights`)
takes them from the raw ``state_dict``.

The average is what validation, evaluation and export use (``train_gain.py --ema-decay``); the
raw weights stay in the checkpoint's ``state_dict`` so that ``--resume`` continues exactly.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay applied at the ``updates``-th update (1-based), see the module docstring."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightEMA:
    """EMA of ``net``'s floating-point parameters (see the module docstring for the formula)."""

    def __init__(self, net: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow: Dict[str, Tensor] = {
            k: p.detach().clone() for k, p in net.named_parameters() if p.is_floating_point()
        }

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """One step of the average after an optimiser step of ``net``."""
        self.updates += 1
        d = ema_decay_at(self.decay, self.updates)
        for k, p in net.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach(), 1.0 - d)

    def save(self) -> Dict[str, object]:
        """What a checkpoint keeps to resume the average exactly."""
        return {"decay": self.decay, "updates": self.updates, "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load(self, saved: Dict[str, object]) -> None:
        """Restore :meth:`save`'s output (the shadow tensors must match the model's parameters)."""
        shadow = saved["shadow"]
        if set(shadow) != set(self.shadow):
            missing, unexpected = sorted(set(self.shadow) - set(shadow)), sorted(set(shadow) - set(self.shadow))
            raise ValueError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for k, v in shadow.items():
            if v.shape != self.shadow[k].shape:
                raise ValueError(f"EMA state {k}: expected shape {tuple(self.shadow[k].shape)}, got {tuple(v.shape)}")
            self.shadow[k].copy_(v)
        self.updates = int(saved["updates"])

    @torch.no_grad()
    def swap(self, net: nn.Module) -> None:
        """Exchange the averaged and the live parameters of ``net`` in place (call twice to undo)."""
        for k, p in net.named_parameters():
            if k in self.shadow:
                tmp = p.detach().clone()
                p.copy_(self.shadow[k])
                self.shadow[k].copy_(tmp)
