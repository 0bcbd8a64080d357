import pytest
import torch
from compressai.models import MeanScaleHyperprior

from gainedvae.tiling import ANALYSIS, SYNTHESIS, Tiling, receptive_radius, tiled


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return MeanScaleHyperprior(8, 12).double().eval()


def test_receptive_fields_fit_the_default_halos(backbone):
    ra = receptive_radius(backbone.g_a, 3, 256)
    rs = receptive_radius(backbone.g_s, 12, 16)
    assert 16 <= ra <= 30 <= ANALYSIS.halo  # output j reads pixels 16j-30 .. 16j+30
    assert 1 <= rs <= 2 <= SYNTHESIS.halo


@pytest.mark.parametrize("shape", [(96, 160), (64, 48), (112, 112)])
def test_tiled_analysis_and_synthesis_equal_the_untiled_ones(backbone, shape):
    x = torch.rand(1, 3, *shape, dtype=torch.float64)
    small_a = Tiling(tile=32, halo=32, align=16, num=1, den=16)
    with torch.no_grad():
        y = backbone.g_a(x)
        torch.testing.assert_close(tiled(backbone.g_a, x, small_a), y, rtol=0, atol=1e-12)
        small_s = Tiling(tile=2, halo=4, align=1, num=16, den=1)
        torch.testing.assert_close(tiled(backbone.g_s, y, small_s), backbone.g_s(y), rtol=0, atol=1e-12)


def test_a_halo_below_the_receptive_field_changes_the_result(backbone):
    x = torch.rand(1, 3, 96, 96, dtype=torch.float64)
    with torch.no_grad():
        short = tiled(backbone.g_a, x, Tiling(tile=32, halo=16, align=16, num=1, den=16))
        assert (short - backbone.g_a(x)).abs().max() > 1e-6
        y = backbone.g_a(x)
        short = tiled(backbone.g_s, y, Tiling(tile=2, halo=0, align=1, num=16, den=1))
        assert (short - backbone.g_s(y)).abs().max() > 1e-6


def test_one_tile_is_passed_whole_and_bad_sizes_are_refused(backbone):
    calls = []
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    tiled(lambda t: calls.append(t.shape) or backbone.g_a(t), x, ANALYSIS)
    assert calls == [x.shape]
    with pytest.raises(ValueError, match="multiple of 16"):
        tiled(backbone.g_a, torch.rand(1, 3, 40, 64), ANALYSIS)
    with pytest.raises(ValueError, match="halo"):
        Tiling(tile=32, halo=8, align=16)


def test_tiled_codec_decodes_the_same_pixels_as_untiled():
    """The shipped model with small forced tiles: same latents (to float rounding), and the
    same file decodes tiled as untiled to float rounding: 8-bit pixels within one level
    (docs/format.md's guarantee; a value at a rounding boundary may flip), nearly all identical."""
    import gainedvae
    from gainedvae import codec

    net = gainedvae.load_checkpoint()
    rng = torch.Generator().manual_seed(3)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 18, generator=rng), size=(150, 230), mode="bilinear")
    small_a = Tiling(tile=64, halo=32, align=16, num=1, den=16)
    small_s = Tiling(tile=2, halo=4, align=1, num=16, den=1)
    whole = type(net).analysis_tiling, type(net).synthesis_tiling
    try:
        with torch.no_grad():
            net.analysis_tiling, net.synthesis_tiling = None, None
            y_whole = net.analysis(x)
            data = codec.encode(net, x, 3.5)
            ref = codec.decode(net, data)
            net.analysis_tiling, net.synthesis_tiling = small_a, small_s
            torch.testing.assert_close(net.analysis(x), y_whole, rtol=0, atol=1e-4)
            got = codec.decode(net, data)
    finally:
        net.analysis_tiling, net.synthesis_tiling = whole
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    a, b = (codec.tensor_to_image(t).astype(int) for t in (got, ref))
    assert abs(a - b).max() <= 1 and (a != b).mean() < 1e-3
