"""ixgs-scan v1: round trips, strict validation with field-naming messages, atomic writes, subsets."""
import json

import numpy as np
import pytest

from ixgs_ros.core.geometry import View
from ixgs_ros.core.scan import PROJECTIONS_FILE, SCAN_JSON, Scan, ScanError


def make_scan(n=3, h=6, w=8, kind="line_integral"):
    views = [View.from_carm(30.0 * i, 5.0, 1000.0, 600.0, 0.5, w, h, meta={"view_id": f"v{i}"})
             for i in range(n)]
    rng = np.random.default_rng(0)
    proj = rng.uniform(0, 3, size=(n, h, w)).astype(np.float32)
    return Scan(views, proj, kind, {"source": "unit-test", "nested": {"a": [1, 2]}})


def write_raw(tmp_path, doc, proj=None):
    """Write scan.json (and optionally projections.npy) by hand, as another tool would."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / SCAN_JSON).write_text(json.dumps(doc))
    if proj is not None:
        np.save(tmp_path / PROJECTIONS_FILE, proj)
    return tmp_path


def minimal_doc(n=2, **over):
    K = [[500.0, 0.0, 3.5], [0.0, 500.0, 2.5], [0.0, 0.0, 1.0]]
    T = np.eye(4).tolist()
    doc = {"format": "ixgs-scan", "version": 1, "units": "mm", "image_kind": "line_integral",
           "projections": "projections.npy", "views": [{"K": [r[:] for r in K], "T_world_source": [r[:] for r in T]}
                     for _ in range(n)]}
    doc.update(over)
    return doc


def test_roundtrip(tmp_path):
    s = make_scan()
    out = s.save(tmp_path / "scan")
    assert sorted(p.name for p in out.iterdir()) == sorted([SCAN_JSON, PROJECTIONS_FILE])  # no temp files left
    t = Scan.load(out)
    assert len(t) == 3 and t.image_kind == "line_integral" and (t.height, t.width) == (6, 8)
    assert t.projections.dtype == np.float32 and t.projections.flags.writeable
    np.testing.assert_array_equal(t.projections, s.projections)
    for a, b in zip(t.views, s.views):
        assert a == b
        assert a.meta["view_id"] == b.meta["view_id"] and a.meta["sdd"] == 1000.0
        assert a.meta["carm"]["secondary_deg"] == 5.0
    assert t.extra == s.extra
    assert Scan.load(out / SCAN_JSON).extra == s.extra  # the json path works too
    doc = json.loads((out / SCAN_JSON).read_text())
    assert doc["format"] == "ixgs-scan" and doc["version"] == 1 and doc["units"] == "mm"
    assert doc["views"][0]["width"] == 8 and doc["source"] == "unit-test"


def test_minimal_foreign_scan_and_extras_kept(tmp_path):
    doc = minimal_doc(view_extra=1)
    doc["views"][1].update({"sdd": 700.0, "view_id": "b", "true_T_world_source": np.eye(4).tolist()})
    d = write_raw(tmp_path / "a", doc, np.zeros((2, 5, 7), np.float32))
    s = Scan.load(d)
    assert (s.width, s.height) == (7, 5) and s.views[0].meta == {}
    assert s.views[1].meta["view_id"] == "b" and s.views[1].meta["sdd"] == 700.0
    assert s.extra == {"view_extra": 1}
    s.save(tmp_path / "b")
    again = json.loads((tmp_path / "b" / SCAN_JSON).read_text())
    assert again["view_extra"] == 1 and again["views"][1]["true_T_world_source"] == np.eye(4).tolist()


def test_overwrite_is_atomic_replace(tmp_path):
    s = make_scan()
    s.save(tmp_path)
    s2 = s.subset([0])
    s2.save(tmp_path)
    assert len(Scan.load(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SCAN_JSON, PROJECTIONS_FILE])


BAD_JSON_CASES = [
    (dict(format="other"), "format: expected 'ixgs-scan'"),
    (dict(version=2), "version: unsupported version 2"),
    (dict(version="1"), "version: must be an integer"),
    (dict(units="cm"), "units: must be 'mm'"),
    (dict(image_kind="intensity"), "image_kind: must be one of"),
    (dict(views=[]), "views: must be a non-empty list"),
    (dict(projections="missing.npy"), "projections: file not found"),
    (dict(width=9), "width: 9 does not match"),
]


@pytest.mark.parametrize("over, msg", BAD_JSON_CASES)
def test_bad_json_fields(tmp_path, over, msg):
    d = write_raw(tmp_path, minimal_doc(**over), np.zeros((2, 5, 7), np.float32))
    with pytest.raises(ScanError, match="scan.json: " + msg.replace("(", r"\(")):
        Scan.load(d)


def test_missing_keys_and_bad_views(tmp_path):
    doc = minimal_doc()
    del doc["units"]
    with pytest.raises(ScanError, match="scan.json: units: missing"):
        Scan.load(write_raw(tmp_path / "a", doc, np.zeros((2, 5, 7), np.float32)))
    doc = minimal_doc(n=4)
    doc["views"][3]["K"][2] = [0, 0, 2]
    with pytest.raises(ScanError, match=r"scan.json: views\[3\].K: last row must be \[0, 0, 1\]"):
        Scan.load(write_raw(tmp_path / "b", doc, np.zeros((4, 5, 7), np.float32)))
    doc = minimal_doc()
    doc["views"][1]["T_world_source"][0][0] = 2.0
    with pytest.raises(ScanError, match=r"views\[1\].T_world_source: rotation is not orthonormal"):
        Scan.load(write_raw(tmp_path / "c", doc, np.zeros((2, 5, 7), np.float32)))
    doc = minimal_doc()
    del doc["views"][0]["T_world_source"]
    with pytest.raises(ScanError, match=r"views\[0\].T_world_source: missing"):
        Scan.load(write_raw(tmp_path / "d", doc, np.zeros((2, 5, 7), np.float32)))
    doc = minimal_doc()
    doc["views"][1]["height"] = 4
    with pytest.raises(ScanError, match=r"views\[1\].height: 4 does not match the projections \(5\)"):
        Scan.load(write_raw(tmp_path / "e", doc, np.zeros((2, 5, 7), np.float32)))


def test_bad_files(tmp_path):
    with pytest.raises(ScanError, match="not found"):
        Scan.load(tmp_path / "nothing")
    d = tmp_path / "j"
    d.mkdir()
    (d / SCAN_JSON).write_text("{not json")
    with pytest.raises(ScanError, match="invalid JSON"):
        Scan.load(d)
    (d / SCAN_JSON).write_text("[1, 2]")
    with pytest.raises(ScanError, match="JSON object"):
        Scan.load(d)
    d = write_raw(tmp_path / "k", minimal_doc())
    (d / PROJECTIONS_FILE).write_bytes(b"garbage")
    with pytest.raises(ScanError, match="projections: cannot read"):
        Scan.load(d)


@pytest.mark.parametrize("proj, msg", [
    (np.zeros((3, 5, 7), np.float32), r"views: 2 view\(s\) but projections.npy holds 3 image\(s\)"),
    (np.zeros((2, 5, 7), np.float64), "projections: dtype must be float32, got float64"),
    (np.zeros((2, 35), np.float32), r"projections: expected a float32 array \[N, H, W\]"),
    (np.full((2, 5, 7), np.nan, np.float32), r"projections\[0\]: contains NaN or inf"),
    (np.pad(np.full((1, 5, 7), np.inf, np.float32), ((1, 0), (0, 0), (0, 0))), r"projections\[1\]: contains NaN"),
    (np.full((2, 5, 7), -0.5, np.float32), r"projections\[0\]: negative line integral"),
])
def test_bad_arrays(tmp_path, proj, msg):
    d = write_raw(tmp_path, minimal_doc(), proj)
    with pytest.raises(ScanError, match=msg):
        Scan.load(d)


def test_negative_tolerance_and_raw(tmp_path):
    d = write_raw(tmp_path / "a", minimal_doc(), np.full((2, 5, 7), -0.05, np.float32))
    assert len(Scan.load(d)) == 2  # small negatives (noise) are fine
    with pytest.raises(ScanError):
        Scan.load(d, negative_tol=0.01)
    d = write_raw(tmp_path / "b", minimal_doc(image_kind="raw"), np.full((2, 5, 7), -7.0, np.float32))
    assert Scan.load(d).image_kind == "raw"


def test_in_memory_validation():
    s = make_scan()
    s.validate()
    with pytest.raises(ScanError, match="dtype must be float32"):
        Scan(s.views, s.projections.astype(np.float64)).validate()
    with pytest.raises(ScanError, match=r"views: 3 view\(s\)"):
        Scan(s.views, s.projections[:2]).validate()
    with pytest.raises(ScanError, match=r"views\[0\]: detector 8x6"):
        Scan(s.views, np.zeros((3, 6, 9), np.float32)).validate()
    with pytest.raises(ScanError, match="image_kind"):
        Scan(s.views, s.projections, "counts").validate()
    with pytest.raises(ScanError, match="reserved"):
        Scan(s.views, s.projections, extra={"views": 1}).validate()
    with pytest.raises(ScanError, match=r"views\[1\]: expected a View"):
        Scan([s.views[0], "x", s.views[2]], s.projections).validate()


def test_save_rejects_invalid_and_unserialisable(tmp_path):
    s = make_scan()
    bad = Scan(s.views, s.projections.astype(np.float64))
    with pytest.raises(ScanError):
        bad.save(tmp_path / "x")
    assert not (tmp_path / "x").exists()
    odd = Scan(s.views, s.projections, extra={"obj": object()})
    with pytest.raises(ScanError, match="JSON serialisable"):
        odd.save(tmp_path / "y")
    ok = Scan(s.views, s.projections, extra={"arr": np.arange(3), "f": np.float32(1.5)})
    ok.save(tmp_path / "z")
    assert Scan.load(tmp_path / "z").extra == {"arr": [0, 1, 2], "f": 1.5}


def test_subset():
    s = make_scan(n=5)
    t = s.subset([4, 1])
    assert len(t) == 2 and t.views[0] == s.views[4]
    np.testing.assert_array_equal(t.projections, s.projections[[4, 1]])
    t.projections[0] = 0
    assert s.projections[4].any()  # a copy
    t.views[0].meta["view_id"] = "changed"
    assert s.views[4].meta["view_id"] == "v4"
    assert len(s.subset(slice(0, 5, 2))) == 3
    assert len(s.subset(np.array([True, False, True, False, False]))) == 2
    assert len(s.subset(3)) == 1
    with pytest.raises(ScanError, match="empty"):
        s.subset([])
    with pytest.raises(ScanError, match="invalid selection"):
        s.subset([7])


@pytest.mark.parametrize("name", ["../outside.npy", "ABSOLUTE", "link.npy"])
def test_scan_files_outside_the_folder_are_refused_before_they_are_opened(tmp_path, name):
    """scan.json may only name files inside the scan folder: an absolute path, ``..`` or a symbolic link that
    leads out is refused by name, before the file is read (it could be any file on the machine)."""
    import json

    views = [View(np.array([[50.0, 0, 7.5], [0, 50.0, 5.5], [0, 0, 1]]), np.eye(4), 16, 12)]
    Scan(views, np.ones((1, 12, 16), np.float32)).save(tmp_path / "scan")
    outside = tmp_path / "outside.npy"
    np.save(outside, np.ones((1, 12, 16), np.float32))
    (tmp_path / "scan" / "link.npy").symlink_to(outside)
    doc = json.loads((tmp_path / "scan" / SCAN_JSON).read_text())
    doc["projections"] = str(outside) if name == "ABSOLUTE" else name
    (tmp_path / "scan" / SCAN_JSON).write_text(json.dumps(doc))
    opened = []
    real_load = np.load
    np.load = lambda *a, **k: opened.append(a[0]) or real_load(*a, **k)
    try:
        with pytest.raises(ScanError, match="outside the scan folder|absolute path"):
            Scan.load(tmp_path / "scan")
    finally:
        np.load = real_load
    assert opened == []
