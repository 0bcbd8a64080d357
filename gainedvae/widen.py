"""Widen the latent of a trained hyperprior model (more channels in ``y``) without changing what it computes.

A model with ``M`` latent channels cannot reconstruct better than its transforms allow, however
many bits it spends: at ``M = 96`` and 16x down-sampling ``y`` holds 96 numbers per 16x16x3 = 768
pixel values, and block PCA on Kodak with 96 of 768 components reaches 32.0 dB (192: 38.1 dB;
``python results/latent_floor.py``).
:func:`widen_latent` builds the same architecture with ``M_new > M`` channels and fills it from the
trained one (Net2Net-style, Chen et al., ICLR 2016) so that training continues from the trained model
instead of from scratch:

* every convolution keeps its trained weights in the old slots;
* weights from a **new input** channel to an **old output** channel are 0, so every old activation,
  ``y[:, :M]``, ``z``, the entropy parameters of the old channels and ``x_hat`` are unchanged;
* new output channels keep the fresh model's default initialisation (``torch.manual_seed(seed)``):
  the new latent channels start as random features of the image that ``g_s`` and ``h_a`` ignore
  (their weights from them are 0) until training opens them;
* ``h_s``'s last layer is grouped (``[scales | means]`` for the mean-scale hyperprior, one group per
  parameter of the conditional): old channel ``c`` of group ``g`` goes to ``g * M_new + c``;
* gains on ``y`` (gained models): the old entries are kept, a new channel gets its level's mean log-gain.

Only the rate of the new channels differs (random features cost bits until the rate term prunes
them or the distortion term uses them). ``tests/test_widen.py`` pins all of the above.
Supported: the hyperprior families (``bmshj2018-hyperprior``, ``mbt2018-mean`` and their gained
variants, any entropy model); ``N`` stays as it is.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from .checkpoint import TABLE_FIELDS, build_from_payload, model_config, model_from_config, read_checkpoint, save_checkpoint
from .models import model_name

#: Registry names :func:`widen_latent` accepts (their ``y`` is consumed by ``g_s``, ``h_a`` and the conditional only).
WIDENABLE = ("bmshj2018-hyperprior", "mbt2018-mean", "gained-bmshj2018-hyperprior", "gained-mbt2018-mean")


def _conv_io(module: nn.Module):
    """(output dim, input dim) of a convolution's weight."""
    return (1, 0) if isinstance(module, nn.ConvTranspose2d) else (0, 1)


def _widen_conv(old: nn.Module, new: nn.Module, groups: int) -> None:
    """Copy ``old`` into ``new``: old outputs see only old inputs; grouped outputs mapped group by group."""
    out_dim, in_dim = _conv_io(new)
    w_old, w_new = old.weight.detach(), new.weight.detach()
    n_in = w_old.shape[in_dim]
    o_old, o_new = w_old.shape[out_dim] // groups, w_new.shape[out_dim] // groups
    for g in range(groups):
        src = w_old.narrow(out_dim, g * o_old, o_old)
        dst = w_new.narrow(out_dim, g * o_new, o_old)
        dst.zero_()  # new inputs -> old outputs: 0
        dst.narrow(in_dim, 0, n_in).copy_(src)
        if old.bias is not None:
            new.bias.detach()[g * o_new:g * o_new + o_old].copy_(old.bias.detach()[g * o_old:(g + 1) * o_old])


@torch.no_grad()
def widen_latent(model: nn.Module, M: int, seed: int = 0) -> nn.Module:
    """The same model with ``M`` latent channels (``M >= model.M``), computing the same ``x_hat``.

    Raises:
        ValueError: an unsupported model, a smaller ``M``, or a parameter this rule does not know.
    """
    name = model_name(model)
    if name not in WIDENABLE:
        raise ValueError(f"widening the latent of {name!r} is not supported (supported: {', '.join(WIDENABLE)})")
    if M < model.M:
        raise ValueError(f"the latent can only be widened: the model has M={model.M}, asked for M={M}")
    config = model_config(model)
    lambdas = config.pop("lambdas", None)
    torch.manual_seed(seed)
    wide = model_from_config(name, {**config, "M": M}, lambdas)
    last_hs = max(i for i, m in enumerate(model.h_s) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    out_dim, _ = _conv_io(model.h_s[last_hs])
    hs_groups = model.h_s[last_hs].weight.shape[out_dim] // model.M
    old_modules = dict(model.named_modules())
    done = set()
    for key, new in wide.named_modules():
        if not isinstance(new, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        old = old_modules[key]
        groups = hs_groups if key == f"h_s.{last_hs}" else 1
        _widen_conv(old, new, groups)
        done.update(f"{key}.{p}" for p, _ in new.named_parameters(recurse=False))
    old_state: Dict[str, Tensor] = model.state_dict()
    state = wide.state_dict()
    for key, value in list(state.items()):
        if key in done:
            continue
        src = old_state[key]
        if key.rsplit(".", 1)[-1] in TABLE_FIELDS:  # coding tables (sized by update(), independent of M)
            state[key] = src.clone()
        elif src.shape == value.shape:
            value.copy_(src)
        elif key in ("gain.y.log_gain", "gain.y_inv.log_gain"):  # [levels, M]
            value[:, :src.shape[1]] = src
            value[:, src.shape[1]:] = src.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"widening {name!r}: no rule for {key} ({tuple(src.shape)} -> {tuple(value.shape)})")
    wide.load_state_dict(state)
    return wide


def widen_checkpoint(src, dst, M: int, seed: int = 0, weights: str = "ema"):
    """Write ``src``'s weights (its EMA where it has one) widened to ``M`` channels as a gainedvae
    checkpoint for ``train_gain.py --init`` (provenance: ``widened_from`` with the step)."""
    payload = read_checkpoint(src)
    net = build_from_payload(payload, source=str(src), weights=weights)
    wide = widen_latent(net, M, seed=seed)
    note = {"source": str(src), "M": int(net.M), "step": payload.get("step"), "weights": weights}
    return save_checkpoint(wide, dst, widened_from=note)

