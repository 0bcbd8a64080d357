"""The rANS guards' symbol limit (gainedvae.rans.MAX_SYMBOL) is what CompressAI's encoder can code."""

import pytest
from compressai.ans import RansDecoder, RansEncoder

from gainedvae import entropy, rans
from gainedvae.container import CodecError

CDF = [[0, 1 << 15, 1 << 16]]  # symbols 0 and 1; everything else is escape-coded


def test_the_largest_accepted_symbol_codes_and_decodes():
    n = 2000  # enough zeros for the escape's bits to fit the encoder's buffer
    for big in (rans.MAX_SYMBOL - 1, -(rans.MAX_SYMBOL - 1)):
        symbols = [0] * n + [big]
        rans.check_encodable(symbols, [0] * (n + 1), CDF, [3], [0])
        stream = RansEncoder().encode_with_indexes(symbols, [0] * (n + 1), CDF, [3], [0])
        assert RansDecoder().decode_with_indexes(stream, [0] * (n + 1), CDF, [3], [0])[-1] == big


@pytest.mark.parametrize("big", [1 << 27, -(1 << 27), 1 << 28, 1 << 29])
def test_symbols_that_would_hang_the_encoder_are_refused(big):
    """From 2**27 on, CompressAI's escape loop never ends (measured); the two former limits,
    2**28 for latents and 2**29 for symbols, let such symbols through."""
    with pytest.raises(CodecError, match="far outside"):
        rans.check_encodable([0] * 2000 + [big], [0] * 2001, CDF, [3], [0])
    import torch

    with pytest.raises(ValueError, match="far outside"):
        entropy.check_latent(torch.tensor([float(big)]))
