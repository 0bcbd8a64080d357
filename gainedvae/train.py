"""Training library behind ``train_gain.py``.

One loop trains gained models (a level, hence a lambda, sampled per batch or
per sample) and CompressAI single-rate baselines (one lambda) with the same
data pipeline, schedule and budget. Runs are resumable at any checkpoint with
bit-identical continuation (data order and augmentation are functions of
``(seed, step)``; the torch RNG state, both optimisers and the scheduler are
saved), observable (tqdm, JSON-lines logs for training and validation) and
run under ``torchrun`` with DistributedDataParallel. An exponential moving average of the
weights (:mod:`gainedvae.ema`) is kept beside the raw weights; validation reports both, and
``best.pt``, evaluation and export use the average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union, get_args, get_origin, get_type_hints

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import FORMAT, checkpoint_weights, read_checkpoint, save_checkpoint
from .ema import WeightEMA
from .models import DEFAULT_LAMBDAS, MODELS, SingleRate, get_model, is_gained, is_variable_rate, model_name
from .models import takes_qmap as models_takes_qmap
from .data import PatchDataset, StepBatchSampler, load_validation, split_dataset
from .data import mix_seed
from .qmap import DEFAULT_LAMBDA_RANGE, check_lambda_range, lambda_scale, random_qmaps


class TrainingError(RuntimeError):
    """The run cannot continue (bad configuration, non-finite loss, ...)."""


def _flag(default=MISSING, help: str = "", **cli):
    """A :class:`TrainConfig` field that is a command-line flag, its help text (and flag details:
    ``flags``, ``choices``, ``nargs``, ``metavar``, ``negatable``; see :func:`add_config_arguments`)
    beside it."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint. Each field is a flag of
    ``train_gain.py`` (:func:`add_config_arguments`), its help text beside it."""

    data: Tuple[str, ...] = _flag(help="image folder(s) (recursive), folder with train/ and val/, or .tar",
                                 flags=("-d", "--dataset"), nargs="+", metavar="DATASET")
    model: str = _flag("gained-mbt2018-mean", "model to train: %(choices)s", flags=("-m", "--model"),
                       choices=MODELS, metavar="MODEL")
    N: int = _flag(128, "channels of the transforms' hidden layers", flags=("-N",))
    M: int = _flag(192, "channels of the latent y", flags=("-M",))
    lambdas: Tuple[float, ...] = _flag(DEFAULT_LAMBDAS, "lambdas of a gained model, increasing (comma- or space-separated)")
    lmbda: Optional[float] = _flag(None, "lambda of a single-rate model", flags=("--lambda",), metavar="LAMBDA")
    metric: str = _flag("mse", "distortion of the loss", choices=("mse", "ms-ssim"))
    level_sampling: str = _flag("batch", "gained models: draw one level per batch or one per sample",
                               choices=("batch", "sample"))
    level_weights: Tuple[float, ...] = _flag((), "gained models: weight of each level's loss in the objective, one per "
                                                 "lambda (comma- or space-separated; empty: all 1)")
    steps: int = _flag(100_000, "training steps")
    batch_size: int = _flag(8, "patches per step (over all processes)")
    patch_size: int = _flag(256, "side of the random training crops")
    lr: float = _flag(1e-4, "Adam learning rate of the network")
    milestones: Tuple[float, ...] = _flag((0.75, 0.9), "fractions of --steps where lr drops")
    gamma: float = _flag(0.1, "lr factor at each milestone")
    warmup_steps: int = _flag(0, "steps of linear lr warm-up (0: none)")
    aux_lr: float = _flag(1e-3, "Adam learning rate of the entropy bottleneck quantiles (aux loss)")
    clip_max_norm: float = _flag(1.0, "gradient norm clipping; 0 disables clipping")
    seed: int = _flag(0, "seed of the weights, data order, crops and levels")
    num_workers: int = _flag(0, "DataLoader worker processes (0: load in the training process)")
    device: str = "cpu"  # not generated: train_gain.py resolves --device / --cuda
    save_dir: str = _flag("runs/default", "run directory: checkpoints, logs, images")
    save_every: int = _flag(1000, "steps between checkpoints")
    keep: int = _flag(3, "number of periodic checkpoints kept (plus best.pt)")
    val_every: int = _flag(1000, "steps between validations (every level, EMA and raw weights)")
    val_split: float = _flag(0.05, "fraction of the images held out for validation (without a val/ folder)")
    val_size: int = _flag(256, "side of the centre crops used for validation")
    val_max_images: int = _flag(16, "validation images used at most")
    log_every: int = _flag(50, "steps between lines of train_log.jsonl")
    log_images: bool = _flag(False, "save input/reconstruction pairs of the first validation image at each validation")
    downscale_jpeg: bool = _flag(False, "halve large JPEGs before cropping")
    init: Optional[str] = _flag(None, "start from these weights (e.g. a single-rate checkpoint: shared start)")
    threads: int = _flag(0, "torch CPU threads (0 = torch default)")
    # channels_last measured 17-21 % faster for mbt2018-mean on CPU, but with torch 2.15 it corrupts
    # the heap when training cheng2020-attn-gmm (glibc: 'corrupted size vs. prev_size'): opt-in only.
    channels_last: bool = _flag(False, "channels_last memory format: faster on CPU for the hyperprior models "
                                      "(see results/benchmarks/train_throughput.md) but off by default: it corrupts "
                                      "memory with cheng2020 models on torch 2.15", negatable=True)
    # torch.compile of the training forward: "auto" compiles where it was measured faster with the
    # same losses (see compile_plan and results/benchmarks/train_throughput.md), "on" / "off" force it.
    compile: str = _flag("auto", "torch.compile the training forward; auto = on for the models measured faster on "
                                "CPU with the same losses, in runs of 2000+ steps (results/benchmarks/train_throughput.md)",
                        choices=("auto", "on", "off"))
    qmap_lambda_range: Tuple[float, float] = _flag(
        DEFAULT_LAMBDA_RANGE, "gained-scgain: pixel lambda = level lambda * LOW**(1-q) * HIGH**q for map value q; "
                              "the default range gives 1 at q=0.5", metavar=("LOW", "HIGH"))
    entropy_model: Optional[str] = _flag(None, "entropy model of the gained hyperprior models (default: gaussian)",
                                        choices=("gaussian", "asymmetric", "gmm"))
    quantizer: str = _flag("noise", "gained hyperprior models: what h_s and g_s read in training, noise (additive uniform "
                                    "noise, CompressAI's default) or ste (the latents rounded as the coder rounds them, "
                                    "straight-through gradients; the rate still from noise: CompressAI's latent codecs' "
                                    "quantizer='ste')", choices=("noise", "ste"))
    ema_decay: float = _flag(0.999, "decay of the moving average of the weights used for validation, best.pt and "
                                   "export (gainedvae/ema.py; 0 disables)")
    extra: Dict[str, object] = field(default_factory=dict)

    def run_lambdas(self) -> Tuple[float, ...]:
        if is_variable_rate(self.model):
            return tuple(float(v) for v in self.lambdas)
        if self.lmbda is None:
            raise TrainingError(f"single-rate model {self.model!r} needs --lambda")
        return (float(self.lmbda),)


def floats(text: str) -> Tuple[float, ...]:
    """``"0.1,0.2"`` or ``"0.1 0.2"`` as ``(0.1, 0.2)``: the argument type of a ``Tuple[float, ...]`` flag."""
    return tuple(float(v) for v in text.replace(",", " ").split())


def config_flags() -> List[Field]:
    """The :class:`TrainConfig` fields that are command-line flags (those with help text)."""
    return [f for f in fields(TrainConfig) if "help" in f.metadata]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :func:`config_flags` field to ``parser``, stored under the field's name.

    The flag is ``--field-name`` (or the field's ``flags``); the field's default is the flag's
    (shown in the help) and a field without one is a required flag. The annotation gives the
    type: ``int``/``float``/``str``, ``Optional[X]`` as ``X``, ``bool`` as a switch
    (``--x`` / ``--no-x`` where ``negatable``), ``Tuple[float, ...]`` as one comma- or
    space-separated argument (:func:`floats`) unless the field gives ``nargs``, ``Tuple[X, X]``
    as two arguments. ``choices``, ``nargs`` and ``metavar`` pass through.
    """
    hints = get_type_hints(TrainConfig)
    for f in config_flags():
        kwargs = dict(f.metadata)
        names = kwargs.pop("flags", ("--" + f.name.replace("_", "-"),))
        negatable = kwargs.pop("negatable", False)
        hint = hints[f.name]
        if get_origin(hint) is Union:  # Optional[X]
            hint = next(a for a in get_args(hint) if a is not type(None))
        if f.default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
            if f.default is not None and hint is not bool:
                kwargs["help"] += " (default: %(default)s)"
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if negatable else "store_true"
        elif get_origin(hint) is tuple:
            item, *rest = get_args(hint)
            if rest != [Ellipsis]:
                kwargs["nargs"] = 1 + len(rest)
            if item is float:
                kwargs["type"] = float if "nargs" in kwargs else floats
        elif hint is not str:
            kwargs["type"] = hint
        parser.add_argument(*names, dest=f.name, **kwargs)


# ---------------------------------------------------------------------------
# objective


def rate_distortion(out: Dict, x: Tensor, lmbda: Tensor, metric: str = "mse",
                    weight: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """``lambda * 255^2 * MSE + bpp`` (or ``lambda * (1 - MS-SSIM) + bpp``) per sample, averaged.

    ``lmbda`` is a scalar or a ``(B,)`` tensor (per-sample levels), or a
    pixel-wise ``(B|1, 1, H, W)`` lambda map (``gained-scgain``; MSE only):
    ``mean(lambda_map * 255^2 * (x_hat - x)^2) + bpp``.

    With ``weight`` (a scalar or ``(B,)`` tensor: ``--level-weights`` of each sample's level) the
    result also has ``objective = mean(weight * per-sample loss)``, what training minimises;
    ``loss`` stays the plain mean, comparable across runs.
    """
    n, _, h, w = x.shape
    num_pixels = h * w
    bpp = sum(-torch.log2(lk).flatten(1).sum(1) for lk in out["likelihoods"].values()) / num_pixels
    sq_err = F.mse_loss(out["x_hat"], x, reduction="none")
    mse = sq_err.flatten(1).mean(1)
    if lmbda.dim() == 4:  # pixel-wise lambda map
        if metric != "mse":
            raise TrainingError(f"a pixel-wise lambda map (gained-scgain) needs --metric mse, got {metric!r}")
        per_sample = (lmbda.to(x.device) * 255.0**2 * sq_err).flatten(1).mean(1) + bpp
        psnr = -10 * torch.log10(mse.clamp_min(1e-10))
        return _with_objective({"loss": per_sample.mean(), "bpp": bpp.mean(), "mse": mse.mean(), "psnr": psnr.mean()},
                               per_sample, weight)
    lmbda = lmbda.to(x.device).expand(n)
    if metric == "mse":
        distortion = 255.0**2 * mse
    elif metric == "ms-ssim":
        from pytorch_msssim import ms_ssim

        distortion = 1 - ms_ssim(out["x_hat"], x, data_range=1.0, size_average=False)
    else:
        raise TrainingError(f"unknown metric {metric!r} (mse or ms-ssim)")
    per_sample = lmbda * distortion + bpp
    psnr = -10 * torch.log10(mse.clamp_min(1e-10))
    return _with_objective({"loss": per_sample.mean(), "bpp": bpp.mean(), "mse": mse.mean(), "psnr": psnr.mean()},
                           per_sample, weight)


def _with_objective(metrics: Dict[str, Tensor], per_sample: Tensor, weight: Optional[Tensor]) -> Dict[str, Tensor]:
    if weight is not None:
        metrics["objective"] = (weight.to(per_sample.device).expand_as(per_sample) * per_sample).mean()
    return metrics


def level_weight_tensor(cfg: TrainConfig, levels: int) -> Optional[Tensor]:
    """``--level-weights`` as a tensor (None when not given), checked against the run's levels."""
    if not cfg.level_weights:
        return None
    if levels == 1:
        raise TrainingError(f"--level-weights is for variable-rate models; {cfg.model} has one lambda")
    if len(cfg.level_weights) != levels:
        raise TrainingError(f"--level-weights: expected one weight per lambda ({levels}), got {len(cfg.level_weights)}")
    if min(cfg.level_weights) <= 0 or not all(math.isfinite(w) for w in cfg.level_weights):
        raise TrainingError(f"--level-weights must be positive and finite, got {list(cfg.level_weights)}")
    return torch.tensor(cfg.level_weights, dtype=torch.float32)


def configure_optimizers(net: nn.Module, lr: float, aux_lr: float):
    """Adam on the network, Adam on the entropy bottleneck quantiles (as CompressAI's example)."""
    net_params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]
    aux_params = [p for n, p in net.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
    return torch.optim.Adam(net_params, lr=lr), torch.optim.Adam(aux_params, lr=aux_lr)


def aux_loss(net: nn.Module) -> Tensor:
    """The entropy bottlenecks' quantile loss (CompressAI's ``aux_loss``, also
    counting the variable-rate bottleneck of the VBR models)."""
    from compressai.entropy_models import EntropyBottleneck, EntropyBottleneckVbr

    losses = [m.loss() for m in net.modules() if isinstance(m, (EntropyBottleneck, EntropyBottleneckVbr))]
    return sum(losses[1:], losses[0])


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up, then drops by ``gamma`` at ``milestones`` (fractions of ``steps``)."""
    marks = sorted(int(round(m * cfg.steps)) for m in cfg.milestones)

    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        return warm * cfg.gamma ** sum(step >= m for m in marks)

    return f


# ---------------------------------------------------------------------------
# helpers


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def sample_levels(cfg: TrainConfig, step: int, batch: int, levels: int) -> Optional[Tensor]:
    """Levels for a step: uniform per batch (``int`` tensor of shape ()) or per sample."""
    if levels == 1:
        return None
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    if cfg.level_sampling == "batch":
        return torch.randint(0, levels, (), generator=g)
    if cfg.level_sampling == "sample":
        return torch.randint(0, levels, (batch,), generator=g)
    raise TrainingError(f"--level-sampling must be batch or sample, got {cfg.level_sampling!r}")


def takes_qmap(net: nn.Module) -> bool:
    """A model with a quality-map input (``gained-scgain``), also behind DDP."""
    return models_takes_qmap(_unwrap(net))


def sample_qmaps(cfg: TrainConfig, step: int, x: Tensor, rank: int = 0) -> Tensor:
    """Random quality maps for a batch (:func:`gainedvae.qmap.random_qmaps`),
    a function of ``(seed, step, rank)`` like the batches themselves."""
    g = torch.Generator().manual_seed(mix_seed(cfg.seed, step, rank, 0x9A9))
    return random_qmaps(x.size(0), x.size(-2), x.size(-1), g).to(x.device)


#: Models whose compiled training step benchmarks/train_throughput.py measured faster than eager
#: on CPU with the same losses; "auto" compiles only these, only on CPU, and only for runs long
#: enough to repay the compilation (COMPILE_MIN_STEPS).
COMPILE_AUTO_MODELS = ("gained-mbt2018-mean", "mbt2018-mean")
COMPILE_MIN_STEPS = 2000


def compile_plan(cfg: TrainConfig, device: torch.device, steps_left: int) -> Tuple[bool, str]:
    """Whether to ``torch.compile`` the training forward, and why (printed at start)."""
    if cfg.compile not in ("auto", "on", "off"):
        raise TrainingError(f"--compile must be auto, on or off; got {cfg.compile!r}")
    if cfg.compile != "auto":
        return cfg.compile == "on", f"--compile {cfg.compile}"
    if device.type != "cpu":
        return False, "auto: not measured on this device (use --compile on to try)"
    if cfg.model not in COMPILE_AUTO_MODELS or (cfg.entropy_model or "gaussian") != "gaussian":
        return False, f"auto: {cfg.model} is not among the measured models {', '.join(COMPILE_AUTO_MODELS)}"
    if steps_left < COMPILE_MIN_STEPS:
        return False, f"auto: {steps_left} steps left, compiling pays from {COMPILE_MIN_STEPS}"
    import shutil

    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        return False, f"auto: no C++ compiler ({compiler}) for torch.compile's CPU backend"
    return True, "auto: measured faster on CPU with the same losses"


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` for the training forward. Inductor draws the training noise from
    torch's generator (``fallback_random``) so that a compiled step gives the eager step's loss and
    ``--resume`` stays exact; a compilation failure falls back to eager (``suppress_errors``).

    Both settings hold for this module only, not the process: ``fallback_random`` is an inductor
    option of this ``torch.compile`` (inductor applies it to the lazily compiled backward too),
    ``suppress_errors`` is patched around each call of the compiled forward, where dynamo compiles.
    """
    import torch._dynamo

    net = torch.compile(model, options={"fallback_random": True})
    net.forward = torch._dynamo.config.patch(suppress_errors=True)(net.forward)
    return net


def model_forward(net: nn.Module, x: Tensor, level: Union[int, Tensor, None], qmap: Optional[Tensor] = None):
    """Forward a gained model at ``level`` (with ``qmap`` for ``gained-scgain``;
    without one it uses its default uniform 0.5 map) or a single-rate CompressAI
    model (padded to its downsampling factor like the gained models pad themselves)."""
    if level is None:
        return SingleRate(_unwrap(net), forward=net)(x)
    if isinstance(level, Tensor):
        level = int(level) if level.dim() == 0 else level.to(x.device)
    if qmap is not None:
        return net(x, level=level, qmap=qmap)
    return net(x, level=level)


class RunFiles:
    """Checkpoint rotation and logs of one run directory (rank 0 only)."""

    CKPT = re.compile(r"ckpt-(\d+)\.pt$")

    def __init__(self, save_dir: str, keep: int):
        self.dir = Path(save_dir)
        self.keep = max(1, keep)
        self.train_log = self.dir / "train_log.jsonl"
        self.val_log = self.dir / "val_log.jsonl"
        self.best = self.dir / "best.pt"

    def checkpoints(self) -> List[Path]:
        found = [(int(m.group(1)), p) for p in self.dir.glob("ckpt-*.pt") if (m := self.CKPT.search(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Optional[Path]:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def rotate(self) -> None:
        for p in self.checkpoints()[: -self.keep]:
            p.unlink(missing_ok=True)

    def append(self, path: Path, record: Dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    TEMP = (".ckpt-*.pt.*.tmp", ".best.pt.*.tmp")

    def remove_temp_files(self) -> List[Path]:
        """Delete the temporary files of checkpoint writes that were killed (``kill -9``
        during :func:`~gainedvae.checkpoint.atomic_save`), with a warning; returns them."""
        found = sorted({p for pattern in self.TEMP for p in self.dir.glob(pattern) if p.is_file()})
        for p in found:
            p.unlink(missing_ok=True)
        if found:
            warnings.warn(
                f"{self.dir}: removed {len(found)} temporary file(s) of an interrupted checkpoint write: "
                f"{', '.join(p.name for p in found[:5])}{' ...' if len(found) > 5 else ''}",
                UserWarning,
                stacklevel=2,
            )
        return found

    @staticmethod
    def read_log(path: Path) -> List[str]:
        """The JSON lines of a log. A torn last line (a run killed while appending) is
        dropped with a warning; a corrupt line elsewhere is a :class:`TrainingError`
        naming the file and line."""
        lines = [(n, ln) for n, ln in enumerate(path.read_text(errors="replace").splitlines(), 1) if ln.strip()]
        kept = []
        for k, (n, ln) in enumerate(lines):
            try:
                record = json.loads(ln)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("no integer 'step'")
            except ValueError as err:
                if k == len(lines) - 1:
                    warnings.warn(f"{path}: dropping its torn last line {n} ({err})", UserWarning, stacklevel=3)
                    break
                raise TrainingError(f"{path}: line {n} is not a valid log record ({err}); repair or remove it") from None
            kept.append((record["step"], ln))
        return kept

    def truncate_logs(self, step: int) -> None:
        """Drop log lines written after ``step`` (a resumed run rewrites them)."""
        for path in (self.train_log, self.val_log):
            if path.exists():
                lines = [ln for s, ln in self.read_log(path) if s <= step]
                path.write_text("".join(ln + "\n" for ln in lines))


@torch.no_grad()
def validate(net: nn.Module, images: Tensor, lambdas: Sequence[float], metric: str, device) -> List[Dict]:
    """Every level on the validation crops with real rounding (eval mode)."""
    net.eval()
    records = []
    for level, lmbda in enumerate(lambdas):
        sums: Dict[str, float] = {}
        for i in range(images.size(0)):
            x = images[i : i + 1].to(device)
            out = model_forward(net, x, level if is_variable_rate(net) else None)
            out["x_hat"] = out["x_hat"].clamp(0, 1)
            r = rate_distortion(out, x, torch.tensor(lmbda), metric)
            for k, v in r.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        n = max(1, images.size(0))
        records.append({"level": level, "lambda": lmbda, **{k: v / n for k, v in sums.items()}})
    net.train()
    return records


@contextlib.contextmanager
def averaged(net: nn.Module, ema: Optional[WeightEMA]):
    """``net`` holds the moving-average weights inside the block (no-op without an average)."""
    if ema is None:
        yield net
        return
    ema.swap(net)
    try:
        yield net
    finally:
        ema.swap(net)


def validate_run(net: nn.Module, ema: Optional[WeightEMA], images: Tensor, lambdas: Sequence[float], metric: str,
                 device) -> List[Dict]:
    """:func:`validate` of the weights the run evaluates and exports: the moving average when
    there is one (``"weights": "ema"``, with the raw weights' figures as ``raw_loss``,
    ``raw_bpp``, ``raw_mse``, ``raw_psnr``), else the raw weights (``"weights": "raw"``)."""
    if ema is None:
        return [{**r, "weights": "raw"} for r in validate(net, images, lambdas, metric, device)]
    raw = validate(net, images, lambdas, metric, device)
    with averaged(net, ema):
        records = validate(net, images, lambdas, metric, device)
    return [{**r, "weights": "ema", **{f"raw_{k}": r0[k] for k in ("loss", "bpp", "mse", "psnr")}}
            for r, r0 in zip(records, raw)]


def save_side_by_side(net: nn.Module, x: Tensor, path: Path, level: Optional[int]) -> None:
    from PIL import Image

    with torch.no_grad():
        net.eval()
        out = model_forward(net, x, level)
        net.train()
    pair = torch.cat([x[0], out["x_hat"][0].clamp(0, 1)], dim=-1)
    arr = (pair.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# ---------------------------------------------------------------------------
# the run


def init_distributed(cfg: TrainConfig) -> Tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(cfg.device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
    return rank, world, device


def build_model(cfg: TrainConfig) -> nn.Module:
    lambdas = cfg.run_lambdas()
    extra = {"entropy_model": cfg.entropy_model} if cfg.entropy_model else {}
    try:
        net = get_model(cfg.model, N=cfg.N, M=cfg.M, lambdas=lambdas, **extra)
    except TypeError as err:
        raise TrainingError(f"model {cfg.model!r} does not take these options ({err})") from None
    if cfg.quantizer != "noise":
        if not hasattr(net, "set_quantizer"):
            raise TrainingError(f"--quantizer {cfg.quantizer}: {cfg.model} trains with noise only (CompressAI's model)")
        try:
            net.set_quantizer(cfg.quantizer)
        except ValueError as err:
            raise TrainingError(f"--quantizer: {err}") from None
    if not is_variable_rate(net):
        net.lambdas = lambdas
    elif is_gained(net):  # from scratch: levels spread around the geometric-mean lambda from step 0
        net.gain.init_from_lambdas(lambdas, math.exp(sum(map(math.log, lambdas)) / len(lambdas)))
    if cfg.init:
        payload = read_checkpoint(cfg.init)
        # a gainedvae checkpoint starts from its moving average where it has one
        state = checkpoint_weights(payload, "ema", cfg.init) if payload.get("format") == FORMAT else payload.get("state_dict", payload)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        if payload.get("model") != model_name(net) and hasattr(net, "load_backbone_state_dict"):
            # shared start from another model (e.g. a single-rate checkpoint)
            net.load_backbone_state_dict(state)
            ref = payload.get("config", {}).get("lambdas", [None])
            if is_gained(net) and len(ref) == 1 and ref[0]:
                # the start's lambda is on its metric's scale: for another metric (an MSE start of an
                # MS-SSIM model) the top level starts as the start and the others keep their ratios
                start_metric = (payload.get("train_config") or {}).get("metric", "mse")
                net.gain.init_from_lambdas(lambdas, ref[0] if start_metric == cfg.metric else max(lambdas))
        else:
            net.load_state_dict(state)
    return net


def train(cfg: TrainConfig, resume: Optional[str] = None, progress: bool = True) -> Path:
    """Run (or resume) training; returns the path of the final checkpoint."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    rank, world, device = init_distributed(cfg)
    files = RunFiles(cfg.save_dir, cfg.keep)
    if rank == 0:
        files.remove_temp_files()
    train_images, val_images = split_dataset(cfg.data, cfg.val_split)
    lambdas = cfg.run_lambdas()
    level_weights = level_weight_tensor(cfg, len(lambdas))
    if cfg.level_sampling == "sample" and cfg.model.endswith("-vbr"):
        raise TrainingError(f"{cfg.model} codes one level per batch (CompressAI's design): use --level-sampling batch")
    if cfg.metric == "ms-ssim" and min(cfg.patch_size, cfg.val_size) < 161:
        raise TrainingError("--metric ms-ssim needs --patch-size and --val-size of at least 161 (5 scales)")

    torch.manual_seed(cfg.seed)
    net = build_model(cfg).to(device)
    if takes_qmap(net):  # gained-scgain: random maps, pixel-wise lambda (validation: default uniform 0.5 map)
        if cfg.metric != "mse":
            raise TrainingError(f"{cfg.model} trains with a pixel-wise lambda map: use --metric mse")
        try:
            check_lambda_range(cfg.qmap_lambda_range)
        except ValueError as err:
            raise TrainingError(f"--qmap-lambda-range: {err}") from None
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer, aux_optimizer = configure_optimizers(net, cfg.lr, cfg.aux_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ema = WeightEMA(net, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start_step, best = 0, math.inf

    if resume:
        path = files.latest() if resume == "latest" else Path(resume)
        if path is None:
            raise TrainingError(f"--resume: no checkpoint in {files.dir}")
        state = read_checkpoint(path, map_location=device)
        saved = state.get("train_config", {})
        for key in ("model", "N", "M", "lambdas", "lmbda", "level_weights", "steps", "batch_size", "patch_size", "seed", "qmap_lambda_range",
                    "entropy_model", "quantizer"):
            old, new = saved.get(key), getattr(cfg, key)
            if key in saved and (list(old) if isinstance(old, (list, tuple)) else old) != (list(new) if isinstance(new, (list, tuple)) else new):
                raise TrainingError(f"--resume {path}: the run was started with {key}={old}, this command has {key}={new}")
        net.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        aux_optimizer.load_state_dict(state["aux_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, best = int(state["step"]), float(state.get("best_val", math.inf))
        if ema is not None and state.get("ema") is not None:
            ema.load(state["ema"])
        elif ema is not None and rank == 0:
            print(f"{path} has no weight average: it starts from the resumed weights (decay {cfg.ema_decay})")
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        if rank == 0:
            files.truncate_logs(start_step)
            print(f"resumed from {path} at step {start_step}")

    model = net
    if world > 1:
        # The entropy-bottleneck quantiles only get gradients from the aux loss,
        # which is data-independent and identical on every rank: keep them out
        # of DDP's all-reduce (their gradient is produced outside forward()).
        quantiles = [n for n, _ in net.named_parameters() if n.endswith(".quantiles")]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(net, quantiles)
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    use_compile, why = compile_plan(cfg, device, cfg.steps - start_step)
    if rank == 0 and progress:
        print(f"torch.compile {'on' if use_compile else 'off'} ({why})")
    forward_model = compiled(model) if use_compile else model
    dataset = PatchDataset(train_images, cfg.patch_size, train=True, downscale_jpeg=cfg.downscale_jpeg)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.steps, cfg.seed, start_step, rank, world)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the loader off the global RNG that --resume restores
    )
    val = load_validation(val_images, cfg.val_size, cfg.val_max_images) if rank == 0 else None

    def checkpoint(step: int, path: Optional[Path] = None) -> Path:
        path = path or files.dir / f"ckpt-{step:07d}.pt"
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(
            net,
            path,
            step=step,
            optimizer=optimizer.state_dict(),
            aux_optimizer=aux_optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            rng=rng,
            best_val=best,
            train_config=asdict(cfg),
            **({"ema": ema.save()} if ema is not None else {}),
        )
        return path

    last_good: Optional[Path] = files.latest()
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not progress or rank != 0, dynamic_ncols=True, desc=cfg.model)
    step, t0, window = start_step, time.perf_counter(), []
    model.train()
    for batch in loader:
        x = batch.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        level = sample_levels(cfg, step, x.size(0), len(lambdas))
        lmbda = torch.tensor(lambdas, device=device)[level.to(device)] if level is not None else torch.tensor(lambdas[0])

        qmap = sample_qmaps(cfg, step, x, rank) if takes_qmap(net) else None
        if qmap is not None:  # pixel-wise lambda map
            lmbda = lmbda.reshape(-1, 1, 1, 1) * lambda_scale(qmap, cfg.qmap_lambda_range)

        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        out = model_forward(forward_model, x, level, qmap)
        weight = level_weights[level] if level_weights is not None else None
        metrics = rate_distortion(out, x, lmbda, cfg.metric, weight)
        if not torch.isfinite(metrics["loss"]):
            bar.close()
            raise TrainingError(
                f"non-finite loss ({metrics['loss'].item()}) at step {step}; stopping. "
                f"Last good checkpoint: {last_good or 'none yet'}"
            )
        metrics.get("objective", metrics["loss"]).backward()
        if cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_max_norm)
        optimizer.step()
        aux = aux_loss(net)
        aux.backward()
        aux_optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(net)
        step += 1

        window.append({k: float(v.detach()) for k, v in metrics.items()})
        if rank == 0:
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - t0
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                rec = {"step": step, **mean, "aux_loss": aux.item(), "lr": scheduler.get_last_lr()[0],
                       "steps_per_s": len(window) / elapsed}
                files.append(files.train_log, rec)
                bar.set_postfix(loss=f"{mean['loss']:.3f}", bpp=f"{mean['bpp']:.3f}", psnr=f"{mean['psnr']:.2f}",
                                sps=f"{rec['steps_per_s']:.2f}")
                window, t0 = [], time.perf_counter()

            if val is not None and val.size(0) and (step % cfg.val_every == 0 or step == cfg.steps):
                records = validate_run(net, ema, val, lambdas, cfg.metric, device)
                for r in records:
                    files.append(files.val_log, {"step": step, **r})
                mean_loss = sum(r["loss"] for r in records) / len(records)
                if cfg.log_images:
                    with averaged(net, ema):
                        for r in records:
                            save_side_by_side(net, val[:1].to(device), files.dir / "images" / f"step{step:07d}-level{r['level']}.png",
                                              r["level"] if len(lambdas) > 1 else None)
                if mean_loss < best:
                    best = mean_loss
                    checkpoint(step, files.best)
            if step % cfg.save_every == 0 or step == cfg.steps:
                last_good = checkpoint(step)
                files.rotate()
    bar.close()
    if world > 1:
        dist.barrier()
    final = files.latest()
    if rank == 0 and (final is None or int(files.CKPT.search(final.name).group(1)) != step):
        final = checkpoint(step)
    return final
