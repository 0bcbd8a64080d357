"""The conditional entropy models of ``y``: CompressAI's Gaussian with cached tables,
the asymmetric Gaussian and the GMM.

All are drop-in replacements for :class:`compressai.entropy_models.GaussianConditional`
inside a hyperprior's data flow: they are called exactly like it
(``cond(y, scales, means=...)``, ``cond.build_indexes(scales)``,
``cond.compress(y, indexes, means=...)``, ``cond.decompress(strings, indexes,
dtype, means=...)``), only ``scales`` carries more than one number per latent
element (the "packed" parameters below). A model switches with
``entropy_model="gaussian" | "asymmetric" | "gmm"`` (:data:`CONDITIONALS`,
:func:`configure_entropy_model`). Each class owns what differs between them:

* ``params_per_element(with_means)``: channels of ``h_s``'s output per latent channel;
* ``conditional_params(h, with_means)``: ``(scales, means)`` from ``h_s``'s output;
* ``widen_gaussian(t, dim, with_means, spread)``: a Gaussian model's last ``h_s``
  layer in its layout (:func:`widen_gaussian_state`, the shared start);
* its coding tables (:meth:`TableGaussianConditional.coder_tables`, the pair CDFs
  of the asymmetric model, the per-element CDFs of the GMM).

All of them code with CompressAI's rANS coder (:mod:`compressai.ans`), guarded by :mod:`gainedvae.rans`.

:class:`AsymmetricGaussianConditional`
    The asymmetric ("split") Gaussian of Cui et al., CVPR 2021 (the "A" of
    AG-VAE): one mean, a left scale below it and a right scale above it::

        p(x) = 2 / (sqrt(2 pi) (s_l + s_r)) * exp(-(x - mu)^2 / (2 s_l^2))   x <  mu
                                            * exp(-(x - mu)^2 / (2 s_r^2))   x >= mu

    Packed scales: ``cat(s_l, s_r)`` on the channel axis (``2M`` channels).
    With ``s_l == s_r`` the likelihood is bit-identical to CompressAI's Gaussian.

    CDF path: a table over *pairs* of CompressAI's 64 log-spaced scales. Both
    scales are rounded up to the table like :meth:`GaussianConditional.build_indexes`
    does, the CDF index is ``64 * i_left + i_right`` (4096 possible CDFs of
    length ``ceil(6.1 s_l) + ceil(6.1 s_r) + 3``). A CDF is built the first
    time its pair is used (one ``pmf_to_quantized_cdf`` call, float64, always
    for that pair alone so the encoder and the decoder build identical tables)
    and cached; a bitstream passes only the CDFs its image uses to the coder.
    Cost: like the Gaussian's table lookup plus ``torch.unique`` over the
    indexes; the first image pays for building the few hundred pairs it uses
    (about 0.5 ms each, all 4096 would take about 2 s), later images mostly
    hit the cache. Nothing is stored in the state dict.

:class:`GMMConditional`
    The discretised Gaussian mixture of Cheng et al., CVPR 2020, on CompressAI's
    :class:`~compressai.entropy_models.GaussianMixtureConditional` (its
    likelihood and its per-element CDF construction ``_build_cdf``). Packed
    parameters: ``cat(weight_logits, means, scales)``, each ``K*M`` channels,
    component ``k`` in channels ``[k*M, (k+1)*M)`` as CompressAI lays them
    out; weights are a softmax over the ``K`` components. The latent is
    quantised as ``round(y)`` (no mean subtraction: a mixture has no single mean).

    CDF path: one CDF per latent element, built at coding time (there is no
    table a mixture could be looked up in). Unlike CompressAI's
    ``GaussianMixtureConditional.compress`` (window ``[-max|y|, max|y|]`` for
    every element, returns tensors besides bytes, batch of one), each element's
    window is centred on its rounded mixture mean, ``c = round(sum_k w_k mu_k)``,
    with a half width ``A = max |round(y) - c|`` over the image (capped at
    ``window_cap``; symbols outside go through rANS's escape/bypass path).
    The bitstream is self-contained bytes: ``A`` (uint16), a bitmap of the
    channels that are not all zero (CompressAI's ``zero_bitmap``, not coded),
    then the rANS stream. CDFs are built and handed to the coder in chunks of
    about ``2**20`` entries to bound memory. Cost: ``K * (2A + 1)`` erf pairs
    per element plus the Python lists the coder needs; measured against the
    Gaussian's table lookup by ``benchmarks/model_speed.py``.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from compressai._CXX import pmf_to_quantized_cdf as _pmf_to_quantized_cdf
from compressai.ans import BufferedRansEncoder
from compressai.entropy_models import GaussianConditional, GaussianMixtureConditional
from torch import Tensor, nn

from .exact import exact_log_spaced
from .rans import MAX_SYMBOL, chunks, decode_symbols, encode_symbols, rans_decoder

__all__ = [
    "CONDITIONALS",
    "ENTROPY_MODELS",
    "AsymmetricGaussianConditional",
    "GMMConditional",
    "TableGaussianConditional",
    "check_latent",
    "configure_entropy_model",
    "widen_gaussian_state",
]


def check_latent(values: Tensor, what: str = "latent") -> None:
    """Raise ``ValueError`` unless ``values`` are finite and below :data:`gainedvae.rans.MAX_SYMBOL` in magnitude."""
    if values.numel() == 0:
        return
    if not torch.isfinite(values).all():
        raise ValueError(f"{what} is not finite (cannot be entropy-coded)")
    peak = float(values.detach().abs().max())
    if peak >= MAX_SYMBOL:
        raise ValueError(f"{what} magnitude {peak:.3g} is far outside any entropy model's range (cannot be rANS-coded)")


def _check_strings(strings, batch: int) -> None:
    if not isinstance(strings, (list, tuple)):
        raise ValueError("strings must be a list of bytes, one per image")
    if len(strings) != batch:
        raise ValueError(f"got {len(strings)} strings for a batch of {batch}")


class TableGaussianConditional(GaussianConditional):
    """CompressAI's :class:`GaussianConditional` with a one-pass ``build_indexes``.

    CompressAI finds each scale's table index with one comparison pass over the
    whole tensor per table entry (``T - 1`` passes); with gainedvae's 256-entry
    table (:data:`SCALE_TABLE_LEVELS`) that was a quarter of an encode. Here it
    is one ``torch.searchsorted``: the index of the first table scale not below
    the (lower-bounded) scale, which is exactly CompressAI's result. Same state
    dict, same likelihoods, same bitstreams.
    """

    #: The ``entropy_model`` option's value for this conditional.
    kind = "gaussian"

    # -- what h_s predicts for it (the entropy_model option) ---------------------

    def params_per_element(self, with_means: bool) -> int:
        """Channels of ``h_s``'s output per latent channel: ``s, mu`` (2) or ``s`` (1)."""
        return 2 if with_means else 1

    def conditional_params(self, h: Tensor, with_means: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """``(scales, means)`` of :meth:`forward` / :meth:`build_indexes` from ``h_s``'s output ``h``."""
        if with_means:
            scales, means = h.chunk(2, 1)
            return scales, means
        return h, None

    def widen_gaussian(self, t: Tensor, dim: int, with_means: bool, spread: float) -> Tensor:
        """``h_s``'s last-layer weight or bias ``t`` of a Gaussian model in this layout
        (channel axis ``dim``), so that this model starts as that Gaussian: unchanged here."""
        return t

    def build_indexes(self, scales: Tensor) -> Tensor:
        scales = self.lower_bound_scale(scales)
        return torch.searchsorted(self.scale_table[:-1].contiguous(), scales.contiguous(), out_int32=True)

    # CompressAI converts the whole padded CDF table to Python lists at every compress /
    # decompress call (with 256 scales: 256 rows of ~3,000 entries, ~15 ms). The table only
    # changes in update() or when a state dict is loaded, so the lists are built once then,
    # each row cut to its CDF length (the coder reads no further).

    def update(self):
        self.__dict__.pop("_coder_lists", None)
        return super().update()

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_coder_lists", None)
        super()._load_from_state_dict(*args, **kwargs)

    def coder_tables(self) -> Tuple[List[List[int]], List[int], List[int]]:
        """``(cdfs, cdf_lengths, offsets)`` as the rANS coder takes them (cached)."""
        lists = self.__dict__.get("_coder_lists")
        if lists is None:
            self._check_cdf_size()
            self._check_cdf_length()
            self._check_offsets_size()
            lengths = self._cdf_length.reshape(-1).int().tolist()
            cdfs = [row[:n] for row, n in zip(self._quantized_cdf.tolist(), lengths)]
            lists = (cdfs, lengths, self._offset.reshape(-1).int().tolist())
            self.__dict__["_coder_lists"] = lists
        return lists

    def _coder_args(self, indexes: Tensor) -> Tuple[np.ndarray, List[List[int]], List[int], List[int]]:
        """``(indexes, cdfs, cdf_lengths, offsets)`` of one image for the rANS coder (the
        indexes as a flat ``int32`` array: :func:`gainedvae.rans.encode_symbols` hands them to
        the coder a slice at a time)."""
        return (indexes.reshape(-1).int().numpy(), *self.coder_tables())

    def compact_coder_args(self, indexes: Tensor) -> Tuple[List[int], List[List[int]], List[int], List[int]]:
        """``(indexes, cdfs, cdf_lengths, offsets)`` with only the CDFs ``indexes`` use, renumbered
        (the coder converts every CDF handed to it on every call: the context models'
        per-position calls would pay for the whole table each time). Same symbols as the full table."""
        cdfs, lengths, offsets = self.coder_tables()
        unique, inverse = torch.unique(indexes.reshape(-1), return_inverse=True)
        used = unique.tolist()
        return inverse.tolist(), [cdfs[u] for u in used], [lengths[u] for u in used], [offsets[u] for u in used]

    def compress(self, inputs: Tensor, indexes: Tensor, means: Optional[Tensor] = None) -> List[bytes]:
        """As :meth:`EntropyModel.compress` (same bytes), with the cached coder tables and the
        symbols coded in slices (:func:`gainedvae.rans.encode_symbols`: bounded Python lists)."""
        if inputs.dim() < 2:
            raise ValueError("Invalid `inputs` size. Expected a tensor with at least 2 dimensions.")
        if inputs.size() != indexes.size():
            raise ValueError("`inputs` and `indexes` should have the same size.")
        symbols = self.quantize(inputs, "symbols", means)
        return [
            encode_symbols(symbols[i].reshape(-1).int().cpu().numpy(), *self._coder_args(indexes[i].cpu()))
            for i in range(symbols.size(0))
        ]

    def decompress(self, strings, indexes: Tensor, dtype: torch.dtype = torch.float, means: Optional[Tensor] = None):
        """As :meth:`EntropyModel.decompress` (same values), with the cached coder tables and the
        symbols decoded in slices (:func:`gainedvae.rans.decode_symbols`: bounded Python lists)."""
        _check_strings(strings, indexes.size(0))
        if indexes.dim() < 2:
            raise ValueError("Invalid `indexes` size. Expected a tensor with at least 2 dimensions.")
        if means is not None:
            if means.size()[:2] != indexes.size()[:2]:
                raise ValueError("Invalid means or indexes parameters")
            if means.size() != indexes.size() and any(means.size(i) != 1 for i in range(2, indexes.dim())):
                raise ValueError("Invalid means parameters")
        outputs = torch.empty(indexes.size(), dtype=torch.int32)
        for i, s in enumerate(strings):
            values = decode_symbols(s, *self._coder_args(indexes[i].cpu()))
            outputs[i] = torch.from_numpy(values).reshape(outputs[i].size())
        return self.dequantize(outputs.to(indexes.device), means, dtype)


def use_table_conditional(model: nn.Module) -> None:
    """Give ``model`` a :class:`TableGaussianConditional` in place of a plain CompressAI one."""
    old = getattr(model, "gaussian_conditional", None)
    if type(old) is GaussianConditional:
        new = TableGaussianConditional(None)
        new.load_state_dict(old.state_dict(), strict=False)
        model.gaussian_conditional = new


class AsymmetricGaussianConditional(TableGaussianConditional):
    """Asymmetric (split) Gaussian conditional; see the module docstring.

    ``scales`` everywhere is the packed ``cat(left, right)`` tensor (``2M``
    channels); ``means`` as in :class:`GaussianConditional`.
    """

    kind = "asymmetric"

    def __init__(self, scale_table: Optional[Sequence[float]] = None, **kwargs):
        super().__init__(scale_table, **kwargs)
        self._pair_cache: Dict[int, Tuple[List[int], int]] = {}

    # -- what h_s predicts ----------------------------------------------------

    def params_per_element(self, with_means: bool) -> int:
        """``s_l, s_r, mu`` (3) or ``s_l, s_r`` (2; mode at 0)."""
        return 3 if with_means else 2

    def conditional_params(self, h: Tensor, with_means: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """``(cat(s_l, s_r), means)`` from ``h = cat(s_l, s_r, mu)`` (or ``cat(s_l, s_r)``)."""
        if with_means:
            left, right, means = h.chunk(3, 1)
            return torch.cat((left, right), 1), means
        return h, None

    def widen_gaussian(self, t: Tensor, dim: int, with_means: bool, spread: float) -> Tensor:
        """The Gaussian's ``s`` as both ``s_l`` and ``s_r``: the same likelihood bit for bit."""
        scales, means = t.chunk(2, dim) if with_means else (t, None)
        return torch.cat((scales, scales) + ((means,) if with_means else ()), dim)

    # -- likelihood ---------------------------------------------------------

    def _likelihood(self, inputs: Tensor, scales: Tensor, means: Optional[Tensor] = None) -> Tensor:
        left, right = scales.chunk(2, 1)
        left = self.lower_bound_scale(left)
        right = self.lower_bound_scale(right)
        values = inputs - means if means is not None else inputs
        # Reflect to u = -|v| <= 0: the split normal (s_l, s_r) at v > 0 is the
        # one with (s_r, s_l) at -v. Written so that s_l == s_r reproduces
        # GaussianConditional._likelihood bit for bit.
        positive = values > 0
        near = torch.where(positive, right, left)  # scale on u's side of the mode
        far = torch.where(positive, left, right)
        total = near + far
        u = -torch.abs(values)
        upper_x = u + 0.5
        lower_x = u - 0.5
        upper = torch.where(
            upper_x <= 0,
            (2 * near / total) * self._standardized_cumulative(upper_x / near),
            (2 * far / total) * self._standardized_cumulative(upper_x / far) + (near - far) / total,
        )
        lower = (2 * near / total) * self._standardized_cumulative(lower_x / near)
        return upper - lower

    # -- tables -------------------------------------------------------------

    def update(self):
        """Tabulate the per-scale support (``_offset = -ceil(scale * 6.1)``); pair CDFs are built lazily."""
        multiplier = -self._standardized_quantile(self.tail_mass / 2)
        centre = torch.ceil(self.scale_table * multiplier).int()
        self._offset = -centre
        self._cdf_length = 2 * centre + 3
        self._quantized_cdf = torch.zeros(0, dtype=torch.int32, device=centre.device)
        self._pair_cache = {}

    def _load_from_state_dict(self, *args, **kwargs):
        self._pair_cache = {}  # a loaded scale table invalidates the pair CDFs
        super()._load_from_state_dict(*args, **kwargs)

    @property
    def table_size(self) -> int:
        return int(self.scale_table.numel())

    def build_indexes(self, scales: Tensor) -> Tensor:
        """CDF index ``T * i_left + i_right`` (``T`` scales in the table) per element."""
        left, right = scales.chunk(2, 1)
        return super().build_indexes(left) * self.table_size + super().build_indexes(right)

    def _pair_cdf(self, index: int) -> Tuple[List[int], int]:
        """(quantised CDF, offset) of one scale pair, built once and cached."""
        hit = self._pair_cache.get(index)
        if hit is not None:
            return hit
        if self._offset.numel() == 0:
            raise ValueError("Uninitialized CDFs. Run update() first")
        il, ir = divmod(index, self.table_size)
        sl = float(self.scale_table[il])
        sr = float(self.scale_table[ir])
        cl = -int(self._offset[il])
        cr = -int(self._offset[ir])
        k = torch.arange(-cl, cr + 1, dtype=torch.float64)
        total = sl + sr

        def cdf(x: Tensor) -> Tensor:
            phi_l = self._standardized_cumulative(torch.clamp(x, max=0) / sl)
            phi_r = self._standardized_cumulative(-torch.clamp(x, min=0) / sr)
            return torch.where(x <= 0, (2 * sl / total) * phi_l, 1 - (2 * sr / total) * phi_r)

        pmf = cdf(k + 0.5) - cdf(k - 0.5)
        tail = (2 * sl / total) * self._standardized_cumulative(torch.tensor((-cl - 0.5) / sl, dtype=torch.float64))
        tail = tail + (2 * sr / total) * self._standardized_cumulative(torch.tensor((-cr - 0.5) / sr, dtype=torch.float64))
        quantized = _pmf_to_quantized_cdf(pmf.tolist() + [float(tail)], self.entropy_coder_precision)
        entry = (quantized, -cl)
        self._pair_cache[index] = entry
        return entry

    def _coder_args(self, indexes: Tensor):
        """Compact CDF list for the pairs in ``indexes`` (the coding path of
        :class:`TableGaussianConditional` with these instead of its table)."""
        unique, inverse = torch.unique(indexes.reshape(-1), return_inverse=True)
        entries = [self._pair_cdf(int(u)) for u in unique.tolist()]
        cdfs = [e[0] for e in entries]
        return inverse.int().numpy(), cdfs, [len(c) for c in cdfs], [e[1] for e in entries]


class GMMConditional(GaussianMixtureConditional):
    """Discretised Gaussian mixture (K components); see the module docstring.

    Args:
        K: number of mixture components (3 in Cheng et al.)
        window_cap: largest half width of the per-element CDF window; symbols
            further from their mixture mean are escape-coded by rANS
    """

    #: CDF entries per chunk handed to the rANS coder (bounds memory).
    chunk_entries = 2**20

    def __init__(self, K: int = 3, scale_table: Optional[Sequence[float]] = None, window_cap: int = 128, **kwargs):
        if K < 1:
            raise ValueError(f"a mixture needs K >= 1 components, got {K}")
        if not 1 <= window_cap <= 65535:
            raise ValueError(f"window_cap must be in [1, 65535], got {window_cap}")
        super().__init__(K, scale_table, **kwargs)
        self.window_cap = int(window_cap)

    kind = "gmm"

    def update(self):
        """Nothing to tabulate: the CDFs are built per element at coding time."""

    # -- what h_s predicts ----------------------------------------------------

    def params_per_element(self, with_means: bool) -> int:
        """``logits, mu, s`` of ``K`` components (``3K``) or ``logits, s`` (``2K``; all means 0)."""
        return 3 * self.K if with_means else 2 * self.K

    def conditional_params(self, h: Tensor, with_means: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """``(packed, None)``: the packed ``cat(logits, means, scales)`` go where the
        Gaussian's scales go (means are zero without ``with_means``)."""
        if with_means:
            return h, None
        logits, scales = h.chunk(2, 1)
        return torch.cat((logits, torch.zeros_like(scales), scales), 1), None

    def widen_gaussian(self, t: Tensor, dim: int, with_means: bool, spread: float) -> Tensor:
        """``K`` copies of the Gaussian's mean and scale with equal weights (zero logits);
        component ``k``'s scale times ``spread ** (k - (K - 1) / 2)`` (identical components
        would stay identical under gradient descent; ``spread = 1`` keeps the Gaussian exactly)."""
        K = self.K
        scales, means = t.chunk(2, dim) if with_means else (t, None)
        logits = torch.zeros_like(torch.cat([scales] * K, dim))
        scale_k = torch.cat([scales * spread ** (k - (K - 1) / 2) for k in range(K)], dim)
        return torch.cat((logits, torch.cat([means] * K, dim), scale_k) if with_means else (logits, scale_k), dim)

    # -- parameters ---------------------------------------------------------

    def split_params(self, params: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(scales, means, weights)`` from the packed ``(B, 3KM, ...)`` parameters."""
        if params.size(1) % (3 * self.K):
            raise ValueError(f"GMM parameters need 3*K*M channels (K={self.K}), got {params.size(1)}")
        logits, means, scales = params.chunk(3, 1)
        shape = logits.shape
        weights = F.softmax(logits.reshape(shape[0], self.K, -1, *shape[2:]), dim=1).reshape(shape)
        return scales, means, weights

    def flat_params(self, params: Tensor, channels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(K, n)`` scales, means, weights of one image's elements in ``channels``, (c, h, w) order."""
        scales, means, weights = self.split_params(params)
        K = self.K

        def flat(t: Tensor) -> Tensor:
            return t.reshape(K, t.size(1) // K, -1)[:, channels].reshape(K, -1)

        return flat(scales), flat(means), flat(weights)

    @staticmethod
    def centres(means: Tensor, weights: Tensor) -> Tensor:
        """Rounded mixture mean of each element (``(K, n)`` -> ``(n,)``)."""
        return torch.round((weights * means).sum(0))

    def element_cdfs(self, scales: Tensor, means: Tensor, weights: Tensor, centres: Tensor, window: int) -> Tensor:
        """``(n, 2*window + 3)`` quantised CDFs over ``centre - window .. centre + window`` (+ escape)."""
        return self._build_cdf(scales.clone(), means - centres, weights, window)

    # -- likelihood -----------------------------------------------------------

    def forward(self, inputs: Tensor, scales: Tensor, means: Optional[Tensor] = None, training: Optional[bool] = None):
        """``(round(y) or y + noise, likelihoods)``; ``scales`` are the packed parameters."""
        if means is not None:
            raise ValueError("the GMM takes its means from the packed parameters; pass means=None")
        s, m, w = self.split_params(scales)
        return super().forward(inputs, s, m, w, training)

    def build_indexes(self, scales: Tensor) -> Tensor:
        """The per-element coder needs all parameters: the "indexes" are the packed parameters."""
        return scales

    # -- bitstream ------------------------------------------------------------

    def header(self, window: int, nonzero: Tensor) -> bytes:
        bits = np.packbits(nonzero.cpu().numpy().astype(bool))
        return struct.pack("<H", window) + bits.tobytes()

    def read_header(self, string: bytes, channels: int) -> Tuple[int, Tensor, bytes]:
        n_bitmap = (channels + 7) // 8
        if not isinstance(string, (bytes, bytearray)) or len(string) < 2 + n_bitmap:
            raise ValueError("GMM bitstream is truncated")
        (window,) = struct.unpack("<H", string[:2])
        if not 1 <= window <= self.window_cap:  # the encoder never writes more: refuse absurd CDF sizes
            raise ValueError(f"corrupt GMM bitstream: window {window} outside [1, {self.window_cap}]")
        bits = np.unpackbits(np.frombuffer(string[2 : 2 + n_bitmap], dtype=np.uint8))[:channels]
        return window, torch.from_numpy(bits.astype(bool)), string[2 + n_bitmap :]

    def window_for(self, residual: Tensor) -> int:
        peak = int(residual.abs().max().item()) if residual.numel() else 0
        return max(1, min(peak, self.window_cap))

    def _chunks(self, n: int, window: int):
        return chunks(n, max(1, self.chunk_entries // (2 * window + 3)))

    def encode_elements(self, encoder, symbols: Tensor, params, centres: Tensor, window: int) -> None:
        """Queue the ``symbols`` (``round(y) - centre + window``, shape ``(n,)``) of ``n``
        elements with mixture parameters ``params = (scales, means, weights)`` (each
        ``(K, n)``) on a :class:`~compressai.ans.BufferedRansEncoder`, one CDF per element
        (:meth:`element_cdfs`, built in chunks of about :attr:`chunk_entries` entries)."""
        s, m, w = params
        for a, b in self._chunks(centres.numel(), window):
            cdf = self.element_cdfs(s[:, a:b], m[:, a:b], w[:, a:b], centres[a:b], window)
            n = b - a
            encoder.encode_with_indexes(symbols[a:b].tolist(), list(range(n)), cdf.tolist(), [cdf.size(1)] * n, [0] * n)

    def decode_elements(self, decoder, params, centres: Tensor, window: int) -> Tensor:
        """The ``round(y)`` of ``n`` elements from ``decoder`` (:func:`~gainedvae.rans.rans_decoder`):
        the inverse of :meth:`encode_elements` with the same parameters."""
        s, m, w = params
        values: List[int] = []
        for a, b in self._chunks(centres.numel(), window):
            cdf = self.element_cdfs(s[:, a:b], m[:, a:b], w[:, a:b], centres[a:b], window)
            n = b - a
            values.extend(decoder.decode_stream(list(range(n)), cdf.tolist(), [cdf.size(1)] * n, [0] * n))
        return torch.tensor(values, dtype=centres.dtype) - window + centres

    def encode_image(self, nonzero: Tensor, values: Sequence[Tensor], params: Sequence[Tuple[Tensor, Tensor, Tensor]]) -> bytes:
        """One image's byte string: :meth:`header` (window, bitmap of the ``nonzero``
        channels), then the rANS stream of the groups of elements ``j`` in order
        (``values[j]``: their ``round(y)``, ``(n_j,)``; ``params[j]``: their ``(K, n_j)``
        mixture parameters). The hyperprior codes the whole latent as one group, the
        context model one group per position (the decoder's order)."""
        centres = [self.centres(m, w) for _, m, w in params]
        residual = torch.cat([v - c for v, c in zip(values, centres)])
        check_latent(residual, "GMM residual")
        window = self.window_for(residual)
        symbols = (residual + window).int()
        encoder = BufferedRansEncoder()
        start = 0
        for p, c in zip(params, centres):
            self.encode_elements(encoder, symbols[start : start + c.numel()], p, c, window)
            start += c.numel()
        # (an all-zero latent has no symbols: no stream; flushing an empty rANS encoder crashes)
        return self.header(window, nonzero) + (encoder.flush() if residual.numel() else b"")

    def compress(self, inputs: Tensor, indexes: Tensor, means: Optional[Tensor] = None) -> List[bytes]:
        """One self-contained byte string per image; ``indexes`` are the packed parameters."""
        if means is not None:
            raise ValueError("the GMM takes its means from the packed parameters; pass means=None")
        y_round = torch.round(inputs)
        strings = []
        for i in range(inputs.size(0)):
            nonzero = y_round[i].reshape(y_round.size(1), -1).abs().sum(1) != 0
            channels = torch.nonzero(nonzero).flatten()
            params = self.flat_params(indexes[i : i + 1], channels)
            strings.append(self.encode_image(nonzero, [y_round[i, channels].reshape(-1)], [params]))
        return strings

    def decompress(
        self,
        strings: List[bytes],
        indexes: Tensor,
        dtype: torch.dtype = torch.float,
        means: Optional[Tensor] = None,
    ) -> Tensor:
        if means is not None:
            raise ValueError("the GMM takes its means from the packed parameters; pass means=None")
        _check_strings(strings, indexes.size(0))
        B, C = indexes.shape[:2]
        M = C // (3 * self.K)
        y_hat = torch.zeros((B, M, *indexes.shape[2:]), dtype=dtype, device=indexes.device)
        for i, string in enumerate(strings):
            window, nonzero, stream = self.read_header(string, M)
            channels = torch.nonzero(nonzero).flatten()
            params = self.flat_params(indexes[i : i + 1], channels)
            centres = self.centres(params[1], params[2])
            decoder = rans_decoder(stream, centres.numel()) if centres.numel() else None
            decoded = self.decode_elements(decoder, params, centres, window)
            y_hat[i, channels.to(y_hat.device)] = decoded.reshape(channels.numel(), *indexes.shape[2:]).to(dtype)
        return y_hat


# ---------------------------------------------------------------------------
# the entropy_model option of the hyperprior models


#: Values of the ``entropy_model`` option of the gained hyperprior models -> their conditional.
CONDITIONALS = {
    "gaussian": TableGaussianConditional,
    "asymmetric": AsymmetricGaussianConditional,
    "gmm": GMMConditional,
}
ENTROPY_MODELS = tuple(CONDITIONALS)


def _last_conv(seq: nn.Sequential) -> int:
    """Index of the last (transposed) convolution of ``seq``."""
    for i in range(len(seq) - 1, -1, -1):
        if isinstance(seq[i], (nn.Conv2d, nn.ConvTranspose2d)):
            return i
    raise ValueError("h_s has no convolution to widen")


def _widen_last_conv(seq: nn.Sequential, out_channels: int) -> None:
    """Replace the last (transposed) convolution of ``seq`` by one with ``out_channels`` outputs."""
    i = _last_conv(seq)
    old = seq[i]
    if isinstance(old, nn.ConvTranspose2d):
        seq[i] = nn.ConvTranspose2d(old.in_channels, out_channels, old.kernel_size, old.stride, old.padding,
                                    old.output_padding)
    else:
        seq[i] = nn.Conv2d(old.in_channels, out_channels, old.kernel_size, old.stride, old.padding)


def configure_entropy_model(model: nn.Module, kind: str, M: int, K: int = 3) -> None:
    """Give a hyperprior model (``h_s``, ``gaussian_conditional``, ``entropy_with_means``)
    the entropy model ``kind`` (a key of :data:`CONDITIONALS`).

    ``"gaussian"`` leaves the CompressAI backbone untouched. The others widen
    the last layer of ``h_s`` to the parameters they need per latent element
    (their ``params_per_element``) and replace ``gaussian_conditional`` (the
    attribute name stays, so the data flow and CompressAI's ``update()`` work
    unchanged):

    ========== ============================ ==================================
    kind       ``h_s`` output, with means   without means (scale hyperprior)
    ========== ============================ ==================================
    gaussian   ``s, mu`` (2M)               ``s`` (M)
    asymmetric ``s_l, s_r, mu`` (3M)         ``s_l, s_r`` (2M), mode at 0
    gmm        ``logits, mu, s`` (3KM)       ``logits, s`` (2KM), all means 0
    ========== ============================ ==================================
    """
    if kind not in CONDITIONALS:
        raise ValueError(f"entropy_model must be one of {', '.join(ENTROPY_MODELS)}; got {kind!r}")
    if kind == "gaussian":
        return
    conditional = GMMConditional(K) if kind == "gmm" else CONDITIONALS[kind](None)
    _widen_last_conv(model.h_s, conditional.params_per_element(model.entropy_with_means) * M)
    model.gaussian_conditional = conditional


#: Levels of the scale table behind every Gaussian CDF table (CompressAI's range 0.11 .. 256,
#: log-spaced). The coder rounds each predicted scale up to the next entry, which costs bits;
#: CompressAI's default of 64 levels cost 1.6 % over the estimated bits at quality 1 of the
#: shipped model on Kodak (3 images: real / estimated y bits 1.0164 with 64 levels, 1.0069 with
#: 128, 1.0035 with 256). Every model gainedvae loads or updates uses this table, the CompressAI
#: baselines included, so that comparisons stay equal.
SCALE_TABLE_LEVELS = 256


def scale_table() -> Tensor:
    """The scale table of every Gaussian conditional coded by gainedvae (see SCALE_TABLE_LEVELS).

    CompressAI's ``get_scale_table`` values (log-spaced from 0.11 to 256), but computed
    exactly (:func:`gainedvae.exact.exact_log_spaced`: correctly rounded decimal
    ``ln`` / ``exp``, then float32) instead of with ``torch.exp``, whose vectorised
    and scalar kernels differ in the last bit (measured: 62 of the 256 float32
    entries change under ``ATEN_CPU_CAPABILITY=default``, and with them the CDFs
    and the table indexes of the decoder). The table decides which CDF codes a
    latent, so it must be the same on every machine.
    """
    global _SCALE_TABLE
    if _SCALE_TABLE is None:
        _SCALE_TABLE = torch.tensor(exact_log_spaced(0.11, 256.0, SCALE_TABLE_LEVELS), dtype=torch.float32)
    return _SCALE_TABLE.clone()


_SCALE_TABLE: Optional[Tensor] = None


def update_entropy_tables(net: nn.Module, force: bool = True) -> bool:
    """``net.update()`` with gainedvae's scale table, for gained and CompressAI models alike."""
    return net.update(scale_table=scale_table(), force=force)


def widen_gaussian_state(model: nn.Module, state_dict: Dict[str, Tensor], spread: float = 2**0.25) -> Dict[str, Tensor]:
    """A Gaussian hyperprior's state dict, rewritten for ``model``'s wider entropy model.

    The last layer of ``h_s`` is rewritten by the conditional's ``widen_gaussian``
    so that the model starts as the Gaussian it comes from (a shared start for the
    entropy-model ablation): the asymmetric model gets ``s_l = s_r = s``, the GMM
    ``K`` copies of the mean and of the scale with equal weights, component ``k``'s
    scale times ``spread ** (k - (K - 1) / 2)`` (the one departure from the
    Gaussian; ``spread=1`` keeps it exact). Returns the state dict unchanged when
    it already fits or is not a Gaussian one (the caller's strict loading then
    reports the mismatch).
    """
    cond = model.gaussian_conditional
    if cond.kind == "gaussian":
        return state_dict
    i = _last_conv(model.h_s)
    dim = 1 if isinstance(model.h_s[i], nn.ConvTranspose2d) else 0
    wkey, bkey = f"h_s.{i}.weight", f"h_s.{i}.bias"
    with_means = model.entropy_with_means
    M = model.h_s[i].weight.shape[dim] // cond.params_per_element(with_means)
    w, b = state_dict.get(wkey), state_dict.get(bkey)
    if w is None or b is None or w.shape[dim] != (2 if with_means else 1) * M:  # not a Gaussian's s (, mu)
        return state_dict
    out = dict(state_dict)
    out[wkey], out[bkey] = cond.widen_gaussian(w, dim, with_means, spread), cond.widen_gaussian(b, 0, with_means, spread)
    return out
