"""Entropy models beyond CompressAI's Gaussian: asymmetric Gaussian and GMM.

Both are drop-in replacements for :class:`compressai.entropy_models.GaussianConditional`
inside a hyperprior's data flow: they are called exactly like it
(``cond(y, scales, means=...)``, ``cond.build_indexes(scales)``,
``cond.compress(y, indexes, means=...)``, ``cond.decompress(strings, indexes,
dtype, means=...)``), only ``scales`` carries more than one number per latent
element (the "packed" parameters below). A model switches with
``entropy_model="gaussian" | "asymmetric" | "gmm"`` (see :func:`configure_entropy_model`).
All of them code with CompressAI's rANS coder (:mod:`compressai.ans`).

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

from .rans import MAX_SYMBOL, rans_decoder

__all__ = [
    "ENTROPY_MODELS",
    "AsymmetricGaussianConditional",
    "GMMConditional",
    "check_latent",
    "configure_entropy_model",
    "split_entropy_params",
]

#: Values of the ``entropy_model`` option of the gained hyperprior models.
ENTROPY_MODELS = ("gaussian", "asymmetric", "gmm")


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

    def build_indexes(self, scales: Tensor) -> Tensor:
        scales = self.lower_bound_scale(scales)
        return torch.searchsorted(self.scale_table[:-1].contiguous(), scales.contiguous()).int()

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

    def _coder_args(self, indexes: Tensor) -> Tuple[List[int], List[List[int]], List[int], List[int]]:
        """``(indexes, cdfs, cdf_lengths, offsets)`` of one image for the rANS coder."""
        return (indexes.reshape(-1).int().tolist(), *self.coder_tables())

    def compress(self, inputs: Tensor, indexes: Tensor, means: Optional[Tensor] = None) -> List[bytes]:
        """As :meth:`EntropyModel.compress` (same bytes), with the cached coder tables."""
        if inputs.dim() < 2:
            raise ValueError("Invalid `inputs` size. Expected a tensor with at least 2 dimensions.")
        if inputs.size() != indexes.size():
            raise ValueError("`inputs` and `indexes` should have the same size.")
        symbols = self.quantize(inputs, "symbols", means)
        return [
            self.entropy_coder.encode_with_indexes(symbols[i].reshape(-1).int().tolist(), *self._coder_args(indexes[i]))
            for i in range(symbols.size(0))
        ]

    def decompress(self, strings, indexes: Tensor, dtype: torch.dtype = torch.float, means: Optional[Tensor] = None):
        """As :meth:`EntropyModel.decompress` (same values), with the cached coder tables."""
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
            values = self.entropy_coder.decode_with_indexes(s, *self._coder_args(indexes[i]))
            outputs[i] = torch.tensor(values, dtype=torch.int32).reshape(outputs[i].size())
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

    def __init__(self, scale_table: Optional[Sequence[float]] = None, **kwargs):
        super().__init__(scale_table, **kwargs)
        self._pair_cache: Dict[int, Tuple[List[int], int]] = {}

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
        return inverse.int().tolist(), cdfs, [len(c) for c in cdfs], [e[1] for e in entries]


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

    def update(self):
        """Nothing to tabulate: the CDFs are built per element at coding time."""

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
        step = max(1, self.chunk_entries // (2 * window + 3))
        return [(a, min(n, a + step)) for a in range(0, n, step)]

    def compress(self, inputs: Tensor, indexes: Tensor, means: Optional[Tensor] = None) -> List[bytes]:
        """One self-contained byte string per image; ``indexes`` are the packed parameters."""
        if means is not None:
            raise ValueError("the GMM takes its means from the packed parameters; pass means=None")
        y_round = torch.round(inputs)
        strings = []
        for i in range(inputs.size(0)):
            nonzero = y_round[i].reshape(y_round.size(1), -1).abs().sum(1) != 0
            channels = torch.nonzero(nonzero).flatten()
            s, m, w = self.flat_params(indexes[i : i + 1], channels)
            centres = self.centres(m, w)
            residual = y_round[i, channels].reshape(-1) - centres
            check_latent(residual, "GMM residual")
            window = self.window_for(residual)
            symbols = (residual + window).int()
            encoder = BufferedRansEncoder()
            for a, b in self._chunks(centres.numel(), window):
                cdf = self.element_cdfs(s[:, a:b], m[:, a:b], w[:, a:b], centres[a:b], window)
                n = b - a
                encoder.encode_with_indexes(symbols[a:b].tolist(), list(range(n)), cdf.tolist(), [cdf.size(1)] * n, [0] * n)
            # (an all-zero latent has no symbols: no stream; flushing an empty rANS encoder crashes)
            strings.append(self.header(window, nonzero) + (encoder.flush() if centres.numel() else b""))
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
            s, m, w = self.flat_params(indexes[i : i + 1], channels)
            centres = self.centres(m, w)
            decoder = rans_decoder(stream, centres.numel()) if centres.numel() else None
            values = []
            for a, b in self._chunks(centres.numel(), window):
                cdf = self.element_cdfs(s[:, a:b], m[:, a:b], w[:, a:b], centres[a:b], window)
                n = b - a
                values.extend(decoder.decode_stream(list(range(n)), cdf.tolist(), [cdf.size(1)] * n, [0] * n))
            decoded = torch.tensor(values, dtype=centres.dtype) - window + centres
            y_hat[i, channels.to(y_hat.device)] = decoded.reshape(channels.numel(), *indexes.shape[2:]).to(dtype)
        return y_hat


# ---------------------------------------------------------------------------
# the entropy_model option of the hyperprior models


def _params_per_element(kind: str, with_means: bool, K: int) -> int:
    if kind == "gaussian":
        return 2 if with_means else 1
    if kind == "asymmetric":
        return 3 if with_means else 2
    return 3 * K if with_means else 2 * K


def _widen_last_conv(seq: nn.Sequential, out_channels: int) -> None:
    """Replace the last (transposed) convolution of ``seq`` by one with ``out_channels`` outputs."""
    for i in range(len(seq) - 1, -1, -1):
        old = seq[i]
        if isinstance(old, nn.ConvTranspose2d):
            seq[i] = nn.ConvTranspose2d(
                old.in_channels, out_channels, old.kernel_size, old.stride, old.padding, old.output_padding
            )
            return
        if isinstance(old, nn.Conv2d):
            seq[i] = nn.Conv2d(old.in_channels, out_channels, old.kernel_size, old.stride, old.padding)
            return
    raise ValueError("h_s has no convolution to widen")


def configure_entropy_model(model: nn.Module, kind: str, M: int, with_means: bool, K: int = 3) -> None:
    """Give a hyperprior model (``h_s``, ``gaussian_conditional``) the entropy model ``kind``.

    ``"gaussian"`` leaves the CompressAI backbone untouched. The others widen
    the last layer of ``h_s`` to the parameters they need per latent element
    and replace ``gaussian_conditional`` (the attribute name stays, so the
    data flow and CompressAI's ``update()`` work unchanged):

    ========== ============================ ==================================
    kind       ``h_s`` output, with means   without means (scale hyperprior)
    ========== ============================ ==================================
    asymmetric ``s_l, s_r, mu`` (3M)         ``s_l, s_r`` (2M), mode at 0
    gmm        ``logits, mu, s`` (3KM)       ``logits, s`` (2KM), all means 0
    ========== ============================ ==================================
    """
    if kind not in ENTROPY_MODELS:
        raise ValueError(f"entropy_model must be one of {', '.join(ENTROPY_MODELS)}; got {kind!r}")
    model.entropy_model = kind
    model._entropy_with_means = bool(with_means)
    model._entropy_K = int(K)
    if kind == "gaussian":
        return
    _widen_last_conv(model.h_s, _params_per_element(kind, with_means, K) * M)
    model.gaussian_conditional = AsymmetricGaussianConditional(None) if kind == "asymmetric" else GMMConditional(K)


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
        from .exact import exact_log_spaced

        _SCALE_TABLE = torch.tensor(exact_log_spaced(0.11, 256.0, SCALE_TABLE_LEVELS), dtype=torch.float32)
    return _SCALE_TABLE.clone()


_SCALE_TABLE: Optional[Tensor] = None


def update_entropy_tables(net: nn.Module, force: bool = True) -> bool:
    """``net.update()`` with gainedvae's scale table, for gained and CompressAI models alike."""
    return net.update(scale_table=scale_table(), force=force)


def widen_gaussian_state(model: nn.Module, state_dict: Dict[str, Tensor], spread: float = 2**0.25) -> Dict[str, Tensor]:
    """A Gaussian hyperprior's state dict, rewritten for ``model``'s wider entropy model.

    The last layer of ``h_s`` is copied into the layout of :func:`split_entropy_params`
    so that the model starts as the Gaussian it comes from (a shared start for the
    entropy-model ablation): the asymmetric model gets ``s_l = s_r = s``, the GMM
    ``K`` copies of the mean and of the scale with equal weights (zero logits). The
    GMM's components would stay identical under gradient descent, so component
    ``k``'s scale is multiplied by ``spread ** (k - (K - 1) / 2)`` (the one
    departure from the Gaussian; ``spread=1`` keeps it exact). Returns the state dict
    unchanged when it already fits or is not a Gaussian one (the caller's strict
    loading then reports the mismatch).
    """
    kind = getattr(model, "entropy_model", "gaussian")
    if kind == "gaussian":
        return state_dict
    for i in range(len(model.h_s) - 1, -1, -1):
        layer = model.h_s[i]
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            break
    dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
    wkey, bkey = f"h_s.{i}.weight", f"h_s.{i}.bias"
    with_means = getattr(model, "_entropy_with_means", True)
    K = getattr(model, "_entropy_K", 3)
    M = layer.weight.shape[dim] // _params_per_element(kind, with_means, K)
    w, b = state_dict.get(wkey), state_dict.get(bkey)
    if w is None or b is None or w.shape[dim] != _params_per_element("gaussian", with_means, 1) * M:
        return state_dict

    def widen(t: Tensor, d: int) -> Tensor:
        scales, means = t.chunk(2, d) if with_means else (t, None)
        if kind == "asymmetric":
            return torch.cat((scales, scales) + ((means,) if with_means else ()), d)
        factors = [spread ** (k - (K - 1) / 2) for k in range(K)]
        logits = torch.zeros_like(torch.cat([scales] * K, d))
        scale_k = torch.cat([scales * f for f in factors], d)
        return torch.cat((logits, torch.cat([means] * K, d), scale_k) if with_means else (logits, scale_k), d)

    out = dict(state_dict)
    out[wkey], out[bkey] = widen(w, dim), widen(b, 0)
    return out


def split_entropy_params(model: nn.Module, h: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
    """``(scales, means)`` for ``model.gaussian_conditional`` from ``h_s``'s output ``h``.

    ``scales`` is packed for the asymmetric model (``cat(s_l, s_r)``) and the
    GMM (``cat(logits, means, scales)``, then ``means`` is ``None``).
    """
    kind = getattr(model, "entropy_model", "gaussian")
    with_means = getattr(model, "_entropy_with_means", True)
    if kind == "gaussian":
        if with_means:
            scales, means = h.chunk(2, 1)
            return scales, means
        return h, None
    if kind == "asymmetric":
        if with_means:
            left, right, means = h.chunk(3, 1)
            return torch.cat((left, right), 1), means
        return h, None
    if with_means:
        return h, None
    logits, scales = h.chunk(2, 1)
    return torch.cat((logits, torch.zeros_like(scales), scales), 1), None
