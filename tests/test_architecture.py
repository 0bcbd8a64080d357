"""The package's layering (docs/architecture.md): no import cycle, no module importing one above it.

Every module must import on its own, as the first gainedvae module of a fresh process: a
cycle (``a`` imports ``b`` which imports ``a``) then fails with a partially initialised module.
A fresh interpreter per module costs the torch import each time, so one fresh interpreter
imports the third-party packages and forks a child per module (nothing of gainedvae is loaded
before the fork).
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gainedvae"

#: Layer of every module (docs/architecture.md); a module imports only from lower layers
#: (the models package's own modules import each other: it is one layer).
LAYERS = {
    # 0: leaves, no gainedvae imports
    "container": 0, "atomic": 0, "gain": 0, "exact": 0, "tiling": 0, "qmap": 0, "metrics": 0, "bd": 0, "ema": 0,
    # 1: rANS guards, image I/O, the rate-control search, latent refinement (model-free: duck-typed net)
    "rans": 1, "imageio": 1, "ratecontrol": 1, "refine": 1,
    # 2: entropy models; 3: models; 4: checkpoints; 5: the codec, widening a trained model
    "entropy": 2, "models": 3, "checkpoint": 4, "codec": 5, "widen": 5,
    # 6-8: training data, training, evaluation and reports; 9: the command line
    "data": 6, "train": 7, "evaluate": 7, "report": 7, "plot": 7, "evaluate_scgain": 8,
    "cli": 9, "__main__": 10, "__init__": 0,
}


def _modules():
    """``gainedvae.X`` for every module file of the package (``__main__`` runs the CLI: left out)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


_FORK_IMPORTS = r"""
import json, os, sys
import numpy, PIL.Image, torch, compressai.ans, compressai.entropy_models, compressai.models  # third-party only
assert not [m for m in sys.modules if m.split(".")[0] == "gainedvae"]
failed = {}
for name in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a fresh process as far as gainedvae goes: this module is the first one imported
        os.close(r)
        try:
            __import__(name)
            os._exit(0)
        except BaseException as err:
            os.write(w, f"{type(err).__name__}: {err}".encode()[:4000])
            os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status:
        failed[name] = message or f"exit status {status}"
print(json.dumps(failed))
"""


def _run(code, *args):
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_every_module_imports_first_on_its_own():
    modules = _modules()
    assert len(modules) > 30 and "gainedvae.rans" in modules and "gainedvae.models.rate" in modules
    failed = json.loads(_run(_FORK_IMPORTS, *modules).strip().splitlines()[-1])
    assert failed == {}


def test_the_container_and_the_command_line_start_without_torch():
    code = "import sys, gainedvae.container, gainedvae.ratecontrol, gainedvae.atomic, gainedvae.cli; " \
           "print(sorted({'torch', 'numpy', 'compressai'} & set(sys.modules)))"
    assert _run(code).strip() == "[]"


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[1] if module.count(".") else "__init__"]


def _imports(path: Path, module: str):
    """The gainedvae modules ``path`` imports (top level and inside functions)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            yield from ([target] if node.module else [f"{target}.{a.name}" for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gainedvae"):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("gainedvae"))


def test_no_module_imports_one_above_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for target in _imports(path, module):
            if target in ("gainedvae", "gainedvae.__init__") or target.startswith("gainedvae.__"):
                continue  # the package itself (__version__): lazy, torch-free
            same_package = module.startswith("gainedvae.models") and target.startswith("gainedvae.models")
            if not same_package and _layer(target) >= _layer(module):
                wrong.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert wrong == []
    every = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert every <= set(LAYERS), every - set(LAYERS)  # a new module gets its layer here
