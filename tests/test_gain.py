import math

import pytest
import torch

from gainedvae.gain import GainMatrix, LatentGains, check_quality, interpolate_log_gains


def _log_gains(levels=4, channels=5):
    torch.manual_seed(1)
    # increasing with the level, as a trained model's gains are
    return torch.cumsum(torch.rand(levels, channels) + 0.1, 0) - 1.0


def test_integer_quality_is_exactly_the_level():
    lg = _log_gains()
    for q in range(1, 5):
        assert torch.equal(interpolate_log_gains(lg, torch.tensor(float(q))), lg[q - 1].exp())


def test_exponential_interpolation_formula():
    lg = _log_gains()
    m = lg.exp()
    for q, s, l in [(1.25, 0, 0.25), (2.5, 1, 0.5), (3.9, 2, 0.9)]:
        expected = m[s] ** (1 - l) * m[s + 1] ** l
        torch.testing.assert_close(interpolate_log_gains(lg, torch.tensor(q)), expected, rtol=1e-5, atol=0)
        # not the linear mix the reference code uses in one of its paths
        linear = (1 - l) * m[s] + l * m[s + 1]
        assert not torch.allclose(interpolate_log_gains(lg, torch.tensor(q)), linear, rtol=1e-3)


def test_gains_move_continuously_and_monotonically():
    lg = _log_gains()
    qs = torch.linspace(1, 4, 301)
    g = interpolate_log_gains(lg, qs)  # (301, C)
    assert g.shape == (301, 5)
    steps = g[1:] - g[:-1]
    assert (steps > 0).all(), "gain must increase with quality when the levels do"
    # continuity: no jump bigger than the local slope allows
    assert steps.abs().max() < 0.05 * g.max()


def test_batch_of_qualities_matches_scalars():
    lg = _log_gains()
    qs = torch.tensor([1.0, 2.3, 4.0])
    batch = interpolate_log_gains(lg, qs)
    for i, q in enumerate(qs):
        assert torch.equal(batch[i], interpolate_log_gains(lg, q))


def test_positive_parametrisation_and_gradients():
    m = GainMatrix(3, 4)
    with torch.no_grad():
        m.log_gain.fill_(-50.0)  # tiny but never zero or negative
    g = m(torch.tensor(2.5))
    assert g.shape == (1, 4, 1, 1) and (g > 0).all()
    g.sum().backward()
    assert m.log_gain.grad is not None and m.log_gain.grad.abs().sum() > 0


@pytest.mark.parametrize("q", [0.99, 0, -1, 4.01, 100, math.nan, math.inf])
def test_out_of_range_quality(q):
    with pytest.raises(ValueError, match="quality"):
        check_quality(q, 4)


def test_bad_quality_types():
    with pytest.raises(TypeError):
        check_quality("2", 4)
    with pytest.raises(TypeError):
        check_quality(True, 4)


def test_init_from_lambdas_spreads_levels():
    g = LatentGains(3, M=4, N=2)
    g.init_from_lambdas([0.01, 0.04, 0.16], reference=0.04)
    torch.testing.assert_close(g.y.gains[:, 0], torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(g.y_inv.gains[:, 0], torch.tensor([2.0, 1.0, 0.5]))
    assert torch.equal(g.z.gains, torch.ones(3, 2))


def test_needs_two_levels():
    with pytest.raises(ValueError, match="at least 2"):
        LatentGains(1, 4, 4)
