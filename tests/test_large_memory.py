"""Bounded memory for large images (issue 20): what is tiled or sliced gives exactly the whole result."""

import copy

import numpy as np
import pytest
import torch
from compressai import ans

from gainedvae import codec, rans
from gainedvae.codec import CodecError
from gainedvae.tiling import HYPER_SYNTHESIS, Tiling, receptive_radius

from conftest import tiny_model


@pytest.mark.parametrize("name", ["gained-mbt2018-mean", "gained-bmshj2018-hyperprior"])
def test_tiled_fixed_point_hyper_synthesis_equals_the_whole_one(name):
    net = tiny_model(name).eval()
    h_s = copy.deepcopy(net.h_s).double()
    assert receptive_radius(h_s, h_s[0].in_channels, 24) <= HYPER_SYNTHESIS.halo
    z_hat = torch.round(torch.randn(1, h_s[0].in_channels, 7, 9) * 4)
    q = torch.tensor(2.5)
    net.hyper_synthesis_tiling = None
    whole = net._coding_params(z_hat, q)
    net.hyper_synthesis_tiling = Tiling(tile=2, halo=2, align=1, num=4, den=1)
    assert torch.equal(net._coding_params(z_hat, q), whole)


def _tables(net):
    return net.gaussian_conditional.coder_tables()


def test_sliced_rans_coding_is_one_compressai_call(monkeypatch):
    """encode_symbols / decode_symbols in slices of 7 symbols: the stream of one
    RansEncoder.encode_with_indexes call with all of them, decoded back exactly."""
    cdfs, lengths, offsets = _tables(tiny_model())
    rng = np.random.default_rng(3)
    n = 1000
    indexes = rng.integers(0, len(cdfs), n).astype(np.int32)
    symbols = np.round(rng.normal(0, 8, n)).astype(np.int32)
    whole = ans.RansEncoder().encode_with_indexes(symbols.tolist(), indexes.tolist(), cdfs, lengths, offsets)
    monkeypatch.setattr(rans, "CHUNK_SYMBOLS", 7)
    assert rans.encode_symbols(symbols, indexes, cdfs, lengths, offsets) == whole
    assert np.array_equal(rans.decode_symbols(whole, indexes, cdfs, lengths, offsets), symbols)


@pytest.mark.parametrize("entropy_model", ["gaussian", "asymmetric"])
def test_sliced_coding_writes_the_same_file(monkeypatch, entropy_model):
    net = tiny_model(entropy_model=entropy_model).eval()
    img = (np.random.default_rng(4).random((40, 72, 3)) * 255).astype(np.uint8)
    data = codec.encode(net, img, 3.0)
    x_hat = codec.decode(net, data)
    monkeypatch.setattr(rans, "CHUNK_SYMBOLS", 7)
    assert codec.encode(net, img, 3.0) == data
    assert torch.equal(codec.decode(net, data), x_hat)


def test_sliced_guards_keep_their_messages(monkeypatch):
    cdfs, lengths, offsets = _tables(tiny_model())
    monkeypatch.setattr(rans, "CHUNK_SYMBOLS", 7)
    n = 100
    indexes = np.zeros(n, dtype=np.int32)
    with pytest.raises(CodecError, match="far outside"):
        rans.encode_symbols(np.full(n, 1 << 27, np.int32), indexes, cdfs, lengths, offsets)
    with pytest.raises(CodecError, match=f"needs about .* bytes for {n} symbols"):
        rans.encode_symbols(np.full(n, (1 << 26) + 12345, np.int32), indexes, cdfs, lengths, offsets)
    widest = np.full(n, len(cdfs) - 1, np.int32)  # the largest scale: bits per symbol at the least
    with pytest.raises(CodecError, match=f"cannot code {n} latent symbols"):
        rans.decode_symbols(b"\x00" * 8, widest, cdfs, lengths, offsets)


@pytest.mark.parametrize("shape", [(40, 72), (37, 101)])
def test_decode_image_gives_the_pixels_of_decode(shape):
    """Small forced tiles (several, cropped at the padding, converted to 8 bits one by one)."""
    net = tiny_model().eval()
    net.synthesis_tiling = Tiling(tile=1, halo=4, align=1, num=16, den=1)
    img = (np.random.default_rng(6).random((*shape, 3)) * 255).astype(np.uint8)
    data = codec.encode(net, img, 2.0)
    image = codec.decode_image(net, data)
    assert image.dtype == np.uint8 and image.shape == (*shape, 3)
    assert np.array_equal(image, codec.tensor_to_image(codec.decode(net, data)))
    net.synthesis_tiling = None  # whole: the same pixels again
    assert np.array_equal(codec.decode_image(net, data), image)


@pytest.mark.parametrize("tiles", [None, Tiling(tile=1, halo=4, align=1, num=16, den=1)])
def test_decode_image_refuses_a_non_finite_decode(monkeypatch, tiles):
    net = tiny_model().eval()
    data = codec.encode(net, np.zeros((32, 40, 3), np.uint8), 2.0)
    net.synthesis_tiling = tiles
    nan = lambda y: torch.full((1, 3, 16 * y.shape[-2], 16 * y.shape[-1]), float("nan"))  # noqa: E731
    monkeypatch.setattr(net.g_s, "forward", nan)
    with pytest.raises(CodecError, match="non-finite"):
        codec.decode(net, data)
    with pytest.raises(CodecError, match="non-finite"):
        codec.decode_image(net, data)
