r"""Fixed-point hyper path: entropy parameters that are bit-identical on every machine.

The decoder of a hyperprior model picks a CDF for every latent element from the
scale that ``h_s(z_hat × IG_z(q))`` predicts, and the encoder must have picked the
same one. Computed in float, a last-bit difference between two machines (oneDNN's
ISA, torch's vectorised kernels, thread count, BLAS) moves a scale across a
boundary of the scale table and rANS desynchronises (issue 17: 9 of 18 Kodak
files failed under ``ONEDNN_MAX_CPU_ISA=AVX``). Following Ballé et al.,
"Integer Networks for Data Compression with Latent-Variable Models" (ICLR 2019),
this module computes the whole path from ``z_hat`` to the conditional's
``(scales, means)`` in integer arithmetic, derived from the trained float model
(no retraining); encoder and decoder both call :func:`coding_params`.

Number formats (``F = ACT_FRAC_BITS = 16``)
-------------------------------------------

* activations: int64 ``A`` standing for ``A / 2**F``;
* weights: per output channel ``c``, ``W_int = round(w * 2**e_c)`` with ``e_c = 15 - E``
  where ``max |w[c]| = m * 2**E``, ``m`` in ``[0.5, 1)`` (so ``|W_int| <= 2**15``;
  ``e_c`` is capped to ``[-16, 40]``); bias ``B_int = round(b * 2**(F + e_c))``;
  every rounding is round-half-even of an exactly computed float64 product;
* a convolution is ``acc = sum W_int * A`` (integers), then
  ``A_out = floor((acc + B_int + 2**(e_c - 1)) / 2**e_c)`` (int64; a left shift when
  ``e_c <= 0``);
* ``ReLU``: ``max(A, 0)``; ``LeakyReLU(s)``: ``A`` if ``A >= 0`` else
  ``floor((A * S + 2**23) / 2**24)`` with ``S = round(s * 2**24)``.

The sums ``acc`` are computed with ``F.unfold`` + ``matmul`` (``F.fold`` for a
transposed convolution) in **float64 on integer-valued tensors**: as long as
``max|A| * max_c sum|W_int[c]| < 2**53`` every partial sum in any order is an
integer below ``2**53``, exactly representable, so the result does not depend on
the summation order, blocking, FMA, thread count, BLAS or device. Larger inputs
are split into 26-bit limbs ``A = sum_k A_k 2**(26 k)``, one exact product per limb,
recombined in int64 (refused with ``ValueError`` beyond ``2**62``). ``F.conv2d`` is
never called on these tensors (Winograd / FFT algorithms are not exact).

Input and gain
--------------

``z_hat`` (float32: decoded integers plus the bottleneck's medians, one IEEE
addition, identical everywhere) enters as ``Z = round(z_hat * 2**16)``. The
inverse gain ``IG_z(q)`` is computed in fixed point from the stored log gains
(:func:`fixed_gains`): with ``q`` as the model uses it (float32), ``s`` and ``l`` as
in :func:`gainedvae.gain.interpolate_log_gains`, ``Lq = round(l * 2**24)`` (exact)
and ``a = round(log_gain[s] * 2**32)``, ``b = round(log_gain[s + 1] * 2**32)``,

    ``G = round_half_even(exp(((2**24 - Lq) * a + Lq * b) / 2**56) * 2**GAIN_FRAC_BITS)``

with ``exp`` from Python's :mod:`decimal` at 50 digits, which is correctly rounded
(so unique: the same on every conforming implementation), unlike ``torch.exp``
whose vectorised and scalar kernels differ. The network input is
``A_0 = floor((Z * G + 2**23) / 2**24)``.

Output
------

The last layer's ``A`` (scales and means, in the conditional's ``conditional_params``
layout) is returned as float32 ``A / 2**16``: exact for ``|value| < 256`` and a
deterministic IEEE rounding beyond. The conditional's
``build_indexes`` (first table scale not below ``max(scale, 0.11)``,
``torch.searchsorted``) only *compares* these values with the scale table, so with a
bit-identical table (:func:`gainedvae.entropy.scale_table` is computed exactly too)
the indexes agree everywhere; :func:`scale_indexes` is the same function on the
integers ``A`` (thresholds ``floor(table[i] * 2**16)``), used by the tests. The
means come out of the same path, so ``y_hat = symbols + means`` is identical bit
for bit. The synthesis ``g_s`` stays float: a last-bit difference there moves a
pixel by at most one level and cannot desynchronise the stream.

Cost: the weights are quantised once per model (cached until a parameter
changes); the float64 matmuls cost about as much as the float ``h_s`` on the
small hyper-latent (see ``results/benchmarks/cross_platform.md``).
"""

from __future__ import annotations

import decimal
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACT_FRAC_BITS",
    "GAIN_FRAC_BITS",
    "FixedConv",
    "coding_params",
    "exp_fixed",
    "fixed_gains",
    "fixed_hyper_synthesis",
    "quantize_sequential",
    "run_fixed",
    "scale_indexes",
    "exact_log_spaced",
]

#: Fraction bits of every activation of the fixed-point path.
ACT_FRAC_BITS = 16
#: Fraction bits of the fixed-point inverse gains.
GAIN_FRAC_BITS = 24
#: Fraction bits of the LeakyReLU slope.
SLOPE_FRAC_BITS = 24
#: Bits of a limb when an input is too large for one exact float64 product.
LIMB_BITS = 26
_EXACT = 2**53
_DEC = decimal.Context(prec=50, rounding=decimal.ROUND_HALF_EVEN, Emax=999999, Emin=-999999)


# ---------------------------------------------------------------------------
# exact scalar functions (Python integers and correctly rounded decimal)


def exp_fixed(numerator: int, frac_bits: int, out_bits: int) -> int:
    """``round_half_even(exp(numerator / 2**frac_bits) * 2**out_bits)``.

    ``exp`` is :meth:`decimal.Decimal.exp` at 50 significant digits (correctly
    rounded), the scaling and rounding exact decimal operations: a function of the
    integers alone, identical on every platform.
    """
    x = _DEC.divide(decimal.Decimal(int(numerator)), decimal.Decimal(2) ** int(frac_bits))
    y = _DEC.multiply(_DEC.exp(x), decimal.Decimal(2) ** int(out_bits))
    return int(y.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


def exact_log_spaced(lo: float, hi: float, levels: int) -> List[float]:
    """``levels`` log-spaced values from ``lo`` to ``hi`` (CompressAI's
    ``exp(linspace(log lo, log hi, levels))``), each the float64 nearest to
    ``exp(log lo + i (log hi - log lo) / (levels - 1))`` evaluated with correctly
    rounded 50-digit decimal ``ln`` / ``exp``; cast to float32 by the caller."""
    a, b = _DEC.ln(decimal.Decimal(lo)), _DEC.ln(decimal.Decimal(hi))
    step = _DEC.divide(_DEC.subtract(b, a), decimal.Decimal(levels - 1))
    return [float(_DEC.exp(_DEC.add(a, _DEC.multiply(step, decimal.Decimal(i))))) for i in range(levels)]


def fixed_gains(log_gain: Tensor, quality: float) -> Tensor:
    """Fixed-point gains ``G`` (int64, :data:`GAIN_FRAC_BITS` fraction bits) of the
    log-gain matrix ``(L, C)`` at a scalar quality; the formula is in the module docstring.

    ``quality`` is rounded to float32 first, as :func:`gainedvae.gain.check_quality`
    does for the float path; integer qualities select a trained level exactly.
    """
    levels = log_gain.shape[0]
    q = float(torch.tensor(float(quality), dtype=torch.float32))
    s = min(max(math.floor(q) - 1, 0), max(levels - 2, 0))
    frac = q - 1 - s  # exact: q is a float32 in [1, L]
    lq = frac * 2**24
    if lq != int(lq) or not 0 <= lq <= 2**24:
        raise ValueError(f"quality {quality!r} is not a float32 in [1, {levels}]")
    lq = int(lq)
    upper = min(s + 1, levels - 1)
    rows = log_gain.detach().to("cpu", torch.float64) * 2.0**32  # exact for float32 / float16 values
    a = [int(v) for v in torch.round(rows[s]).tolist()]
    b = [int(v) for v in torch.round(rows[upper]).tolist()]
    return torch.tensor(
        [exp_fixed((2**24 - lq) * ai + lq * bi, 56, GAIN_FRAC_BITS) for ai, bi in zip(a, b)], dtype=torch.int64
    )


# ---------------------------------------------------------------------------
# integer layers


def _pow2(e: Tensor) -> Tensor:
    return torch.ones_like(e).bitwise_left_shift(e)


def _round_shift(x: Tensor, shift: Tensor) -> Tensor:
    """``floor((x + 2**(shift-1)) / 2**shift)`` per channel (dim 1), ``x * 2**-shift`` for ``shift <= 0``."""
    shift = shift.view(1, -1, *([1] * (x.dim() - 2)))
    right = shift.clamp(min=0)
    up = torch.div(x + torch.where(right > 0, _pow2((right - 1).clamp(min=0)), 0), _pow2(right), rounding_mode="floor")
    return up * _pow2((-shift).clamp(min=0))


class FixedConv:
    """One (transposed) convolution in integers; see the module docstring.

    Attributes: ``weight`` (float64, integer-valued, ``(Cout, Cin*k*k)`` for a
    convolution, ``(Cout*k*k, Cin)`` for a transposed one), ``exponent`` (int64,
    ``e_c`` per output channel), ``bias`` (int64), ``l1`` (``max_c sum |W_int[c]|``).
    """

    def __init__(self, layer: nn.Module):
        if layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros":
            raise ValueError(f"the fixed-point path supports plain convolutions only, got {layer}")
        self.transposed = isinstance(layer, nn.ConvTranspose2d)
        self.kernel = tuple(layer.kernel_size)
        self.stride = tuple(layer.stride)
        self.padding = tuple(layer.padding)
        self.output_padding = tuple(getattr(layer, "output_padding", (0, 0)))
        w = layer.weight.detach().to("cpu", torch.float64)
        if self.transposed:
            w = w.transpose(0, 1)  # (Cout, Cin, kh, kw)
        self.out_channels, self.in_channels = w.shape[:2]
        peak = w.abs().flatten(1).max(1).values
        _, E = torch.frexp(peak)
        e = torch.where(peak > 0, 15 - E.to(torch.int64), torch.zeros_like(E, dtype=torch.int64)).clamp(-16, 40)
        scale = torch.ldexp(torch.ones_like(peak), e.to(torch.float64))
        w_int = torch.round(w * scale.view(-1, 1, 1, 1))  # exact product, exact rounding
        self.exponent = e
        self.l1 = float(w_int.abs().flatten(1).sum(1).max()) if w_int.numel() else 0.0
        b = layer.bias.detach().to("cpu", torch.float64) if layer.bias is not None else torch.zeros(self.out_channels, dtype=torch.float64)
        b_scaled = torch.round(torch.ldexp(b, (e + ACT_FRAC_BITS).to(torch.float64)))
        if b_scaled.abs().max() >= 2.0**62:
            raise ValueError("a bias is too large for the fixed-point path")
        self.bias = b_scaled.to(torch.int64)
        if self.transposed:  # (Cin, Cout*k*k) -> (Cout*k*k, Cin) for cols = W @ x
            self.weight = w_int.transpose(0, 1).reshape(self.in_channels, -1).t().contiguous()
        else:
            self.weight = w_int.reshape(self.out_channels, -1).contiguous()

    def _products(self, x: Tensor) -> Tensor:
        """Exact integer sums of products (int64, before bias and shift)."""
        peak = int(x.abs().max()) if x.numel() else 0
        if peak * self.l1 >= 2.0**62:
            raise ValueError("fixed-point hyper path: activations out of range (corrupt or absurd hyper-latent)")
        if peak * self.l1 < _EXACT:
            return self._sums(x.to(torch.float64)).to(torch.int64)
        if self.l1 * 2**LIMB_BITS >= _EXACT:
            raise ValueError("fixed-point hyper path: a layer is too wide for exact float64 sums")
        out, rest, shift = None, x, 0
        while True:  # little-endian limbs: rest = hi * 2**26 + lo with 0 <= lo < 2**26
            if int(rest.abs().max()) * self.l1 < _EXACT:
                last = self._sums(rest.to(torch.float64)).to(torch.int64) * 2**shift
                return last if out is None else out + last
            lo = torch.remainder(rest, 2**LIMB_BITS)
            part = self._sums(lo.to(torch.float64)).to(torch.int64) * 2**shift
            out = part if out is None else out + part
            rest = torch.div(rest - lo, 2**LIMB_BITS, rounding_mode="floor")
            shift += LIMB_BITS

    def _sums(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        kh, kw = self.kernel
        sh, sw = self.stride
        ph, pw = self.padding
        if not self.transposed:
            cols = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)  # (B, C*k*k, L)
            Ho = (H + 2 * ph - kh) // sh + 1
            Wo = (W + 2 * pw - kw) // sw + 1
            return torch.matmul(self.weight, cols).view(B, self.out_channels, Ho, Wo)
        cols = torch.matmul(self.weight, x.reshape(B, C, H * W))  # (B, Cout*k*k, H*W)
        full = ((H - 1) * sh + kh, (W - 1) * sw + kw)
        y = F.fold(cols, full, self.kernel, stride=self.stride)
        Ho = (H - 1) * sh - 2 * ph + kh + self.output_padding[0]
        Wo = (W - 1) * sw - 2 * pw + kw + self.output_padding[1]
        y = F.pad(y, (0, max(0, pw + Wo - full[1]), 0, max(0, ph + Ho - full[0])))
        return y[:, :, ph : ph + Ho, pw : pw + Wo]

    def __call__(self, x: Tensor) -> Tensor:
        acc = self._products(x) + self.bias.view(1, -1, 1, 1)
        return _round_shift(acc, self.exponent)


class FixedLeakyReLU:
    """``max(A, 0)`` (``slope=0``) or ``A`` / ``floor((A * S + 2**23) / 2**24)`` for ``A < 0``."""

    def __init__(self, slope: float):
        self.slope = int(round(float(slope) * 2**SLOPE_FRAC_BITS))

    def __call__(self, x: Tensor) -> Tensor:
        if self.slope == 0:
            return x.clamp(min=0)
        neg = torch.div(x * self.slope + 2 ** (SLOPE_FRAC_BITS - 1), 2**SLOPE_FRAC_BITS, rounding_mode="floor")
        return torch.where(x >= 0, x, neg)


def quantize_sequential(seq: nn.Sequential) -> List:
    """The integer layers of a ``Sequential`` of (transposed) convolutions, ReLUs and LeakyReLUs."""
    ops = []
    for layer in seq:
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            ops.append(FixedConv(layer))
        elif isinstance(layer, nn.ReLU):
            ops.append(FixedLeakyReLU(0.0))
        elif isinstance(layer, nn.LeakyReLU):
            ops.append(FixedLeakyReLU(layer.negative_slope))
        else:
            raise ValueError(f"the fixed-point path cannot run {type(layer).__name__}")
    return ops


def run_fixed(ops: Sequence, x: Tensor) -> Tensor:
    """Run integer layers on an int64 activation tensor."""
    for op in ops:
        x = op(x)
    return x


def _param_key(module: nn.Module) -> Tuple:
    return tuple((p.data_ptr(), p._version, p.dtype) for p in module.parameters())


def fixed_hyper_synthesis(model: nn.Module) -> List:
    """``quantize_sequential(model.h_s)``, cached on the model until a parameter of ``h_s`` changes."""
    key = _param_key(model.h_s)
    hit = model.__dict__.get("_fixed_h_s")
    if hit is None or hit[0] != key:
        hit = (key, quantize_sequential(model.h_s))
        model.__dict__["_fixed_h_s"] = hit
    return hit[1]


def _fixed_inverse_z_gain(model: nn.Module, quality: float) -> Tensor:
    log_gain = model.gain.z_inv.log_gain
    key = (float(quality), log_gain.data_ptr(), log_gain._version)
    cache: Dict = model.__dict__.setdefault("_fixed_z_gain", {})
    if key not in cache:
        if len(cache) > 64:
            cache.clear()
        cache[key] = fixed_gains(log_gain, quality)
    return cache[key]


def coding_params(model: nn.Module, z_hat: Tensor, quality) -> Tensor:
    """``h_s(z_hat × IG_z(q))`` of a hyperprior model, in fixed point (float32 result).

    ``quality``: scalar float or 0-d tensor. Same shape, layout and (up to the
    quantisation, see the tests) values as the float ``h_s``; bit-identical on
    every machine.
    """
    q = float(quality.item() if isinstance(quality, Tensor) else quality)
    device = z_hat.device
    z = z_hat.detach().to("cpu", torch.float64)
    if not torch.isfinite(z).all():
        raise ValueError("hyper-latent is not finite")
    Z = torch.round(z * 2.0**ACT_FRAC_BITS)
    if Z.numel() and float(Z.abs().max()) >= 2.0**40:
        raise ValueError("hyper-latent magnitude is out of range for the fixed-point path")
    G = _fixed_inverse_z_gain(model, q).view(1, -1, 1, 1)
    Z = Z.to(torch.int64)
    if Z.numel() and int(Z.abs().max()) * int(G.max()) >= 2**62:
        raise ValueError("hyper-latent times gain is out of range for the fixed-point path")
    A = torch.div(Z * G + 2 ** (GAIN_FRAC_BITS - 1), 2**GAIN_FRAC_BITS, rounding_mode="floor")
    out = run_fixed(fixed_hyper_synthesis(model), A)
    return (out.to(torch.float64) * 2.0**-ACT_FRAC_BITS).to(torch.float32).to(device)


def scale_indexes(scales_fixed: Tensor, table: Tensor) -> Tensor:
    """Table index of fixed-point scales (int64, 16 fraction bits): ``#{i < T-1 :
    floor(table[i] * 2**16) < S}``, i.e. the first table scale not below ``S / 2**16``
    (scales below the table's first entry get index 0). Equal to
    :meth:`~gainedvae.entropy.TableGaussianConditional.build_indexes` of
    ``S / 2**16`` in float32 whenever that is exact (``S < 2**24``)."""
    thresholds = torch.floor(table[:-1].to(torch.float64) * 2.0**ACT_FRAC_BITS).to(torch.int64)
    return torch.searchsorted(thresholds.contiguous(), scales_fixed.contiguous(), side="left").int()
