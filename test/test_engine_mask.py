"""Per-pixel validity masks in the engine: the loss ignores masked pixels, the initial solve does not trust them,
masks survive save/load, bad masks are refused."""
import numpy as np
import pytest
import torch

from ixgs_ros.core.radiograph import RadiographError, inpaint_invalid
from ixgs_ros.engine import EngineError, ReconstructionEngine
from ixgs_ros.engine.losses import projection_loss
from ixgs_ros.core.volume import Grid

from test_engine import MU, small_config, sphere_views  # noqa: E402  (pytest puts test/ on the path)


def _images(seed=0, shape=(24, 28)):
    rng = np.random.default_rng(seed)
    pred = torch.from_numpy(rng.uniform(0, 2, shape).astype(np.float32)).requires_grad_(True)
    target = torch.from_numpy(rng.uniform(0, 2, shape).astype(np.float32))
    mask = torch.from_numpy((rng.uniform(size=shape) > 0.3).astype(np.float32))
    return pred, target, mask


def test_masked_pixels_do_not_change_the_loss():
    pred, target, mask = _images()
    l1, loss = (x.detach() for x in projection_loss(pred, target, 0.25, mask=mask))
    garbage = torch.where(mask > 0, target, torch.full_like(target, 1e3))
    l1g, lossg = (x.detach() for x in projection_loss(pred, garbage, 0.25, mask=mask))
    assert float(l1g) == pytest.approx(float(l1), abs=1e-6) and float(lossg) == pytest.approx(float(loss), abs=1e-6)
    # and the masked pixels do count without the mask
    loss_nomask = projection_loss(pred, garbage, 0.25)[1].detach()
    assert float(loss_nomask) > 10 * float(loss)
    # L1 is the mean over valid pixels only
    v = mask > 0
    assert float(l1) == pytest.approx(float((pred - target).abs()[v].mean()), rel=1e-5)


def test_an_all_valid_mask_is_the_plain_loss():
    pred, target, _ = _images(1)
    ones = torch.ones_like(target)
    a = projection_loss(pred, target, 0.25)
    b = projection_loss(pred, target, 0.25, mask=ones)
    assert all(float(x) == pytest.approx(float(y), rel=1e-6) for x, y in zip(a, b))


def test_inpainting_keeps_valid_pixels_and_continues_smooth_images():
    yy, xx = np.mgrid[0:40, 0:50].astype(np.float64)
    img = (0.5 + 0.02 * xx + 0.01 * yy).astype(np.float32)
    mask = np.ones(img.shape, bool)
    mask[10:18, 20:30] = False          # a hole (metal)
    mask[:, :4] = False                 # a shutter at the border
    garbage = np.where(mask, img, 99.0).astype(np.float32)
    out = inpaint_invalid(garbage, mask)
    assert np.array_equal(out[mask], img[mask])
    assert np.abs(out[~mask] - img[~mask]).max() < 0.15 * (img.max() - img.min())
    with pytest.raises(RadiographError, match="no valid pixel"):
        inpaint_invalid(img, np.zeros(img.shape, bool))


def _engine(grid):
    cfg = small_config(iterations=6)
    return ReconstructionEngine(grid, cfg)


def test_engine_ignores_what_masked_pixels_hold(tmp_path):
    """Two engines fed the same views, one with garbage (huge values, NaN) in the masked pixels: identical
    initial volume and identical losses; close to an engine that saw every pixel clean (the masked pixels are
    inpainted for the init, not read as data); the masks survive save/load."""
    grid = Grid.centered(12, 4.0, (0, 0, 0))
    views, images = sphere_views(n=4)
    rng = np.random.default_rng(3)
    masks = [np.ones(im.shape, np.uint8) for im in images]
    for m in masks:
        m[:, :3] = 0                                              # a shutter
        r, c = rng.integers(12, 18, 2)
        m[r:r + 4, c:c + 3] = 0                                   # metal inside the sphere's shadow
    a, b, clean, naive = _engine(grid), _engine(grid), _engine(grid), _engine(grid)
    for v, im, m in zip(views, images, masks):
        a.add_view(v, im, mask=m)
        bad = np.where(m > 0, im, 5.0).astype(np.float32)
        clean.add_view(v, im)
        naive.add_view(v, bad)
        bad[0, 0] = np.nan
        b.add_view(v, bad, mask=m)
    for e in (a, b, clean, naive):
        e.step(2)
    assert np.array_equal(a.volume(), b.volume())
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    err = lambda e: float(np.abs(e.volume() - clean.volume()).mean())  # noqa: E731
    assert err(a) < 0.5 * err(naive), (err(a), err(naive))
    a.save(tmp_path / "state")
    c = ReconstructionEngine.load(tmp_path / "state")
    assert all(torch.equal(x.mask, y.mask) for x, y in zip(a.views, c.views))


def test_bad_masks_are_refused_without_losing_views():
    grid = Grid.centered(16, 3.0, (0, 0, 0))
    views, images = sphere_views(n=2)
    eng = _engine(grid)
    eng.add_view(views[0], images[0])
    with pytest.raises(EngineError, match="mask shape"):
        eng.add_view(views[1], images[1], mask=np.ones((3, 3), np.uint8))
    with pytest.raises(EngineError, match="only 0 and 1"):
        eng.add_view(views[1], images[1], mask=np.full(images[1].shape, 2, np.uint8))
    with pytest.raises(EngineError, match="every pixel invalid"):
        eng.add_view(views[1], images[1], mask=np.zeros(images[1].shape, np.uint8))
    with pytest.raises(EngineError, match="NaN"):  # NaN in a valid pixel is still refused
        bad = images[1].copy()
        bad[5, 5] = np.nan
        eng.add_view(views[1], bad, mask=np.ones(bad.shape, np.uint8))
    assert len(eng.views) == 1 and eng.views[0].mask is None
