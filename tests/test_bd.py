import numpy as np
import pytest

from gainedvae.bd import NoOverlap, bd_psnr, bd_rate

RATE = [0.12, 0.2, 0.33, 0.5, 0.75, 1.1]
PSNR = [27.1, 28.6, 30.2, 31.8, 33.4, 35.0]


def test_curve_against_itself_is_zero():
    assert bd_rate(RATE, PSNR, RATE, PSNR) == pytest.approx(0, abs=1e-9)
    assert bd_psnr(RATE, PSNR, RATE, PSNR) == pytest.approx(0, abs=1e-9)


def test_rates_scaled_by_point_nine_give_minus_ten_percent():
    assert bd_rate(RATE, PSNR, [0.9 * r for r in RATE], PSNR) == pytest.approx(-10.0, abs=0.1)
    assert bd_rate(RATE, PSNR, [1.2 * r for r in RATE], PSNR) == pytest.approx(20.0, abs=0.1)


def test_psnr_shift_gives_bd_psnr():
    assert bd_psnr(RATE, PSNR, RATE, [p + 0.5 for p in PSNR]) == pytest.approx(0.5, abs=1e-6)
    assert bd_rate(RATE, PSNR, RATE, [p + 0.5 for p in PSNR]) < 0


def test_non_overlapping_curves_say_so():
    with pytest.raises(NoOverlap, match="no overlap"):
        bd_rate(RATE, PSNR, RATE, [p + 20 for p in PSNR])
    with pytest.raises(NoOverlap, match="no overlap"):
        bd_psnr(RATE, PSNR, [r * 100 for r in RATE], PSNR)


def test_order_and_duplicates_do_not_matter():
    perm = np.random.default_rng(0).permutation(len(RATE))
    r = [RATE[i] for i in perm] + [RATE[0]]
    p = [PSNR[i] for i in perm] + [PSNR[0]]
    assert bd_rate(RATE, PSNR, r, p) == pytest.approx(0, abs=1e-9)


def test_needs_two_points():
    with pytest.raises(ValueError, match="2 distinct"):
        bd_rate([0.1], [30], RATE, PSNR)
