"""gainedvae.plot draws on an Agg canvas of its own: importing and plotting leave the process's
matplotlib backend alone (no matplotlib.use, no pyplot)."""

import subprocess
import sys

import pytest

CHECK = """
import sys
import matplotlib
backend = dict.__getitem__(matplotlib.rcParams, "backend")
from gainedvae.plot import Curve, rd_plot
rd_plot([Curve("a", {"bpp": [0.1, 0.2], "psnr-rgb": [30.0, 32.0]}, "gained", [True, False]),
         Curve("b", {"bpp": [0.15], "psnr-rgb": [31.0]}, "single")], "psnr", sys.argv[1], "title")
assert dict.__getitem__(matplotlib.rcParams, "backend") is backend, "backend changed"
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
"""


@pytest.mark.slow
def test_rd_plot_writes_a_png_without_touching_the_backend(tmp_path):
    out = tmp_path / "rd.png"
    r = subprocess.run([sys.executable, "-c", CHECK, str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
