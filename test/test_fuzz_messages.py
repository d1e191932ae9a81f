"""Message fuzzing of the running nodes (benchmarks/fuzz_messages.py) at a small size: a few hundred generated
malformed and adversarial Image / CameraInfo / PoseStamped / XrayView messages mixed with valid shots, sent to
the ingest, standardize and reconstruction nodes in their own processes. No node dies, every valid shot is
accepted by the reconstruction, nothing that must be refused is accepted, every refusal is counted by reason and
the accounting of the reconstruction's status matches the cases followed. Full size (10,000 messages): slow."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fuzz_messages  # noqa: E402

pytestmark = pytest.mark.ros


def _check(r, n):
    assert r["messages"] >= n and r["crashes"] == 0, (r["alive_at_end"], r["exit_codes"])
    assert not any(r["tracebacks"].values()), r["tracebacks"]
    assert r["valid_lost"] == {} and r["valid_accepted"] == r["valid_cases"] > 0
    assert r["garbage_accepted"] == {}, r["garbage_accepted"]
    assert r["accounting_ok"], r["reconstruction"]
    # every message type of every target was mutated, and the refusals were counted under several reasons
    fields = {f.split(".")[0] for t in r["mutations_per_field"].values() for f in t}
    assert {"Image", "CameraInfo", "PoseStamped", "XrayView"} <= fields, fields
    for target in fuzz_messages.TARGETS:
        assert sum(r["mutations_per_field"][target].values()) > 0, target
        assert sum(r["rejections_per_reason"][target].values()) > 0, target
    assert len(set().union(*[set(v) for v in r["rejections_per_reason"].values()])) >= 6
    logged = r["refusals_logged"]
    assert logged["standardize"]["without_log_line"] == 0
    assert logged["ingest"]["rejections_counted"] >= logged["ingest"]["refused_cases"]


def test_small_message_fuzz_no_crash_no_garbage_no_loss(tmp_path):
    _check(fuzz_messages.fuzz(400, seed=3, workdir=tmp_path, log=lambda *a: None), 400)


@pytest.mark.slow
def test_full_message_fuzz(tmp_path):
    _check(fuzz_messages.fuzz(10_000, seed=0, workdir=tmp_path, log=lambda *a: None), 10_000)
