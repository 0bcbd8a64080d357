"""Every argparse flag of the scripts has help text (read from their source: no script is run)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_gain.py", "eval_gain.py", "gainedvae/cli.py", "benchmarks/*.py", "results/*.py", "results/*/*.py",
           "examples/*.py"]


def test_every_script_flag_has_help():
    files = sorted({p for pattern in SCRIPTS for p in ROOT.glob(pattern)})
    missing, flags = [], 0
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                flags += 1
                kw = {k.arg: k.value for k in node.keywords}
                has_help = "help" in kw and not (isinstance(kw["help"], ast.Constant) and not kw["help"].value)
                if not has_help and not (isinstance(kw.get("action"), ast.Constant) and kw["action"].value == "version"):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert flags > 100 and missing == []
