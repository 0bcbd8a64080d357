"""gainedvae: variable-rate learned image compression with gain units.

>>> import gainedvae
>>> gainedvae.MODELS
('gained-bmshj2018-hyperprior', 'gained-mbt2018-mean', 'bmshj2018-hyperprior', 'mbt2018-mean')
>>> net = gainedvae.get_model("gained-mbt2018-mean", N=128, M=192)
"""

import warnings as _warnings

with _warnings.catch_warnings():
    # compressai imports torch_geometric, which warns about torch.jit.script on import
    _warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
    from .gain import GainMatrix, LatentGains, interpolate_log_gains
    from .models import DEFAULT_LAMBDAS, MODELS, get_model, is_gained, model_name

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DEFAULT_LAMBDAS",
    "GainMatrix",
    "LatentGains",
    "MODELS",
    "get_model",
    "interpolate_log_gains",
    "is_gained",
    "load_checkpoint",
    "model_name",
    "read_checkpoint",
    "save_checkpoint",
]
