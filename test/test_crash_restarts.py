"""kill -9 of the live nodes (benchmarks/crash_restarts.py) at a small size: the ingest node during ingestion
and the reconstruction node during optimisation, each restarted at once with the same record_dir / state_dir.
No accepted (recorded) shot is lost, the reconstruction comes back with every shot recorded so far, and its
final volume holds them all. Full size (20 kills, final volumes against an uninterrupted run): slow."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import crash_restarts  # noqa: E402

pytestmark = pytest.mark.ros


def _check(r, kills):
    assert r["kills"] == kills and r["shots_lost"] == 0 and r["lost_after_restart"] == 0, r
    for s in r["scenarios"]:
        assert s["shots_recorded"] == s["shots_sent"] == s["final_view_count"], s
        assert all(e.get("complete", True) for e in s["kills"]), s["kills"]
        assert set(s["exit_codes"].values()) == {0}, s["exit_codes"]
        assert s["psnr_3d"] is not None and s["psnr_3d"] > 10.0


def test_two_kills_lose_no_shot(tmp_path):
    r = crash_restarts.run([crash_restarts.CI_SCENARIO], n_shots=8, baseline=False, workdir=tmp_path,
                           log=lambda *a: None)
    _check(r, 2)
    assert r["kills_by_moment"] == {"ingestion": 1, "optimisation": 1}


@pytest.mark.slow
def test_twenty_kills_lose_no_shot_and_volumes_match(tmp_path):
    r = crash_restarts.run(crash_restarts.SCENARIOS, n_shots=10, baseline=True, workdir=tmp_path, log=lambda *a: None)
    _check(r, 20)
    assert r["volumes_compared"] >= 3
    assert all(abs(s["psnr_diff_db"]) < 1.0 for s in r["scenarios"])
