"""NIfTI / NRRD exports keep the geometry: round trips, header fields read back independently, HU values."""
import numpy as np
import pytest

from ixgs_ros.outputs.export import affine_from_nrrd_header, export_nifti, load_nrrd, nrrd_header, save_nrrd
from ixgs_ros.core.geometry import rotation_x, rotation_z
from ixgs_ros.core.volume import Grid, load_nifti, mu_to_hu


def oblique_grid():
    """Anisotropic, rotated, mirrored (det < 0) and translated: every way an affine can go wrong."""
    A = np.eye(4)
    A[:3, :3] = rotation_z(0.4) @ rotation_x(0.3) @ np.diag([-0.7, 1.2, 1.5])
    A[:3, 3] = [5.0, -7.0, 9.0]
    return Grid((5, 6, 7), A)


@pytest.fixture
def volume():
    g = oblique_grid()
    return np.random.default_rng(0).random(g.shape).astype(np.float32) * 0.05, g


@pytest.mark.parametrize("space", ["LPS", "RAS"])
def test_nrrd_round_trip_keeps_affine(tmp_path, volume, space):
    import nrrd

    vol, g = volume
    p = save_nrrd(tmp_path / "v.nrrd", vol, g, space=space)
    data, grid, header = load_nrrd(p)
    np.testing.assert_allclose(grid.affine, g.affine, atol=1e-9)
    np.testing.assert_array_equal(data, vol)
    # independent reading of the raw header: NRRD axis n is array axis n; LPS negates x and y
    raw, h = nrrd.read(str(p), index_order="F")
    assert raw.shape == vol.shape
    flip = np.array([-1.0, -1.0, 1.0]) if space == "LPS" else np.ones(3)
    assert h["space"] == ("left-posterior-superior" if space == "LPS" else "right-anterior-superior")
    D = np.asarray(h["space directions"], dtype=float)
    for n in range(3):
        np.testing.assert_allclose(D[n] * flip, g.affine[:3, n], atol=1e-9)
    np.testing.assert_allclose(np.asarray(h["space origin"], dtype=float) * flip, g.affine[:3, 3], atol=1e-9)
    # the world position of a voxel agrees
    ijk = np.array([3, 1, 4])
    world_nrrd = (np.asarray(h["space origin"]) + ijk @ D) * flip
    np.testing.assert_allclose(world_nrrd, g.index_to_world(ijk), atol=1e-9)
    assert list(h["kinds"]) == ["domain"] * 3


def test_nrrd_hu_values_and_extra_fields(tmp_path, volume):
    vol, g = volume
    p = save_nrrd(tmp_path / "hu.nrrd", vol, g, values="hu", extra={"ixgs_views": 12})
    data, grid, header = load_nrrd(p)
    np.testing.assert_allclose(data, mu_to_hu(vol), rtol=1e-5, atol=1e-3)
    assert "Hounsfield" in header["content"] and header["ixgs_views"] == "12"
    with pytest.raises(ValueError):
        save_nrrd(tmp_path / "x.nrrd", vol, g, values="kelvin")
    with pytest.raises(ValueError):
        save_nrrd(tmp_path / "x.nrrd", vol, g, space="RAI")
    with pytest.raises(ValueError):
        save_nrrd(tmp_path / "x.nrrd", vol[:2], g)


def test_nrrd_header_helpers():
    g = oblique_grid()
    for space in ("RAS", "LPS", "left-anterior-superior"):
        np.testing.assert_allclose(affine_from_nrrd_header(nrrd_header(g, space)), g.affine, atol=1e-12)
    with pytest.raises(ValueError):
        affine_from_nrrd_header({"space directions": np.eye(3)})


@pytest.mark.parametrize("values", ["mu", "hu"])
def test_nifti_round_trip_keeps_affine(tmp_path, volume, values):
    import nibabel as nib

    vol, g = volume
    p = export_nifti(tmp_path / "v.nii.gz", vol, g, values=values)
    data, grid = load_nifti(p)
    np.testing.assert_allclose(grid.affine, g.affine, atol=1e-5)
    np.testing.assert_allclose(data, vol if values == "mu" else mu_to_hu(vol), rtol=1e-5, atol=1e-3)
    img = nib.load(str(p))
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), g.affine, atol=1e-5)


@pytest.mark.slow
def test_itk_reads_the_same_geometry(tmp_path, volume):
    """ITK (the reader under 3D Slicer) sees the same voxel positions in NRRD (both spaces) and NIfTI."""
    itk = pytest.importorskip("itk")
    vol, g = volume
    files = [save_nrrd(tmp_path / "l.nrrd", vol, g, space="LPS"), save_nrrd(tmp_path / "r.nrrd", vol, g, space="RAS"),
             export_nifti(tmp_path / "v.nii.gz", vol, g)]
    for p in files:
        img = itk.imread(str(p))
        D = np.asarray(itk.array_from_matrix(img.GetDirection()))
        A = np.eye(4)
        A[:3, :3] = D * np.asarray(img.GetSpacing())
        A[:3, 3] = img.GetOrigin()
        np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ A, g.affine, atol=1e-4)  # ITK is LPS
