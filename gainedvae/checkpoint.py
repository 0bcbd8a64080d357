"""Checkpoints: self-describing, written atomically, read with ``weights_only=True``.

A checkpoint is a ``torch.save`` dict::

    {"format": "gainedvae-checkpoint", "version": 1,
     "model": registry name, "config": {"N", "M", "lambdas"},
     "state_dict": ..., **extra}

so :func:`load_checkpoint` rebuilds the model without flags. Plain CompressAI
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
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor, nn

from .entropy import update_entropy_tables
from .models import get_model, is_variable_rate, model_name

FORMAT = "gainedvae-checkpoint"
VERSION = 1
#: Where the shipped default model lives (package data).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "gained-mbt2018-mean.pt"

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, unsafe, or malformed)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    atomic_save(lambda f: f.write(data), path)


def atomic_save(writer, path: PathLike) -> None:
    """Call ``writer(fileobj)`` on a temp file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
            for field in _TABLE_FIELDS:
                if f"{base}.{field}" in state:
                    state[f"{base}.{field}"] = state[f"{base}.{field}"][:0].clone()
        payload["entropy_tables"] = tables
    atomic_save(lambda f: torch.save(payload, f), path)
    return Path(path)


def read_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint file's dict safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
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


_TABLE_FIELDS = ("_quantized_cdf", "_cdf_length", "_offset", "scale_table")


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
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{source}: malformed entropy tables for {base!r} ({err})") from None
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


def build_from_payload(payload: Dict[str, Any], source: str = "checkpoint", model: Optional[str] = None) -> nn.Module:
    """Instantiate and fill the model described by a checkpoint dict."""
    if payload.get("format") == FORMAT:
        if payload.get("version", 0) > VERSION:
            raise CheckpointError(f"{source} has checkpoint version {payload['version']}; this gainedvae reads up to {VERSION}")
        name = model or payload["model"]
        config = dict(payload.get("config", {}))
        state_dict = payload["state_dict"]
    else:  # a CompressAI state dict or training checkpoint
        if model is None:
            raise CheckpointError(f"{source} is not a gainedvae checkpoint; pass model=<registry name> to load a CompressAI state dict")
        name = model
        state_dict = _strip_prefix(payload.get("state_dict", payload))
        try:
            config = {"N": state_dict["g_a.0.weight"].size(0), "M": state_dict["g_a.6.weight"].size(0)}
        except KeyError as err:
            raise CheckpointError(f"{source}: cannot infer widths, key {err} missing") from None
    lambdas = config.pop("lambdas", None)
    try:
        net = get_model(name, **config, **({"lambdas": lambdas} if lambdas and is_variable_rate(name) else {}))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: cannot build model {name!r} with {config}: {err}") from None
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    try:
        if payload.get("format") != FORMAT and hasattr(net, "load_backbone_state_dict"):
            net.load_backbone_state_dict(state_dict)
        else:
            net.load_state_dict(state_dict)
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"{source}: weights do not fit {name!r} {config}: {str(err).splitlines()[0]}") from None
    if lambdas and not is_variable_rate(net):
        net.lambdas = tuple(float(v) for v in lambdas)
    tables = payload.get("entropy_tables") if payload.get("format") == FORMAT else None
    if tables:
        install_entropy_tables(net, tables, source)
    net.entropy_tables_stored = bool(tables)
    net.weights_hash = checkpoint_hash(payload["state_dict"] if payload.get("format") == FORMAT else state_dict, tables)
    return net


def export_checkpoint(src: PathLike, dst: PathLike, half: bool = True) -> Path:
    """Write a weights-only copy of the checkpoint ``src`` (e.g. a training checkpoint) to ``dst``.

    Drops the optimiser, scheduler and RNG state; keeps the model description, the training
    step and configuration (provenance) and stores floating-point weights as float16 when
    ``half`` (how the default model is shipped). The entropy tables are computed here, from
    the weights as stored, and saved with them (see the module docstring), so every machine
    that loads the export codes with the same tables. The result loads with :func:`load_checkpoint`.
    """
    payload = read_checkpoint(src)
    net = build_from_payload(payload, source=str(src))
    if half:  # the tables must be those of the weights the loader will have
        with torch.no_grad():
            for p in net.parameters():
                if p.is_floating_point():
                    p.copy_(p.half().float())
    update_entropy_tables(net)
    extra = {k: payload[k] for k in ("step", "train_config") if k in payload}
    return save_checkpoint(net, dst, half=half, entropy_tables=True, **extra)


def load_checkpoint(
    path: Optional[PathLike] = None,
    device: Union[str, torch.device] = "cpu",
    model: Optional[str] = None,
) -> nn.Module:
    """Load a model ready to code: eval mode, entropy tables updated.

    Args:
        path: checkpoint file; ``None`` loads the shipped default model.
        device: where to put the model.
        model: registry name, only needed for plain CompressAI state dicts.
    """
    if path is None:
        if not DEFAULT_CHECKPOINT.is_file():
            raise CheckpointError(
                f"no shipped default model in this installation ({DEFAULT_CHECKPOINT} is missing); pass a checkpoint path"
            )
        path = DEFAULT_CHECKPOINT
    payload = read_checkpoint(path)
    net = build_from_payload(payload, source=str(path), model=model)
    if not net.entropy_tables_stored:  # stored tables (exports) are used as they are, see the module docstring
        update_entropy_tables(net)  # gainedvae's scale table for every model, CompressAI baselines included
    net.checkpoint_path = str(path)
    return net.to(device).eval()
