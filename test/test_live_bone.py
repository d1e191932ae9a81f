"""The live bone target without ROS (ixgs_ros.engine.live_bone + ixgs_ros.outputs.bone_live): bone images paired
with their views by id and checked against them, the run after a final volume once every training view has its
bone image, the pieces and their gate, persistence across a restart, refusals counted, reset."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import bone_phantom as bp
from ixgs_ros.core.geometry import View
from ixgs_ros.core.shot_checks import RejectionLedger
from ixgs_ros.core.volume import hu_to_mu
from ixgs_ros.engine import EngineConfig
from ixgs_ros.engine.live_bone import BONE_DIR, LiveBoneTarget

BONE_SMALL = {"bone.coarse_passes": 8, "bone.fine_passes": 4, "bone.pass_views": 0, "init.solver": "torch",
              "device": "cpu"}


@pytest.fixture(scope="module")
def scene():
    vs, _full, bone, truth, _bones = bp.scene(n=12, arc=160.0, width=40)
    return vs, bone, truth


class Harness:
    def __init__(self, tmp_path, target="auto", postprocess=None):
        self.ledger = RejectionLedger()
        self.results = []
        self.done = threading.Event()
        self.log = []

        def on_result(run):
            self.results.append(run)
            self.done.set()

        self.bone = LiveBoneTarget(bp.ROI, EngineConfig.from_dict(BONE_SMALL), target=target, state_dir=tmp_path,
                                   reject=lambda key, name, why: self.ledger.count(key), on_result=on_result,
                                   postprocess=postprocess, log=lambda level, text: self.log.append((level, text)))

    def wait(self, timeout=60.0):
        assert self.done.wait(timeout), (self.bone.status(), self.log)
        self.done.clear()
        return self.results[-1]


def shifted(view: View, mm: float) -> View:
    T = np.array(view.T_world_source)
    T[0, 3] += mm
    return View(view.K, T, view.width, view.height)


def test_pairing_run_refusals_restart_and_reset(scene, tmp_path):
    from ixgs_ros.outputs.bone_live import bone_live_outputs, navigation_note
    from ixgs_ros.outputs.live import LiveOutputConfig

    vs, bone, truth = scene
    ids = [f"shot_{k:02d}" for k in range(len(vs))]
    cfg = LiveOutputConfig(mesh_smooth_iterations=0)

    def post(mu, views):
        out, nav = bone_live_outputs(mu, bp.ROI, views, cfg)
        return (out, nav), navigation_note(nav)

    h = Harness(tmp_path, postprocess=post)
    b = h.bone
    assert b.status()["state"] == "idle"
    # line views first for all but the last; the last one's bone image comes before its line view
    for i, v, img in zip(ids[:-1], vs[:-1], bone[:-1]):
        b.note_view(i, v, img.shape)
    for i, v, img in zip(ids[:-1], vs[:-1], bone[:-1]):
        assert b.submit_bone(i, v, img) is None
    # refusals: not finite, another pose than its line view's, a repeated id; none of them touches what was kept
    bad = bone[0].copy()
    bad[3, 4] = np.nan
    assert "not finite" in b.submit_bone("other", vs[0], bad)
    b.note_view("extra", vs[1], bone[1].shape)
    assert "pose differs" in b.submit_bone("extra", shifted(vs[1], 2.0), bone[1])
    assert "already accepted" in b.submit_bone(ids[2], vs[2], bone[2])
    assert h.ledger.snapshot() == {"bone_image": 1, "bone_mismatch": 1, "duplicate_id": 1}
    assert b.status()["bone_views"] == len(ids) - 1
    # a preview or gaussian volume does not run it; a final one waits for the missing bone view
    b.on_volume("gaussian", ids, token=1)
    b.on_volume("final", ids, token=2)
    st = b.status()
    assert st["state"] == "waiting" and st["missing"] == 1 and "1 of 12" in st["message"]
    assert not h.done.wait(0.5)
    # the last bone image before its line view: checked when the line view comes; a mismatching one is dropped
    assert b.submit_bone(ids[-1], shifted(vs[-1], 1.0), bone[-1]) is None
    assert b.status()["missing"] == 0                         # complete: a run starts with the pose it has ...
    b.note_view(ids[-1], vs[-1], bone[-1].shape)              # ... until the line view says it was wrong
    assert h.ledger.snapshot()["bone_mismatch"] == 2 and b.status()["missing"] == 1
    assert b.submit_bone(ids[-1], vs[-1], bone[-1]) is None   # the right one: a new run
    run = h.wait()
    assert len(h.results) == 1                                # the stale run's result was not delivered
    assert np.array_equal(run.views[-1].T_world_source, vs[-1].T_world_source)
    assert run.token == 2 and run.view_ids == tuple(ids) and b.status()["state"] == "done"
    mu = run.mu
    level = float(hu_to_mu(200.0))
    inside, far = truth > 0.5 * bp.BONE, truth == 0
    from scipy.ndimage import binary_dilation

    far &= ~binary_dilation(truth > 0, iterations=2)
    assert np.median(mu[inside]) > level and float(np.mean(mu[far])) < 0.02 * level
    out, nav = run.extra
    assert len(nav["pieces"]) >= 3 and len(out.pieces) == len(nav["pieces"])
    assert all(0.0 <= p["confidence"] <= 1.0 for p in nav["pieces"])
    assert {"coverage", "tangential", "reason"} <= set(nav["pieces"][0]["confidence_terms"])
    assert b.status()["message"].startswith("done (") and "for navigation" in b.status()["message"]
    files = sorted((tmp_path / BONE_DIR).glob("*.npz"))
    assert len(files) == len(ids)
    b.close()

    # restart: every accepted bone image and the last final volume's ids come back, and it runs again
    h2 = Harness(tmp_path)
    b2 = h2.bone
    assert b2.status()["bone_views"] == len(ids)
    for i, img in zip(ids, bone):
        assert np.array_equal(b2.bone[i][1], img.astype(np.float32))
    assert b2.bone[ids[-1]][2]                               # checked against its line view before the restart
    run2 = h2.wait()
    assert run2.view_ids == tuple(ids) and np.allclose(run2.mu, mu, atol=1e-5)
    # a line view known before the restart still checks a bone image that comes after it
    b2.reset()
    assert not list((tmp_path / BONE_DIR).glob("*.npz")) and b2.status()["bone_views"] == 0
    b2.note_view("late", vs[0], bone[0].shape)
    b2.close()
    h3 = Harness(tmp_path)
    assert "pose differs" in h3.bone.submit_bone("late", shifted(vs[0], 0.5), bone[0])
    assert h3.ledger.snapshot() == {"bone_mismatch": 1}
    h3.bone.close()


def test_targets_full_and_both(scene, tmp_path):
    vs, bone, _ = scene
    full = Harness(tmp_path / "full", target="full").bone
    assert full.submit_bone("a", vs[0], bone[0]) is None and full.status()["state"] == "off"
    full.on_volume("final", ["a"])
    assert full.status()["bone_views"] == 0 and not (tmp_path / "full" / BONE_DIR).exists()
    full.close()
    h = Harness(tmp_path / "both", target="both")
    assert h.bone.status() == {**h.bone.status(), "state": "waiting",
                               "message": "no bone views received (xray_views_bone)"}
    h.bone.on_volume("final", ["a", "b"])
    assert h.bone.status()["missing"] == 2 and "2 of 2" in h.bone.status()["message"]
    auto = Harness(tmp_path / "auto", target="auto").bone
    auto.on_volume("final", ["a", "b"])
    assert auto.status()["state"] == "idle"           # auto without any bone view: nothing to wait for
    with pytest.raises(ValueError, match="target must be one of auto, full, both"):
        LiveBoneTarget(bp.ROI, EngineConfig(), target="bone")
    h.bone.close()
    auto.close()
