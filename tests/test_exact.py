"""The fixed-point hyper path (gainedvae.exact) and the stored entropy tables (issue 17)."""

import math
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compressai.models.google import get_scale_table
from conftest import tiny_model

import gainedvae
from gainedvae import codec, exact
from gainedvae.checkpoint import DEFAULT_CHECKPOINT, export_checkpoint, read_checkpoint, save_checkpoint
from gainedvae.entropy import scale_table
from gainedvae.models import GainedModel

HYPERPRIORS = ["gained-mbt2018-mean", "gained-bmshj2018-hyperprior", "gained-scgain"]


def _images(sizes=((64, 96), (80, 64), (48, 112))):
    rng = np.random.default_rng(17)
    out = []
    for h, w in sizes:
        smooth = np.kron(rng.random((h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
        out.append((255 * np.clip(smooth + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)).astype("uint8"))
    return out


def _float_params(net):
    return types.MethodType(GainedModel._coding_params, net)


# --------------------------------------------------------------------------- formulas


def test_exp_fixed_is_pinned():
    assert exact.exp_fixed(2**55, 56, 24) == 27660953 == round(math.exp(0.5) * 2**24)
    assert exact.exp_fixed(0, 56, 24) == 2**24
    assert exact.exp_fixed(-3 * 2**40, 40, 30) == round(math.exp(-3) * 2**30)
    rng = np.random.default_rng(0)
    for n in rng.integers(-(2**58), 2**58, 200):
        assert abs(exact.exp_fixed(int(n), 56, 24) - math.exp(int(n) / 2**56) * 2**24) <= 0.5 + 1e-6


def test_fixed_gains_pinned_and_close_to_float():
    log_gain = torch.tensor([[0.0, 0.5, -1.25], [0.25, -0.5, 2.0]], dtype=torch.float32)
    g = exact.fixed_gains(log_gain, 1.0)
    assert g.tolist() == [2**24, 27660953, round(math.exp(-1.25) * 2**24)]
    # q = 1.5: the mean of the log gains, (0.125, 0, 0.375)
    assert exact.fixed_gains(log_gain, 1.5).tolist() == [round(math.exp(0.125) * 2**24), 2**24, round(math.exp(0.375) * 2**24)]
    assert exact.fixed_gains(log_gain, 2).tolist() == [round(math.exp(v) * 2**24) for v in (0.25, -0.5, 2.0)]
    net = tiny_model(seed=3)
    for q in (1, 1.3, 2.5, 3.75, 4):
        fixed = exact.fixed_gains(net.gain.z_inv.log_gain, q).double() / 2**24
        ref = net.gain.z_inv(net.scalar_quality(q)).flatten().double()
        assert torch.allclose(fixed, ref, rtol=1e-6, atol=0)


def test_scale_table_is_exact_and_compressais():
    table = scale_table()
    ref = get_scale_table(levels=256)
    assert table.dtype == torch.float32 and table.shape == (256,)
    assert float(table[0]) == pytest.approx(0.11, rel=1e-7) and float(table[-1]) == 256.0
    # CompressAI's float32 linspace + torch.exp is a few ulps off the exact values
    assert torch.allclose(table, ref, rtol=1e-6, atol=0)
    assert torch.equal(scale_table(), table)


@pytest.mark.parametrize("transposed", [False, True])
def test_fixed_conv_sums_are_exact(transposed):
    torch.manual_seed(0)
    layer = (nn_deconv if transposed else nn_conv)()
    fc = exact.FixedConv(layer)
    assert fc.weight.abs().max() <= 2**15
    x = torch.randint(-(2**20), 2**20, (2, 12, 5, 7))
    w = fc.weight
    if transposed:
        w4 = w.t().reshape(12, 10, 5, 5)
        ref = F.conv_transpose2d(x.double(), w4, stride=2, padding=2, output_padding=1)
    else:
        ref = F.conv2d(x.double(), w.reshape(10, 12, 3, 3), stride=1, padding=1)
    assert torch.equal(fc._products(x), ref.long())  # small integers: the float64 reference is exact too
    # 40-bit inputs go through 26-bit limbs and stay exact (checked against a split reference)
    big = torch.randint(-(2**40), 2**40, (1, 12, 4, 4))
    hi, lo = big >> 20, big & (2**20 - 1)
    conv = (lambda t: F.conv_transpose2d(t.double(), w4, stride=2, padding=2, output_padding=1)) if transposed else (
        lambda t: F.conv2d(t.double(), w.reshape(10, 12, 3, 3), padding=1)
    )
    assert torch.equal(fc._products(big), conv(hi).long() * 2**20 + conv(lo).long())


def nn_conv():
    return torch.nn.Conv2d(12, 10, 3, padding=1)


def nn_deconv():
    return torch.nn.ConvTranspose2d(12, 10, 5, stride=2, padding=2, output_padding=1)


def test_fixed_leaky_relu():
    act = exact.FixedLeakyReLU(0.01)
    x = torch.tensor([-(2**20), -100, -1, 0, 1, 2**20])
    assert act.slope == 167772
    assert act(x).tolist() == [-10486, -1, 0, 0, 1, 2**20]
    assert exact.FixedLeakyReLU(0.0)(x).tolist() == [0, 0, 0, 0, 1, 2**20]


@pytest.mark.parametrize("name", HYPERPRIORS)
def test_fixed_hyper_path_is_close_to_float(name):
    """Integer h_s = float h_s within 2e-3 of the output's range (+ 2**-12); table indexes
    agree except next to a boundary (at most one step, < 2 % of the elements)."""
    net = tiny_model(name, seed=5)
    torch.manual_seed(1)
    z = torch.round(torch.randn(1, 16, 6, 5) * 4) + net.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)
    for q in (1, 2.5, 4):
        qt = net.scalar_quality(q)
        with torch.no_grad():
            ref = net.h_s(z * net.gain.z_inv(qt))
        got = exact.coding_params(net, z, qt)
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert float((got - ref).abs().max()) <= 2e-3 * float(ref.abs().max()) + 2**-12
        scales_ref, _ = net._entropy_params(ref)
        scales_got, _ = net._entropy_params(got)
        gc = net.gaussian_conditional
        i_ref, i_got = gc.build_indexes(scales_ref), gc.build_indexes(scales_got)
        assert int((i_ref - i_got).abs().max()) <= 1 and float((i_ref != i_got).float().mean()) < 0.02
        # the float32 values are exactly the fixed-point integers, and the integer lookup is the coder's
        fixed = torch.round(scales_got.double() * 2**16).long()
        assert torch.equal(fixed.double() * 2**-16, scales_got.double())
        assert torch.equal(exact.scale_indexes(fixed, gc.scale_table), i_got)


def test_coding_params_refuses_non_finite_and_absurd_hyper_latents():
    net = tiny_model(seed=2)
    q = net.scalar_quality(2)
    with pytest.raises(ValueError, match="not finite"):
        exact.coding_params(net, torch.full((1, 16, 2, 2), float("nan")), q)
    with pytest.raises(ValueError, match="out of range"):
        exact.coding_params(net, torch.full((1, 16, 2, 2), 1e12), q)


# --------------------------------------------------------------------------- codec


@pytest.mark.parametrize("name", HYPERPRIORS)
def test_round_trip_and_rate_against_float_path(name):
    """Files decode to what the encoder meant; the fixed-point path costs < 1 % of the bytes
    on these tiny images (Kodak: see results/benchmarks/cross_platform.md)."""
    net = tiny_model(name, seed=7, y_boost=1.0)
    net.weights_hash = None
    sizes = {"fixed": 0, "float": 0}
    for x in _images():
        for q in (1, 2.5, 4):
            data = codec.encode(net, x, q)
            assert codec.Container.from_bytes(data).version == 3
            x_hat = codec.decode(net, data)
            enc = net.compress(codec.image_to_tensor(x), q)
            assert torch.equal(x_hat, net.decompress(enc["strings"], enc["shape"], q)["x_hat"])
            sizes["fixed"] += len(data)
            net._coding_params = _float_params(net)
            sizes["float"] += len(codec.encode(net, x, q))
            del net._coding_params
    assert abs(sizes["fixed"] / sizes["float"] - 1) < 0.01


def test_context_models_keep_the_float_path():
    net = tiny_model("gained-mbt2018", seed=1)
    assert type(net)._coding_params is GainedModel._coding_params
    data = codec.encode(net, _images()[0], 2)
    assert codec.decode(net, data).shape == (1, 3, 64, 96)


# --------------------------------------------------------------------------- stored tables


def test_exported_checkpoint_stores_tables_and_loads_without_update(tmp_path, monkeypatch):
    net = tiny_model(seed=4)
    src = save_checkpoint(net, tmp_path / "train.pt")
    dst = export_checkpoint(src, tmp_path / "export.pt")
    payload = read_checkpoint(dst)
    tables = payload["entropy_tables"]
    assert tables["gaussian_conditional._quantized_cdf"].dim() == 1
    assert payload["state_dict"]["gaussian_conditional._quantized_cdf"].numel() == 0
    reference = gainedvae.load_checkpoint(dst)
    monkeypatch.setattr(type(net), "update", lambda *a, **k: pytest.fail("update() called on an export"))
    loaded = gainedvae.load_checkpoint(dst)
    assert loaded.entropy_tables_stored
    monkeypatch.undo()
    fresh = gainedvae.load_checkpoint(dst)
    fresh.update(force=True, scale_table=scale_table())
    for m in ("entropy_bottleneck", "gaussian_conditional"):
        a, b = getattr(loaded, m), getattr(fresh, m)
        assert torch.equal(a._quantized_cdf, b._quantized_cdf[:, : a._quantized_cdf.size(1)])
        assert torch.equal(a._offset, b._offset) and torch.equal(a._cdf_length, b._cdf_length)
    assert loaded.weights_hash == reference.weights_hash
    # the hash covers the tables: another table is another identity
    tables["gaussian_conditional._quantized_cdf"][5] += 1
    torch.save(payload, tmp_path / "tampered.pt")
    assert gainedvae.load_checkpoint(tmp_path / "tampered.pt").weights_hash != loaded.weights_hash


def test_shipped_weights_carry_their_tables():
    payload = read_checkpoint(DEFAULT_CHECKPOINT)
    assert {"entropy_bottleneck._quantized_cdf", "gaussian_conditional._quantized_cdf",
            "gaussian_conditional.scale_table"} <= set(payload["entropy_tables"])
    assert torch.equal(payload["entropy_tables"]["gaussian_conditional.scale_table"], scale_table())


# --------------------------------------------------------------------------- other kernels

_DECODER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, torch
    if os.environ.get("T_NO_MKLDNN"):
        torch.backends.mkldnn.enabled = False
    torch.set_num_threads(int(os.environ.get("T_THREADS", "2")))
    import gainedvae
    from gainedvae import codec
    net = gainedvae.load_checkpoint()
    latents = []
    inner = net._y_decompress
    net._y_decompress = lambda *a, **k: latents.append(inner(*a, **k)) or latents[-1]
    folder = sys.argv[1]
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".gvae"):
            x_hat = codec.decode(net, open(os.path.join(folder, name), "rb").read())
            out[name + ".px"] = codec.tensor_to_image(x_hat)
            out[name + ".y"] = latents[-1].numpy()
    np.savez(os.path.join(folder, sys.argv[2] + ".npz"), **out)
    """
)

CONFIGS = {
    "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "onednn-avx": {"ONEDNN_MAX_CPU_ISA": "AVX"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "no-mkldnn": {"T_NO_MKLDNN": "1"},
    "1-thread": {"T_THREADS": "1"},
}


@pytest.mark.slow
def test_files_decode_identically_under_other_kernels(tmp_path):
    """Encode with the default kernels (2 threads), decode in one subprocess per
    configuration: identical latents, pixels within one level of the encoder's decode."""
    net = gainedvae.load_checkpoint()
    reference = {}
    torch.set_num_threads(2)
    for i, x in enumerate(_images()[:2]):
        for q in (1, 3.5, 6.25, 8):
            name = f"img{i}_q{q:g}.gvae"
            data = codec.encode(net, x, q)
            (tmp_path / name).write_bytes(data)
            latents = []
            inner = net._y_decompress
            net._y_decompress = lambda *a, **k: latents.append(inner(*a, **k)) or latents[-1]
            reference[name] = (codec.tensor_to_image(codec.decode(net, data)).astype(int), latents[-1].numpy())
            del net._y_decompress
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(gainedvae.__file__)), env.get("PYTHONPATH", "")])
    failures = []
    for cfg, extra in CONFIGS.items():
        proc = subprocess.run([sys.executable, "-c", _DECODER, str(tmp_path), cfg], env={**env, **extra}, capture_output=True, text=True)
        if proc.returncode:
            failures.append(f"{cfg}: decoder failed: {proc.stderr[-500:]}")
            continue
        got = np.load(tmp_path / f"{cfg}.npz")
        for name, (px, y) in reference.items():
            if not np.array_equal(got[name + ".y"].view(np.uint32), y.view(np.uint32)):
                failures.append(f"{cfg}: {name}: latents differ")
            diff = int(np.abs(got[name + ".px"].astype(int) - px).max())
            if diff > 1:
                failures.append(f"{cfg}: {name}: pixels differ by {diff} levels")
    assert not failures, "\n".join(failures)
