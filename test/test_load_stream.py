"""A fluoroscopy-like stream (benchmarks/load_stream.py) at a small size: 2 s of 128x128 16-bit frames at 30 Hz
with a 100 Hz tracker into the running pipeline, ingest node with frame_policy still. One view per stop of the
C-arm, every other frame dropped and counted by reason, every view accepted by the reconstruction, no node dies.
Full size (60 s of 512x512): the benchmark."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import load_stream  # noqa: E402

pytestmark = pytest.mark.ros


def _check(r):
    i = r["ingest"]
    assert all(r["alive_at_end"].values()) and set(r["exit_codes"].values()) == {0}, r["exit_codes"]
    assert i["frames.received"] == r["frames_sent"] == int(r["duration_s"] * r["rate_hz"])
    assert r["views"] == r["stops_expected"] == r["views_recorded"] == r["standardized"]
    assert r["reconstruction_views_used"] == r["views"] and r["accepted_views_dropped"] == 0
    dropped = i["frames.dropped.moving"] + i["frames.dropped.same_position"] + i.get("rejected.sync", 0)
    assert i["frames.paired"] == r["views"] + i["frames.dropped.moving"] + i["frames.dropped.same_position"]
    assert dropped + r["views"] >= r["frames_sent"] - 1  # every frame is a view or a counted drop (1 may wait)
    assert i["frames.dropped.moving"] > 0 and i["frames.dropped.same_position"] > 0


def test_short_stream_one_view_per_stop(tmp_path):
    _check(load_stream.stream(2.0, 30.0, 128, still_s=0.8, move_s=0.3, workdir=tmp_path, log=lambda *a: None))


@pytest.mark.slow
def test_full_stream(tmp_path):
    r = load_stream.stream(60.0, 30.0, 512, workdir=tmp_path, log=lambda *a: None)
    _check(r)
    assert r["rss_mb"]["ingest"]["peak_hwm"] < 1024
