"""Importers: PNG / TIFF + poses files (JSON, CSV), synthetic DICOM XA (single and multi-frame), CLI."""
import csv
import json

import cv2
import numpy as np
import pytest
import tifffile

from ixgs_ros import cli
from ixgs_ros.core.geometry import View, look_at
from ixgs_ros.core.importers import ScanImportError, import_folder, read_poses
from ixgs_ros.core.scan import Scan

H, W = 12, 16


def pose(i):
    return look_at([400 * np.cos(i), 400 * np.sin(i), 10.0 * i], [0, 0, 0], [0, 0, 1])


def K(i=0):
    return np.array([[900.0 + i, 0.0, 7.5 + i], [0.0, 905.0, 5.5 - i], [0.0, 0.0, 1.0]])


def images(n, seed=0, dtype=np.uint16, hi=60000):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, hi, size=(H, W)).astype(dtype) for _ in range(n)]


# --------------------------------------------------------------------------- PNG / TIFF
def test_png_with_json_poses(tmp_path):
    src = tmp_path / "png"
    src.mkdir()
    imgs = images(4)
    for i, im in enumerate(imgs):
        assert cv2.imwrite(str(src / f"img{i}.png"), im)
    order = [2, 0, 1]  # the poses file decides the order; img3 is not listed
    doc = {"views": [{"file": f"img{i}.png", "K": K(i).tolist(), "T_world_source": pose(i).tolist(),
                      "view_id": f"shot-{i}", "sdd": 1000.0} for i in order]}
    (src / "poses.json").write_text(json.dumps(doc))
    scan = import_folder(src, poses=src / "poses.json")
    assert scan.image_kind == "raw" and len(scan) == 3
    for j, i in enumerate(order):
        np.testing.assert_array_equal(scan.projections[j], imgs[i].astype(np.float32))
        assert scan.views[j] == View(K(i), pose(i), W, H)
        assert scan.views[j].meta["view_id"] == f"shot-{i}" and scan.views[j].meta["file"] == f"img{i}.png"
        assert scan.views[j].meta["sdd"] == 1000.0
    assert scan.extra["import"]["ignored"] == ["img3.png", "poses.json"]
    out = scan.save(tmp_path / "scan")
    assert Scan.load(out).views[0].meta["view_id"] == "shot-2"


def test_tiff_with_csv_poses_line_integrals(tmp_path):
    src = tmp_path / "tif"
    src.mkdir()
    rng = np.random.default_rng(1)
    lis = [rng.uniform(0, 4, size=(H, W)).astype(np.float32) for _ in range(2)]
    for i, im in enumerate(lis):
        tifffile.imwrite(src / f"p{i}.tif", im)
    with open(tmp_path / "poses.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "fx", "fy", "cx", "cy", "skew"] + [f"T{r}{c}" for r in range(3) for c in range(4)]
                   + ["view_id"])
        for i in range(2):
            k = K(i)
            w.writerow([f"p{i}.tif", k[0, 0], k[1, 1], k[0, 2], k[1, 2], 0.0] + pose(i)[:3].ravel().tolist()
                       + [f"v{i}"])
    scan = import_folder(src, poses=tmp_path / "poses.csv", kind="line_integral")
    assert scan.image_kind == "line_integral"
    np.testing.assert_array_equal(scan.projections, np.stack(lis))
    for i in range(2):
        np.testing.assert_allclose(scan.views[i].K, K(i))
        np.testing.assert_allclose(scan.views[i].T_world_source, pose(i), atol=1e-12)
        assert scan.views[i].meta["view_id"] == "v{}".format(i)


def test_carm_poses_csv_and_json(tmp_path):
    src = tmp_path / "png"
    src.mkdir()
    imgs = images(2, dtype=np.uint8, hi=255)
    for i, im in enumerate(imgs):
        cv2.imwrite(str(src / f"c{i}.png"), im)
    with open(tmp_path / "carm.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "primary_deg", "secondary_deg", "sid_mm", "sod_mm", "pixel_spacing_row_mm",
                    "pixel_spacing_col_mm", "detector_roll_deg", "isocenter_x", "isocenter_y", "isocenter_z"])
        w.writerow(["c0.png", 30, -10, 1100, 700, 0.4, 0.3, 2, 1, 2, 3])
        w.writerow(["c1.png", -45, 20, 1100, 700, 0.4, 0.3, "", "", "", ""])
    scan = import_folder(src, poses=tmp_path / "carm.csv")
    expect = [View.from_carm(30, -10, 1100, 700, (0.4, 0.3), W, H, isocenter=(1, 2, 3), detector_roll_deg=2),
              View.from_carm(-45, 20, 1100, 700, (0.4, 0.3), W, H)]
    for v, e in zip(scan.views, expect):
        np.testing.assert_allclose(v.K, e.K)
        np.testing.assert_allclose(v.T_world_source, e.T_world_source, atol=1e-12)
        assert "mirrored" not in v.meta
    np.testing.assert_array_equal(scan.projections[0], imgs[0])

    # JSON mapping form with defaults and a patient_to_world; mirror="yes" flips the images
    P = np.eye(4)
    P[:3, 3] = [0, 0, 100]
    doc = {"defaults": {"sid_mm": 1100, "sod_mm": 700, "pixel_spacing_mm": 0.35}, "patient_to_world": P.tolist(),
           "views": [{"file": "c1.png", "primary_deg": 10, "secondary_deg": 0},
                     {"file": "c0.png", "carm": {"primary_deg": 0, "secondary_deg": 5, "sod_mm": 650}}]}
    (tmp_path / "carm.json").write_text(json.dumps(doc))
    scan = import_folder(src, poses=tmp_path / "carm.json", mirror="yes")
    e = View.from_carm(0, 5, 1100, 650, 0.35, W, H, patient_to_world=P)
    np.testing.assert_allclose(scan.views[1].T_world_source, e.T_world_source, atol=1e-12)
    np.testing.assert_array_equal(scan.projections[1], imgs[0][:, ::-1])
    assert scan.views[1].meta["mirrored"] is True


def test_to_line_integral(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    p = np.linspace(0, 5, H * W).reshape(H, W)
    i0 = 50000.0
    im = np.round(i0 * np.exp(-p)).astype(np.uint16)
    im[0, 0] = 0  # dead pixel -> clipped
    im[0, 1] = 60000  # brighter than I0 -> clipped to 0
    cv2.imwrite(str(src / "a.png"), im)
    (tmp_path / "poses.json").write_text(json.dumps({"a.png": {"K": K().tolist(), "T_world_source": pose(0).tolist()}}))
    scan = import_folder(src, poses=tmp_path / "poses.json", to_line_integral=True, i0=i0)
    assert scan.image_kind == "line_integral"
    got = scan.projections[0]
    np.testing.assert_allclose(got.ravel()[2:], p.ravel()[2:], atol=0.02)
    assert got[0, 0] == pytest.approx(-np.log(1e-6)) and got[0, 1] == 0.0
    info = scan.extra["import"]["to_line_integral"]
    assert info == {"i0": i0, "clipped_low": 1, "clipped_high": 1}
    with pytest.raises(ScanImportError, match="needs i0"):
        import_folder(src, poses=tmp_path / "poses.json", to_line_integral=True)
    with pytest.raises(ScanImportError, match="already line integrals"):
        import_folder(src, poses=tmp_path / "poses.json", to_line_integral=True, i0=1.0, kind="line_integral")
    with pytest.raises(ScanImportError, match="i0: must be positive"):
        import_folder(src, poses=tmp_path / "poses.json", to_line_integral=True, i0=0.0)


def test_image_and_poses_errors(tmp_path):
    src = tmp_path / "png"
    src.mkdir()
    for i, im in enumerate(images(2)):
        cv2.imwrite(str(src / f"i{i}.png"), im)
    with pytest.raises(ScanImportError, match="need a poses file"):
        import_folder(src)
    poses = tmp_path / "p.json"
    poses.write_text(json.dumps({"views": [{"file": "nope.png", "K": K().tolist(),
                                            "T_world_source": pose(0).tolist()}]}))
    with pytest.raises(ScanImportError, match="'nope.png' not found"):
        import_folder(src, poses=poses)
    poses.write_text(json.dumps({"views": [{"file": "i0.png", "K": K().tolist()}]}))
    with pytest.raises(ScanImportError, match="needs both K and T_world_source"):
        import_folder(src, poses=poses)
    poses.write_text(json.dumps({"views": [{"file": "i0.png", "primary_deg": 0}]}))
    with pytest.raises(ScanImportError, match="missing secondary_deg"):
        import_folder(src, poses=poses)
    bad_K = K()
    bad_K[2, 2] = 3
    poses.write_text(json.dumps({"views": [{"file": "i0.png", "K": bad_K.tolist(),
                                            "T_world_source": pose(0).tolist()}]}))
    with pytest.raises(ScanImportError, match=r"views\[0\] \(i0.png\): K: last row"):
        import_folder(src, poses=poses)
    poses.write_text(json.dumps({"views": [{"file": "i0.png"}, {"file": "i0.png"}]}))
    with pytest.raises(ScanImportError, match="more than once"):
        read_poses(poses)
    poses.write_text("{oops")
    with pytest.raises(ScanImportError, match="invalid JSON"):
        read_poses(poses)
    (tmp_path / "p.csv").write_text("name,fx\nx,1\n")
    with pytest.raises(ScanImportError, match="'file' column"):
        read_poses(tmp_path / "p.csv")
    with pytest.raises(ScanImportError, match="not found"):
        read_poses(tmp_path / "missing.json")
    cv2.imwrite(str(src / "big.png"), np.zeros((H + 1, W), np.uint16))
    with pytest.raises(ScanImportError, match="differ in size"):
        import_folder(src, poses=poses)
    (src / "big.png").unlink()
    colour = np.zeros((H, W, 3), np.uint8)
    colour[..., 2] = 200
    cv2.imwrite(str(src / "colour.png"), colour)
    with pytest.raises(ScanImportError, match="colour image"):
        import_folder(src, poses=poses)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScanImportError, match="no DICOM, PNG or TIFF"):
        import_folder(empty)
    with pytest.raises(ScanImportError, match="no such file"):
        import_folder(tmp_path / "absent")


# --------------------------------------------------------------------------- DICOM
def write_dicom(path, pixels, primary=None, secondary=None, sid=1200.0, sod=800.0, spacing=(0.4, 0.3),
                instance=1, **attrs):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

    pixels = np.asarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = XRayAngiographicImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    if primary is not None:
        ds.PositionerPrimaryAngle = primary
    if secondary is not None:
        ds.PositionerSecondaryAngle = secondary
    if sid is not None:
        ds.DistanceSourceToDetector = sid
    if sod is not None:
        ds.DistanceSourceToPatient = sod
    if spacing is not None:
        ds.ImagerPixelSpacing = list(spacing)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_dicom_xa_angles(tmp_path):
    src = tmp_path / "dcm"
    (src / "series").mkdir(parents=True)
    imgs = images(2, seed=3, hi=4000)
    # file names sort opposite to InstanceNumber; the second file has a rescale and no .dcm suffix
    write_dicom(src / "series" / "b.dcm", imgs[0], 30.0, -15.0, instance=1)
    write_dicom(src / "series" / "a", imgs[1], -20.0, 10.0, instance=2, RescaleSlope=2, RescaleIntercept=-5)
    (src / "notes.txt").write_text("not an image")
    scan = import_folder(src)
    assert len(scan) == 2 and scan.image_kind == "raw"
    for v, (a, b) in zip(scan.views, [(30.0, -15.0), (-20.0, 10.0)]):
        e = View.from_carm(a, b, 1200.0, 800.0, (0.4, 0.3), W, H)
        assert v == e
        assert v.meta["mirrored"] is True and v.meta["dicom"]["modality"] == "XA"
        c = v.to_carm()
        assert (c.primary_deg, c.secondary_deg) == pytest.approx((a, b))
    assert scan.views[0].meta["file"] == "series/b.dcm"
    np.testing.assert_array_equal(scan.projections[0], imgs[0][:, ::-1])  # stored as displayed -> mirrored
    np.testing.assert_array_equal(scan.projections[1], 2.0 * imgs[1][:, ::-1] - 5)
    assert scan.extra["import"]["ignored"] == ["notes.txt"]
    no_mirror = import_folder(src, mirror="no")
    np.testing.assert_array_equal(no_mirror.projections[0], imgs[0])
    assert "mirrored" not in no_mirror.views[0].meta


def test_dicom_multiframe_dynamic(tmp_path):
    frames = np.stack(images(3, seed=4, hi=4000))
    path = tmp_path / "rot.dcm"
    write_dicom(path, frames, -60.0, 2.0, PositionerMotion="DYNAMIC",
                PositionerPrimaryAngleIncrement=[0.0, 30.0, 60.0], PositionerSecondaryAngleIncrement=[0.0, 0.0, -4.0])
    scan = import_folder(path)  # a single file is a valid source
    assert len(scan) == 3
    got = [(c.primary_deg, c.secondary_deg) for c in (v.to_carm() for v in scan.views)]
    assert got == [pytest.approx(x) for x in [(-60, 2), (-30, 2), (0, -2)]]
    assert [v.meta["file"] for v in scan.views] == ["rot.dcm#0", "rot.dcm#1", "rot.dcm#2"]
    np.testing.assert_array_equal(scan.projections[2], frames[2][:, ::-1])
    write_dicom(path, frames, -60.0, 2.0, PositionerMotion="DYNAMIC", PositionerPrimaryAngleIncrement=[0.0, 30.0])
    with pytest.raises(ScanImportError, match="2 value"):
        import_folder(path)


def test_dicom_missing_attributes_and_poses(tmp_path):
    src = tmp_path / "dcm"
    src.mkdir()
    frames = np.stack(images(2, seed=5, hi=4000))
    write_dicom(src / "x.dcm", frames, 0.0, 0.0, spacing=None)
    with pytest.raises(ScanImportError, match="ImagerPixelSpacing is missing"):
        import_folder(src)
    write_dicom(src / "x.dcm", frames, 0.0, None)
    with pytest.raises(ScanImportError, match="PositionerSecondaryAngle is missing"):
        import_folder(src)
    write_dicom(src / "x.dcm", frames, 0.0, 0.0, sod=None)
    with pytest.raises(ScanImportError, match="DistanceSourceToPatient is missing"):
        import_folder(src)
    write_dicom(src / "x.dcm", frames, 0.0, 0.0, sod=1500.0)
    with pytest.raises(ScanImportError, match="sod_mm"):
        import_folder(src)
    # a poses file overrides the DICOM attributes; frames are addressed as name#k
    poses = tmp_path / "poses.json"
    poses.write_text(json.dumps({"x.dcm#1": {"K": K().tolist(), "T_world_source": pose(1).tolist()},
                                 "x.dcm#0": {"K": K().tolist(), "T_world_source": pose(0).tolist()}}))
    scan = import_folder(src, poses=poses)
    np.testing.assert_array_equal(scan.projections, frames[::-1].astype(np.float32))  # no mirror with K/T
    assert scan.views[0] == View(K(), pose(1), W, H)


# --------------------------------------------------------------------------- CLI
def test_cli_import(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["import_scan"])
    src = tmp_path / "dcm"
    src.mkdir()
    i0 = 4000.0
    pixels = (1000 + 10 * np.arange(H * W).reshape(H, W) % 200).astype(np.uint16)
    write_dicom(src / "a.dcm", pixels, 10.0, 0.0)
    out = tmp_path / "scan"
    assert cli.main(["import", str(src), "-o", str(out), "--to-line-integral", "--i0", str(i0)]) == 0
    assert "imported 1 view(s) of 16x12 (line_integral)" in capsys.readouterr().out
    scan = Scan.load(out)
    np.testing.assert_allclose(scan.projections[0], np.log(i0 / pixels[:, ::-1]), rtol=1e-5)
    assert cli.main(["import", str(src), "-o", str(out)]) == 2
    assert "already holds a scan" in capsys.readouterr().err
    assert cli.main(["import", str(src), "-o", str(out), "--force", "--mirror", "no"]) == 0
    assert Scan.load(out).image_kind == "raw"
    assert cli.main(["import", str(tmp_path / "nothing"), "-o", str(tmp_path / "o2")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    blank = tmp_path / "blank"
    blank.mkdir()
    write_dicom(blank / "a.dcm", np.full((H, W), 1000, np.uint16), 10.0, 0.0)
    assert cli.main(["import", str(blank), "-o", str(tmp_path / "o3")]) == 2
    assert "is constant (1000 everywhere)" in capsys.readouterr().err and not (tmp_path / "o3").exists()
