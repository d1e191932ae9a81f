"""The shot record (ixgs_ros.core.shot_record) keeps every shot through crashes, with ids unique across restarts;
the live input checks (ixgs_ros.core.shot_checks); shots that arrive out of stamp order are both paired
(ixgs_ros.core.shot_sync); recorded shots a session lacks are taken up (ixgs_ros.engine.live_takeup)."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from ixgs_ros.core import shot_checks as sc
from ixgs_ros.core.geometry import View, look_at
from ixgs_ros.core.shot_record import RecordError, ShotRecord
from ixgs_ros.core.shot_sync import ShotAssembler


def view(k: int) -> View:
    a = np.deg2rad(20.0 * k)
    return View([[300.0, 0.0, 15.5], [0.0, 300.0, 11.5], [0.0, 0.0, 1.0]],
                look_at([500 * np.sin(a), -500 * np.cos(a), 0.0], [0, 0, 0], [0, 0, 1]), 32, 24)


def raw(k: int) -> np.ndarray:
    return (1000 + 37 * k + np.arange(24 * 32).reshape(24, 32) % 100).astype(np.uint16)


def test_append_read_and_ids_continue_after_a_restart(tmp_path):
    rec = ShotRecord(tmp_path / "rec")
    ids = [rec.append(view(k), raw(k), view_id=lambda s: f"shot_{s:03d}", stamp=10.0 + k, image_kind="raw",
                      i0=4000.0).view_id for k in range(3)]
    assert ids == ["shot_000", "shot_001", "shot_002"]
    again = ShotRecord(tmp_path / "rec")  # a restarted writer continues the sequence
    assert again.next_seq == 3
    assert again.append(view(3), raw(3), view_id=lambda s: f"shot_{s:03d}", stamp=13.0, image_kind="raw").view_id \
        == "shot_003"
    shots = again.entries()
    assert [s.seq for s in shots] == [0, 1, 2, 3] and [s.stamp for s in shots] == [10.0, 11.0, 12.0, 13.0]
    assert shots[0].meta == {"i0": 4000.0}
    np.testing.assert_array_equal(shots[1].image(), raw(1))
    assert shots[1].image().dtype == np.uint16
    np.testing.assert_allclose(shots[2].view().T_world_source, view(2).T_world_source)
    assert [s.seq for s in again.entries(after_seq=1)] == [2, 3]
    scan = again.to_scan()
    assert scan.image_kind == "raw" and scan.projections.shape == (4, 24, 32)
    assert [v.meta["view_id"] for v in scan.views] == ids + ["shot_003"]


def test_a_crash_mid_write_leaves_whole_shots_only(tmp_path):
    rec = ShotRecord(tmp_path / "rec")
    rec.append(view(0), raw(0), view_id="a", stamp=1.0, image_kind="raw")
    # a writer killed between the image and its JSON, and one killed inside a temporary file
    np.save(rec.shots_dir / "000001.npy", raw(1))
    (rec.shots_dir / ".000002.json.tmp-123-abcd").write_text("{\"seq\": 2, \"view")
    again = ShotRecord(tmp_path / "rec")
    assert [s.view_id for s in again.entries()] == ["a"]
    assert again.next_seq == 1  # the stray image is overwritten by the next shot
    again.append(view(1), raw(5), view_id="b", stamp=2.0, image_kind="raw")
    np.testing.assert_array_equal(again.entries()[1].image(), raw(5))


def test_damaged_shots_are_skipped_or_refused(tmp_path, caplog):
    rec = ShotRecord(tmp_path / "rec")
    for k in range(3):
        rec.append(view(k), raw(k), view_id=f"s{k}", stamp=float(k + 1), image_kind="raw")
    (rec.shots_dir / "000001.json").write_text("{broken")
    doc = json.loads((rec.shots_dir / "000002.json").read_text())
    doc["image"] = "../../etc/passwd"
    (rec.shots_dir / "000002.json").write_text(json.dumps(doc))
    with caplog.at_level("WARNING"):
        assert [s.view_id for s in rec.entries()] == ["s0"]
    assert "000001.json" in caplog.text and "must be a file name inside" in caplog.text
    np.save(rec.shots_dir / "000000.npy", raw(9))  # the image changed after it was recorded
    with pytest.raises(RecordError, match="does not match its sha256"):
        rec.entries()[0].image()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "record.json").write_text(json.dumps({"format": "something", "version": 1}))
    with pytest.raises(RecordError, match="not an ixgs-shot-record folder"):
        ShotRecord(tmp_path / "other")
    with pytest.raises(RecordError, match="image shape"):
        rec.append(view(0), raw(0)[:, :30], view_id="x", stamp=1.0, image_kind="raw")
    with pytest.raises(RecordError, match="reserved"):
        rec.append(view(0), raw(0), view_id="x", stamp=1.0, image_kind="raw", seq=5)


# ------------------------------------------------------------------------------------------------ checks
def test_saturated_frames_are_refused():
    full = np.full((24, 32), 65535, np.uint16)
    assert "100.0 % of the pixels are saturated (at 65535)" in sc.saturation_reason(full)
    part = raw(0)
    part[:, :4] = 65535  # 12.5 % burnt out: still a usable shot
    assert sc.saturation_reason(part) is None
    assert sc.saturation_reason(np.full((4, 4), 255, np.uint8)) is not None
    assert sc.saturation_reason(np.full((4, 4), 3.0e38, np.float32)) is None  # floats carry no known maximum


def test_stamps_ids_encodings_and_digests():
    assert sc.stamp_reason(0.0, 1000.0)[0] == "stamp_zero"
    key, why = sc.stamp_reason(1000.0 + 3600.0, 1000.0)
    assert key == "stamp_future" and "3600.0 s ahead" in why
    assert sc.stamp_reason(1002.0, 1000.0) is None and sc.stamp_reason(10.0, 1000.0) is None
    assert sc.view_id_reason("  ") and sc.view_id_reason("shot_1") is None
    assert sc.stamp_reason(-5.0, 1000.0)[0] == "stamp_invalid"
    assert sc.stamp_reason(10.0, 1000.0, nanosec=2_000_000_000)[0] == "stamp_invalid"
    assert sc.view_id_problem("")[0] == "empty_id" and sc.view_id_problem("shot_\u00df") is None
    assert sc.view_id_problem("x" * 300)[0] == "invalid_id" and sc.view_id_problem("a\n[ERROR] b")[0] == "invalid_id"
    counts = np.full((8, 8), 30000, np.uint16)
    assert "the i0 does not belong" in sc.raw_i0_reason(counts, 1.0) and sc.raw_i0_reason(counts, 30000.0) is None
    assert "no signal" in sc.no_signal_reason(np.zeros((8, 8), np.uint16)) and sc.no_signal_reason(counts) is None
    assert "uint16" in sc.line_integral_dtype_reason(np.uint16) and sc.line_integral_dtype_reason(np.float32) is None
    v, img = view(1), raw(1).astype(np.float32)
    d = sc.content_digest(v.K, v.T_world_source, img)
    assert d == sc.content_digest(v.K.copy(), v.T_world_source + 1e-9, img.copy())
    assert d != sc.content_digest(v.K, view(2).T_world_source, img)
    assert d != sc.content_digest(v.K, v.T_world_source, img + 1)
    ledger = sc.RejectionLedger()
    ledger.count("saturated")
    ledger.count("saturated")
    ledger.count("stamp_zero")
    assert ledger.snapshot() == {"saturated": 2, "stamp_zero": 1} and ledger.total == 3
    with pytest.raises(KeyError):
        ledger.count("no_such_reason")


def test_shots_in_reverse_stamp_order_are_both_paired():
    """Each shot's pose samples are published after its image, and the later shot comes first: the older image
    waits for its own pose instead of being paired with the newer one's (or dropped)."""
    K = view(0).K
    s = ShotAssembler(max_skew_s=0.01, max_wait_s=1.0)
    out = []
    for t in (2.0, 1.0):  # reverse order
        out += s.add_camera_info(t, K, 32, 24, now=0.0)[0]
        shots, dropped = s.add_image(t, raw(int(t)), now=0.0)
        assert not dropped
        out += shots
        for dt in (0.0, 0.005):
            out += s.add_pose(t + dt, view(int(t)).T_world_source, now=0.0)[0]
    assert sorted(sh.stamp for sh in out) == [1.0, 2.0]
    for sh in out:
        np.testing.assert_allclose(sh.view.T_world_source, view(int(sh.stamp)).T_world_source)
    # an image with no pose within the skew is still dropped, once it waited max_wait_s
    s.add_image(5.0, raw(5), now=0.0)
    s.add_pose(6.0, view(6).T_world_source, now=0.0)
    assert s.poll(now=0.5) == ([], [])
    shots, dropped = s.poll(now=1.5)
    assert not shots and "no source_pose (nearest 1.000 s away)" in dropped[0].reason


# ------------------------------------------------------------------------------------------------ take-up
class FakeRunner:
    def __init__(self, known=()):
        self.known = set(known)
        self.got = []
        self.meta = {}

    def knows(self, vid):
        return vid in self.known

    def submit(self, vid, v, image, name=None, quiet_duplicate=False):
        self.known.add(vid)
        self.got.append((vid, v, image))


def test_takeup_submits_the_recorded_shots_the_session_lacks(tmp_path):
    from ixgs_ros.engine.live_takeup import RESET_SEQ_KEY, RecordTakeUp

    i0 = 4000.0
    rec = ShotRecord(tmp_path / "rec")
    for k in range(5):
        li = 0.5 + 0.01 * k + np.zeros((24, 32))
        rec.append(view(k), np.round(i0 * np.exp(-li)).astype(np.uint16), view_id=f"shot_{k}", stamp=float(k + 1),
                   image_kind="raw", i0=i0)
    runner = FakeRunner(known={"shot_1", "shot_3"})
    take = RecordTakeUp(runner, tmp_path / "rec", downsample=2, grace_s=1.0)
    assert take.poll(now=time.time()) == 0  # all younger than the grace time: left to the messages
    assert take.poll(now=time.time() + 5.0) == 3
    assert [g[0] for g in runner.got] == ["shot_0", "shot_2", "shot_4"]
    vid, v, image = runner.got[1]
    assert v.shape == (12, 16) and image.dtype == np.float32  # binned 2x2, like standardize_node would
    np.testing.assert_allclose(image, 0.52, atol=2e-3)  # -ln(I / i0) with the recorded i0
    assert take.poll(now=time.time() + 5.0) == 0  # nothing twice
    # after a reset, the shots recorded before it belong to the previous acquisition
    runner2 = FakeRunner()
    runner2.meta[RESET_SEQ_KEY] = 3
    assert RecordTakeUp(runner2, tmp_path / "rec", grace_s=0.0).poll() == 1 and runner2.got[0][0] == "shot_4"
    # a record folder that does not exist yet is not an error
    assert RecordTakeUp(FakeRunner(), tmp_path / "missing").poll() == 0
    assert not os.path.exists(tmp_path / "missing")
