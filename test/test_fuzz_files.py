"""File fuzzing (benchmarks/fuzz_files.py) at a small size: every mutated scan folder, NIfTI, safetensors, DICOM
and poses file gives a clear one-line error (or is still a valid input), never a traceback or half-written
output. The full size (2,000 mutants) is the slow test and the benchmark."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fuzz_files  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:builtin type")


def _check(stats, n):
    assert stats["mutants"] == n and not stats["failures"], stats["failures"][:5]
    assert len(stats["by_kind"]) >= 12, stats["by_kind"]       # the mutations really vary
    assert stats["library"].get("error", 0) >= 0.8 * n          # most mutants are refused by Scan.load ...
    assert set(stats.get("accepted_kinds", {})) <= {k for k in stats.get("accepted_kinds", {})
                                                    if "extra_key" in k or "zeros" in k}  # ... the rest are valid
    assert sum(stats["cli"].values()) > 0 and set(stats["cli"]) == {"error"}
    assert stats["files_other"]["error"] == stats["files_other"]["cases"] > 0
    assert stats["imports"]["cases"] > 0 and "traceback" not in stats["imports"]["cli"]


def test_small_file_fuzz_finds_no_traceback(tmp_path):
    _check(fuzz_files.fuzz(60, seed=3, cli_every=6, workdir=tmp_path), 60)


@pytest.mark.slow
def test_full_file_fuzz_finds_no_traceback(tmp_path):
    _check(fuzz_files.fuzz(2000, seed=0, cli_every=10, workdir=tmp_path), 2000)


def test_a_mutation_that_must_be_refused_is(tmp_path):
    """The harness itself: a scan whose projections are pickled objects is refused with a message, not loaded."""
    import random
    import shutil

    rng = random.Random(0)
    while True:
        shutil.rmtree(tmp_path / "s", ignore_errors=True)
        folder = fuzz_files.base_scan(tmp_path / "s")
        if fuzz_files.mutate(folder, rng) == "npy_pickle":
            break
    outcome, msg = fuzz_files.run_library(folder)
    assert outcome == "error" and "projections" in msg
