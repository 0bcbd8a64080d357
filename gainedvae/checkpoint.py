"""Checkpoints: self-describing, written atomically, read with ``weights_only=True``.

A checkpoint is a ``torch.save`` dict::

    {"format": "gainedvae-checkpoint", "version": 1,
     "model": registry name, "config": {"N", "M", "lambdas"},
     "state_dict": ..., **extra}

so :func:`load_checkpoint` rebuilds the model without flags. A training checkpoint may also hold
``"ema": {"decay", "updates", "shadow"}``, the exponential moving average of the parameters
(:mod:`gainedvae.ema`); loading and exporting use it unless ``weights="raw"`` is asked for. Plain CompressAI
state dicts (or CompressAI training checkpoints with a ``"state_dict"`` key)
load too when the registry name is given.

Entropy tables: an exported checkpoint (:func:`export_checkpoint`, the shipped
weights) also stores ``"entropy_tables"``, the integer CDF tables of every entropy
model (``<module>._quantized_cdf`` as its rows cut to their lengths and
concatenated, ``._cdf_length``, ``._offset``; ``.scale_table`` for a Gaussian
conditional), computed once by ``update()`` on the exporting machine. The loader
installs them instead of recomputing them, because ``update()`` evaluates the
learned densities and ``erfc`` in float on the loading machine and a one-count
difference in a quantised CDF desynchronises rANS (issue 17). The weights hash
covers them (:func:`checkpoint_hash`: the state dict plus the tables under
``entropy_tables/<key>``), so a ``.gvae`` file names the tables it was coded
with. Checkpoints without tables (training checkpoints, CompressAI state dicts)
get their tables computed on load, as before: their files are only guaranteed
to decode on machines that compute the same tables.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .atomic import atomic_save, atomic_write_bytes  # noqa: F401  (also imported from here by scripts)
from .entropy import update_entropy_tables
from .models import MODELS, get_model, is_variable_rate, model_name

FORMAT = "gainedvae-checkpoint"
VERSION = 1
#: Where the shipped default model lives (package data).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "gained-mbt2018-mean.pt"

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, unsafe, or malformed)."""


def model_config(model: nn.Module) -> Dict[str, Any]:
    """What is needed to rebuild ``model``: widths, lambdas, and whatever the
    model's ``config_extra()`` adds (constructor arguments such as ``entropy_model``)."""
    config: Dict[str, Any] = {"N": int(model.N), "M": int(model.M)}
    lambdas = getattr(model, "lambdas", None)
    if lambdas is not None:
        config["lambdas"] = [float(v) for v in lambdas]
    extra = getattr(model, "config_extra", None)  # more constructor arguments, e.g. entropy_model
    if callable(extra):
        config.update(extra())
    return config


def save_checkpoint(
    model: nn.Module, path: PathLike, half: bool = False, entropy_tables: bool = False, **extra: Any
) -> Path:
    """Atomically save ``model`` with its registry name, widths and lambdas.

    Args:
        model: a registered model (gained or CompressAI single-rate).
        path: destination file.
        half: store floating-point parameters as float16 (for shipped weights); buffers stay float32.
        entropy_tables: store the model's current (updated) entropy tables compactly under
            ``"entropy_tables"`` and empty their state-dict buffers (see the module docstring).
        **extra: more entries (training state, notes); must be ``weights_only``-loadable.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        # parameters only: buffers hold constants float16 cannot represent (CompressAI's 1e-9
        # likelihood bound and GDN's 2^-36 pedestal would become 0) and are small anyway
        params = {k for k, _ in model.named_parameters()}
        state = {k: v.half() if k in params and v.is_floating_point() else v for k, v in state.items()}
    reserved = {"format", "version", "model", "config", "state_dict", "entropy_tables"} & set(extra)
    if reserved:
        raise ValueError(f"extra keys {sorted(reserved)} are reserved")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_name(model),
        "config": model_config(model),
        "state_dict": state,
        **extra,
    }
    if entropy_tables:
        tables = pack_entropy_tables(model)
        if not tables:
            raise ValueError("entropy_tables=True needs a model with updated entropy tables (call update() first)")
        for key in tables:
            base = key.rsplit(".", 1)[0]
            for field in TABLE_FIELDS:
                if f"{base}.{field}" in state:
                    state[f"{base}.{field}"] = state[f"{base}.{field}"][:0].clone()
        payload["entropy_tables"] = tables
    atomic_save(lambda f: torch.save(payload, f), path)
    return Path(path)


def read_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint file's dict safely (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" in text or "GLOBAL" in text:
            detail = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "Unsupported global" in ln), "")
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled objects that could run code "
                f"(loaded with weights_only=True; {detail})"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid torch file") from None
    except Exception as err:  # corrupt zip, truncated file, not a torch file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, got {type(payload).__name__}")
    return payload


#: The entropy-table buffers of a coder (their size follows ``update()``, not the model's widths).
TABLE_FIELDS = ("_quantized_cdf", "_cdf_length", "_offset", "scale_table")


def pack_entropy_tables(model: nn.Module) -> Dict[str, Tensor]:
    """The integer CDF tables of every updated CompressAI entropy model in ``model``
    (compact: ``_quantized_cdf`` rows cut to their ``_cdf_length`` and concatenated)."""
    from compressai.entropy_models import EntropyModel, GaussianConditional

    out: Dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, EntropyModel) or module._offset.numel() == 0:
            continue
        cdf, lengths = module._quantized_cdf.detach().cpu(), module._cdf_length.detach().cpu().reshape(-1)
        if cdf.dim() != 2 or cdf.size(0) != lengths.numel():
            continue  # tables built lazily elsewhere (asymmetric pairs): nothing to store
        prefix = f"{name}." if name else ""
        out[prefix + "_quantized_cdf"] = torch.cat([row[: int(n)] for row, n in zip(cdf, lengths)]).to(torch.int32)
        out[prefix + "_cdf_length"] = lengths.to(torch.int32).clone()
        out[prefix + "_offset"] = module._offset.detach().cpu().reshape(-1).to(torch.int32).clone()
        if isinstance(module, GaussianConditional):
            out[prefix + "scale_table"] = module.scale_table.detach().cpu().float().clone()
    return out


def install_entropy_tables(model: nn.Module, tables: Dict[str, Tensor], source: str = "checkpoint") -> None:
    """Put :func:`pack_entropy_tables`'s tables back into ``model``'s entropy models."""
    if not isinstance(tables, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in tables.items()):
        raise CheckpointError(f"{source}: 'entropy_tables' must map names to tensors, got {type(tables).__name__}")
    modules = dict(model.named_modules())
    for key in tables:
        if not key.endswith("._cdf_length") and key != "_cdf_length":
            continue
        base = key[: -len("_cdf_length")].rstrip(".")
        prefix = f"{base}." if base else ""
        module = modules.get(base)
        try:
            lengths = tables[prefix + "_cdf_length"].to(torch.int32)
            flat = tables[prefix + "_quantized_cdf"].to(torch.int32)
            offsets = tables[prefix + "_offset"].to(torch.int32)
            if module is None or not hasattr(module, "_quantized_cdf"):
                raise KeyError(base)
            if int(lengths.sum()) != flat.numel() or offsets.numel() != lengths.numel() or (lengths < 3).any():
                raise ValueError("inconsistent lengths")
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{source}: malformed entropy tables for {base!r} ({_clip(err)})") from None
        cdf = torch.zeros((lengths.numel(), int(lengths.max())), dtype=torch.int32)
        for i, row in enumerate(torch.split(flat, lengths.tolist())):
            cdf[i, : row.numel()] = row
        device = module._offset.device
        module._quantized_cdf = cdf.to(device)
        module._cdf_length = lengths.clone().to(device)
        module._offset = offsets.clone().to(device)
        if prefix + "scale_table" in tables:
            module.scale_table = tables[prefix + "scale_table"].float().clone().to(device)
        module.__dict__.pop("_coder_lists", None)  # TableGaussianConditional's cached coder lists


def checkpoint_hash(state_dict: Dict[str, Tensor], entropy_tables: Optional[Dict[str, Tensor]] = None) -> str:
    """The ``weights_hash`` of a checkpoint: :func:`hash_state_dict` of its state dict,
    with its stored entropy tables (if any) under ``entropy_tables/<key>``."""
    if not entropy_tables:
        return hash_state_dict(state_dict)
    return hash_state_dict({**state_dict, **{f"entropy_tables/{k}": v for k, v in entropy_tables.items()}})


def hash_state_dict(state_dict: Dict[str, Tensor]) -> str:
    """SHA-256 (hex) over names, dtypes, shapes and bytes of a state dict."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _strip_prefix(state_dict: Dict[str, Tensor], prefix: str = "module.") -> Dict[str, Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


WEIGHTS = ("ema", "raw")


def checkpoint_weights(payload: Dict[str, Any], weights: str = "ema", source: str = "checkpoint") -> Dict[str, Tensor]:
    """The state dict a gainedvae checkpoint dict stands for.

    ``weights="ema"``: the parameters' moving average where the checkpoint has one (training
    checkpoints of runs with ``--ema-decay``), else the raw weights; ``"raw"``: always the raw
    weights (what ``--resume`` continues from).
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    state = payload["state_dict"]
    ema = payload.get("ema")
    if weights == "ema" and ema is not None:
        shadow = ema.get("shadow") if isinstance(ema, dict) else None
        if not isinstance(shadow, dict) or not set(shadow) <= set(state):
            raise CheckpointError(f"{source}: malformed EMA state (expected a dict of parameters of the state dict)")
        state = {**state, **shadow}
    return state


def _clip(text: Any, limit: int = 200) -> str:
    """``str(text)`` cut to ``limit`` characters (error messages stay one readable line)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def _known(name: Any, source: str) -> str:
    if not isinstance(name, str) or name not in MODELS:
        raise CheckpointError(f"{source}: unknown model {_clip(repr(name), 80)}; expected one of {', '.join(MODELS)}")
    return name


def _checked_state_dict(state_dict: Any, source: str) -> Dict[str, Tensor]:
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{source}: 'state_dict' must be a dict of tensors, got {type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"{source}: 'state_dict' must map names to tensors, got {_clip(repr(key), 80)}: {type(value).__name__}"
            )
    return state_dict


def _width(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{source}: config {key} must be a positive integer, got {_clip(repr(value), 80)}")
    return value


#: Most lambdas (levels) a checkpoint may have.
MAX_LEVELS = 64


#: Where the state dict holds the widths: N = output channels of ``g_a``'s first
#: convolution (either key), M = input channels of ``h_a.0.weight`` (the M of ``y``).
_WIDTH_KEYS = (("g_a.0.weight", "g_a.0.conv1.weight"), "h_a.0.weight")


def _state_widths(state_dict: Dict[str, Tensor], source: str) -> Tuple[int, int]:
    """``(N, M)`` read from the shapes of known tensors of the state dict."""
    n_key = next((k for k in _WIDTH_KEYS[0] if k in state_dict), None)
    m_key = _WIDTH_KEYS[1]
    if n_key is None or m_key not in state_dict:
        missing = m_key if n_key is not None else " / ".join(_WIDTH_KEYS[0])
        raise CheckpointError(f"{source}: the state dict has no {missing}, so its widths N, M are unknown")
    n_t, m_t = state_dict[n_key], state_dict[m_key]
    if n_t.dim() < 2 or m_t.dim() < 2:
        raise CheckpointError(f"{source}: {n_key} / {m_key} are not convolution weights")
    return int(n_t.shape[0]), int(m_t.shape[1])


def _check_config(config: Any, state_dict: Dict[str, Tensor], source: str) -> Dict[str, Any]:
    """The config, validated against the state dict's shapes before anything is allocated."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: 'config' must be a dict, got {type(config).__name__}")
    config = dict(config)
    n_sd, m_sd = _state_widths(state_dict, source)
    for key, got in (("N", n_sd), ("M", m_sd)):
        if key in config and config[key] is not None:
            want = _width(config[key], key, source)
            if want != got:
                raise CheckpointError(
                    f"{source}: config says {key}={want} but the weights have {key}={got} "
                    f"({'g_a' if key == 'N' else 'h_a.0.weight'} shape); refusing to build the model"
                )
    lambdas = config.get("lambdas")
    if lambdas is not None:
        if not isinstance(lambdas, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in lambdas
        ):
            raise CheckpointError(f"{source}: config lambdas must be a list of numbers, got {_clip(repr(lambdas), 80)}")
        if len(lambdas) > MAX_LEVELS:
            raise CheckpointError(f"{source}: config has {len(lambdas)} lambdas, at most {MAX_LEVELS} are supported")
    return config


def _check_version(payload: Dict[str, Any], source: str) -> None:
    version = payload.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{source}: checkpoint version must be an integer, got {_clip(repr(version), 80)}")
    if version > VERSION:
        raise CheckpointError(f"{source} has checkpoint version {version}; this gainedvae reads up to {VERSION}")


def model_from_config(name: str, config: Dict[str, Any], lambdas: Optional[Sequence[float]] = None) -> nn.Module:
    """A fresh model ``name`` with the constructor arguments ``config`` (:func:`model_config` without
    its ``lambdas``): a variable-rate model takes ``lambdas``, a single-rate one carries them as its
    ``lambdas`` attribute."""
    net = get_model(name, **config, **({"lambdas": lambdas} if lambdas and is_variable_rate(name) else {}))
    if lambdas and not is_variable_rate(net):
        net.lambdas = tuple(float(v) for v in lambdas)
    return net


def build_from_payload(payload: Dict[str, Any], source: str = "checkpoint", model: Optional[str] = None,
                       weights: str = "ema") -> nn.Module:
    """Instantiate and fill the model described by a checkpoint dict (``weights``: see
    :func:`checkpoint_weights`).

    The model name, state dict, version and config are validated first (the
    widths against the shapes of the weights), so a malformed checkpoint is a
    :class:`CheckpointError` naming ``source`` and never sizes a model.
    """
    if payload.get("format") == FORMAT:
        _check_version(payload, source)
        for key in ("model", "state_dict"):
            if key not in payload:
                raise CheckpointError(f"{source}: a gainedvae checkpoint needs a {key!r} entry, this one has none")
        name = _known(model or payload["model"], source)
        _checked_state_dict(payload["state_dict"], source)
        state_dict = _checked_state_dict(checkpoint_weights(payload, weights, source), source)
        config = _check_config(payload.get("config", {}), state_dict, source)
        stored = state_dict  # as stored (float16 stays float16): what the weights hash names
    else:  # a CompressAI state dict or training checkpoint
        if model is None:
            raise CheckpointError(f"{source} is not a gainedvae checkpoint; pass model=<registry name> to load a CompressAI state dict")
        name = _known(model, source)
        state_dict = _checked_state_dict(_strip_prefix(payload.get("state_dict", payload)), source)
        try:
            config = {"N": state_dict["g_a.0.weight"].size(0), "M": state_dict["g_a.6.weight"].size(0)}
        except KeyError as err:
            raise CheckpointError(f"{source}: cannot infer widths, key {err} missing") from None
    lambdas = config.pop("lambdas", None)
    try:
        net = model_from_config(name, config, lambdas)
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{source}: cannot build model {name!r} with {_clip(config)}: {_clip(err, 300)}") from None
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    try:
        if payload.get("format") != FORMAT and hasattr(net, "load_backbone_state_dict"):
            net.load_backbone_state_dict(state_dict)
        else:
            net.load_state_dict(state_dict)
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"{source}: weights do not fit {name!r} {_clip(config)}: {_clip(str(err).splitlines()[0], 300)}") from None
    tables = payload.get("entropy_tables") if payload.get("format") == FORMAT else None
    if tables:
        install_entropy_tables(net, tables, source)
    net.entropy_tables_stored = bool(tables)
    net.weights_hash = checkpoint_hash(stored if payload.get("format") == FORMAT else state_dict, tables)
    return net


def export_checkpoint(src: PathLike, dst: PathLike, half: bool = True, weights: str = "ema") -> Path:
    """Write a weights-only copy of the checkpoint ``src`` (e.g. a training checkpoint) to ``dst``.

    Drops the optimiser, scheduler, RNG and EMA state; keeps the model description, the training
    step and configuration (provenance) and stores floating-point weights as float16 when
    ``half`` (how the default model is shipped). ``weights="ema"`` exports the moving average
    where ``src`` has one (recorded as ``"weights": "ema"``), ``"raw"`` the raw weights. The
    entropy tables are computed here, from the weights as stored, and saved with them (see the
    module docstring), so every machine that loads the export codes with the same tables. The
    result loads with :func:`load_checkpoint`.
    """
    payload = read_checkpoint(src)
    net = build_from_payload(payload, source=str(src), weights=weights)
    if half:  # the tables must be those of the weights the loader will have
        with torch.no_grad():
            for p in net.parameters():
                if p.is_floating_point():
                    p.copy_(p.half().float())
    update_entropy_tables(net)
    extra = {k: payload[k] for k in ("step", "train_config") if k in payload}
    extra["weights"] = "ema" if weights == "ema" and payload.get("ema") is not None else "raw"
    return save_checkpoint(net, dst, half=half, entropy_tables=True, **extra)


def load_checkpoint(
    path: Optional[PathLike] = None,
    device: Union[str, torch.device] = "cpu",
    model: Optional[str] = None,
    weights: str = "ema",
) -> nn.Module:
    """Load a model ready to code: eval mode, entropy tables updated.

    Args:
        path: checkpoint file; ``None`` loads the shipped default model.
        device: where to put the model.
        model: registry name, only needed for plain CompressAI state dicts.
        weights: ``"ema"`` (the moving average of a training checkpoint that has one, else the
            weights) or ``"raw"`` (see :func:`checkpoint_weights`).
    """
    if path is None:
        if not DEFAULT_CHECKPOINT.is_file():
            raise CheckpointError(
                f"no shipped default model in this installation ({DEFAULT_CHECKPOINT} is missing); pass a checkpoint path"
            )
        path = DEFAULT_CHECKPOINT
    payload = read_checkpoint(path)
    net = build_from_payload(payload, source=str(path), model=model, weights=weights)
    if not net.entropy_tables_stored:  # stored tables (exports) are used as they are, see the module docstring
        update_entropy_tables(net)  # gainedvae's scale table for every model, CompressAI baselines included
    net.checkpoint_path = str(path)
    return net.to(device).eval()
