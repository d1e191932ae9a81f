"""Metrics of R2-Gaussian's protocol on cases with known answers."""
import math

import numpy as np
import pytest

from ixgs_ros.evaluation import metrics as M


def _vol(seed=0, shape=(24, 20, 16)):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.0, 0.03, shape)
    v[4:12, 5:15, 3:9] += 0.02
    return v.astype(np.float32)


def test_identical_volume_gives_inf_psnr_and_unit_ssim():
    v = _vol()
    assert M.psnr_3d(v, v) == math.inf
    assert M.ssim_3d(v, v) == pytest.approx(1.0, abs=1e-12)
    assert M.psnr_2d(v, v) == math.inf
    assert M.ssim_2d(v, v) == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_gives_analytic_psnr():
    gt = _vol()
    c = 0.004
    expected = -20.0 * math.log10(c / float(gt.max()))
    assert M.psnr_3d(gt + c, gt) == pytest.approx(expected, abs=1e-4)
    assert M.psnr_3d(gt - c, gt) == pytest.approx(expected, abs=1e-4)  # no clipping of negatives


def test_psnr_3d_scales_prediction_by_the_gt_factor_and_does_not_clip():
    gt = _vol()
    pred = gt + np.random.default_rng(1).normal(0, 0.003, gt.shape)
    # invariant to a common scale (the GT max fixes the factor for both)
    assert M.psnr_3d(pred * 7.0, gt * 7.0) == pytest.approx(M.psnr_3d(pred, gt), abs=1e-6)
    # values above the GT max are not clipped: a spike lowers PSNR
    spiky = gt.copy()
    spiky[0, 0, 0] = 10 * gt.max()
    assert M.psnr_3d(spiky, gt) < 30


def test_ssim_decreases_with_noise():
    gt = _vol()
    rng = np.random.default_rng(2)
    s = [M.ssim_3d(gt + rng.normal(0, sd, gt.shape), gt) for sd in (0.001, 0.005, 0.02)]
    assert 1 > s[0] > s[1] > s[2]


def test_ssim_map_is_the_zero_padded_11_tap_gaussian_ssim():
    """Separable implementation == direct 11x11 zero-padded conv2d (the 3DGS / R2-Gaussian formula)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    a, b = rng.uniform(0, 1, (2, 1, 1, 30, 27))
    g = M.gaussian_window(11, 1.5)
    w = torch.from_numpy(np.outer(g, g))[None, None]
    x, y = torch.from_numpy(a), torch.from_numpy(b)

    def f(t):
        return F.conv2d(t, w, padding=5)

    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    ours = M.ssim_maps(a[0, 0], b[0, 0])
    np.testing.assert_allclose(ours[0], ref[0, 0].numpy(), atol=1e-12)
    assert M.ssim_2d_batch(a[0, 0], b[0, 0])[0] == pytest.approx(float(ref.mean()), abs=1e-12)


def test_ssim_interior_matches_skimage():
    """skimage (gaussian_weights, sigma 1.5, population covariance, data_range 1) agrees away from borders."""
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(4)
    gt = rng.uniform(0, 1, (40, 36))
    pred = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, None)
    _, sk_map = skm.structural_similarity(pred, gt, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1.0, full=True)
    ours = M.ssim_maps(pred, gt)[0]
    np.testing.assert_allclose(ours[5:-5, 5:-5], sk_map[5:-5, 5:-5], atol=1e-9)


def test_ssim_3d_averages_three_axes_and_skips_empty_gt_slices():
    gt = _vol()
    pred = gt + np.random.default_rng(5).normal(0, 0.004, gt.shape)
    val, axes = M.ssim_3d(pred, gt, return_axes=True)
    assert val == pytest.approx(np.mean(axes))
    # manual axis-0 mean with the GT scaling
    s = 1.0 / gt.max()
    manual0 = np.mean([M.ssim_2d_batch(pred[i] * s, gt[i] * s)[0] for i in range(gt.shape[0])])
    assert axes[0] == pytest.approx(manual0, abs=1e-9)
    # empty GT slices along axis 0 are not counted
    gt2, pred2 = gt.copy(), pred.copy()
    gt2[:3] = 0
    pred2[:3] = 0.01
    _, axes2 = M.ssim_3d(pred2, gt2, return_axes=True)
    s2 = 1.0 / gt2.max()
    manual = np.mean([M.ssim_2d_batch(pred2[i] * s2, gt2[i] * s2)[0] for i in range(3, gt.shape[0])])
    assert axes2[0] == pytest.approx(manual, abs=1e-9)


def test_2d_metrics_scale_each_view_by_its_gt_max():
    rng = np.random.default_rng(6)
    gt = rng.uniform(0.5, 1.0, (3, 16, 16))
    gt[1] *= 10.0  # very different maxima
    c = 0.05
    pred = gt + c * gt.reshape(3, -1).max(1)[:, None, None]  # offset of 5 % of each view's max
    val, per = M.psnr_2d(pred, gt, return_all=True)
    assert per == pytest.approx([-20 * math.log10(c)] * 3, abs=1e-6)
    assert val == pytest.approx(-20 * math.log10(c), abs=1e-6)
    # 'each' normalises the prediction by its own max: a pure scale error vanishes
    assert M.psnr_2d(gt * 1.3, gt, normalize="each") > 100
    assert M.ssim_2d(gt * 1.3, gt, normalize="each") == pytest.approx(1.0)
    assert M.ssim_2d(gt * 1.3, gt) < 1.0


def test_bad_inputs_are_rejected():
    v = _vol()
    with pytest.raises(ValueError, match="shape"):
        M.psnr_3d(v[:-1], v)
    with pytest.raises(ValueError, match="maximum"):
        M.psnr_3d(v, np.zeros_like(v))
    with pytest.raises(ValueError, match="NaN"):
        M.ssim_3d(np.full_like(v, np.nan), v)
