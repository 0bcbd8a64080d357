"""gainedvae: variable-rate learned image compression with gain units.

>>> import gainedvae
>>> gainedvae.MODELS
('gained-bmshj2018-hyperprior', 'gained-mbt2018-mean', 'bmshj2018-hyperprior', 'mbt2018-mean')
>>> net = gainedvae.get_model("gained-mbt2018-mean", N=128, M=192)

The public names are imported on first use (PEP 562 module ``__getattr__``):
``import gainedvae`` (and so the ``gainedvae`` command's ``--help``, ``--version``
and ``info``) does not import torch or CompressAI.
"""

import importlib as _importlib
import warnings as _warnings

__version__ = "0.1.0"

# compressai imports torch_geometric, which warns about torch.jit.script on import. The package's
# submodules are imported on first use, from anywhere (``import gainedvae.codec``), so this
# one warning is filtered for the process instead of around one import.
_warnings.filterwarnings(
    "ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning, module=r"torch\.jit\._script"
)

#: Public name -> submodule that defines it.
_LAZY = {
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "GainMatrix": "gain",
    "LatentGains": "gain",
    "interpolate_log_gains": "gain",
    "DEFAULT_LAMBDAS": "models",
    "MODELS": "models",
    "get_model": "models",
    "is_gained": "models",
    "model_name": "models",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
