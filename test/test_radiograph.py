"""Classical radiograph standardization (ixgs_ros.core.radiograph): log transform, I0 estimate, binning."""
from __future__ import annotations

import numpy as np
import pytest

from ixgs_ros.core.geometry import View, look_at
from ixgs_ros.core.radiograph import RadiographError, bin_view, estimate_i0, standardize, to_line_integral


def _view(w=12, h=8):
    K = [[300.0, 0.0, 6.3], [0.0, 300.0, 3.8], [0.0, 0.0, 1.0]]
    return View(K, look_at([0.0, -600.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]), w, h, {"sdd": 1000.0})


def test_to_line_integral_inverts_beer_lambert_and_counts_clips():
    li = np.linspace(0.0, 6.0, 24).reshape(4, 6)
    i0 = 4000.0
    raw = i0 * np.exp(-li)
    out, info = to_line_integral(raw, i0)
    assert out.dtype == np.float32 and np.allclose(out, li, atol=1e-5)
    assert info == {"i0": i0, "clipped_low": 0, "clipped_high": 0}
    raw[0, 0], raw[0, 1], raw[1, 0] = 2 * i0, 0.0, -5.0  # brighter than I0; dead pixels
    out, info = to_line_integral(raw, i0)
    assert info["clipped_high"] == 1 and info["clipped_low"] == 2
    assert out[0, 0] == 0.0 and np.isclose(out[0, 1], -np.log(1e-6)) and np.isfinite(out).all()
    assert not np.signbit(out).any()  # no -0.0


def test_estimate_i0_takes_the_direct_beam():
    rng = np.random.default_rng(0)
    i0 = 3000.0
    li = np.zeros((64, 64))
    li[8:56, 16:48] = rng.uniform(1.0, 4.0, (48, 32))  # a patient in the middle, air around
    raw = rng.poisson(i0 * np.exp(-li)).astype(np.uint16)
    est = estimate_i0(raw)
    assert abs(est - i0) < 0.005 * i0  # the air level, not the top of its Poisson spread (+2.6 sigma = 4.7 %)
    out, _ = to_line_integral(raw, est)
    assert abs(float(np.median(out[8:56, 16:48] - li[8:56, 16:48]))) < 0.03


def test_estimate_i0_in_a_lateral_view_with_little_air():
    """2.3 % air at the edge, 12 % skin-thin tissue (transmission 0.9-1), the rest thick: at 3000 counts
    the thin tissue outnumbers the air in every histogram bin near I0 (a plain median of the brightest
    pixels came out 7 % low on such a view); the 5x5 average makes the air peak stand out."""
    rng = np.random.default_rng(4)
    i0 = 3000.0
    li = np.empty((128, 128))
    li[:, :3] = 0.0
    li[:, 3:18] = np.linspace(0.005, 0.1, 15)
    li[:, 18:] = rng.uniform(0.5, 3.0, (128, 110))
    raw = rng.poisson(i0 * np.exp(-li)).astype(np.float32)
    assert abs(estimate_i0(raw) / i0 - 1.0) < 0.01
    assert abs(estimate_i0(i0 * np.exp(-li)) / i0 - 1.0) < 0.003  # noise-free (the 3-column strip blurs)


def test_bin_view_matches_the_scaled_geometry():
    view = _view(12, 8)
    rng = np.random.default_rng(1)
    img = rng.random((8, 12)).astype(np.float32)
    v2, b2 = bin_view(view, img, 2)
    assert b2.shape == (4, 6) == v2.shape and b2.dtype == np.float32
    assert np.allclose(b2, img.reshape(4, 2, 6, 2).mean(axis=(1, 3)))
    # a point seen at binned pixel (2, 1) is seen at the centre of its 2x2 block of old pixels, (4.5, 2.5)
    X = v2.source + 700.0 * v2.R @ np.linalg.solve(v2.K, [2.0, 1.0, 1.0])
    assert np.allclose(v2.project(X)[0], [2.0, 1.0], atol=1e-9)
    assert np.allclose(view.project(X)[0], [4.5, 2.5], atol=1e-9)
    assert v2.meta["sdd"] == 1000.0
    # 3x3 on 8x12: the last 2 rows are dropped, columns fit exactly
    v3, b3 = bin_view(view, img, 3)
    assert b3.shape == (2, 4) == v3.shape and np.isclose(b3[1, 3], img[3:6, 9:12].mean())
    same_view, same = bin_view(view, img, 1)
    assert same_view is view and same is img


@pytest.mark.parametrize("call,msg", [
    (lambda v, a: bin_view(v, a, 0), "binning factor must be a positive integer, got 0"),
    (lambda v, a: bin_view(v, a, 2.0), "binning factor must be a positive integer, got 2.0"),
    (lambda v, a: bin_view(v, a, 9), "binning factor 9 is larger than the 8x12 detector"),
    (lambda v, a: bin_view(v, a[:, :10], 2), "image is 8x10 (rows x columns) but the view's detector is 8x12"),
    (lambda v, a: to_line_integral(a, 0.0), "i0 must be a positive number, got 0.0"),
    (lambda v, a: to_line_integral(a, "x"), "i0: expected a number, got 'x'"),
    (lambda v, a: to_line_integral(np.where(a > 0.5, np.nan, a), 1.0), "NaN or inf"),
    (lambda v, a: estimate_i0(np.zeros_like(a)), "cannot estimate i0: the image has no positive intensity"),
    (lambda v, a: standardize(v, a[0], raw=True), "expected a non-empty 2D (rows, columns) array, got shape (12,)"),
])
def test_bad_input_is_refused_naming_the_problem(call, msg):
    img = np.random.default_rng(2).random((8, 12))
    with pytest.raises(RadiographError) as err:
        call(_view(), img)
    assert msg in str(err.value)


def test_standardize_raw_and_line_integral_paths_agree():
    view = _view(12, 8)
    li = np.random.default_rng(3).uniform(0.0, 3.0, (8, 12)).astype(np.float32)
    i0 = 1000.0
    v_raw, out_raw, info = standardize(view, (i0 * np.exp(-li)).astype(np.float32), raw=True, i0=i0,
                                       downsample=2)
    v_li, out_li, info_li = standardize(view, li, raw=False, downsample=2)
    assert v_raw == v_li and out_raw.shape == (4, 6) and out_raw.dtype == np.float32
    assert np.allclose(out_raw, out_li, atol=1e-5)
    assert info["i0"] == i0 and info["i0_estimated"] is False and info["downsample"] == 2
    assert "i0" not in info_li
    _, _, info_est = standardize(view, (i0 * np.exp(-li)).astype(np.float32), raw=True, i0=0.0)
    assert info_est["i0_estimated"] is True and 0 < info_est["i0"] <= i0
