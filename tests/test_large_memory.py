"""Bounded memory for large images (issue 20): what is tiled or sliced gives exactly the whole result."""

import copy

import pytest
import torch

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
