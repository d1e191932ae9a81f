"""The live session policy (ixgs_ros.engine.live), without ROS: views one by one, previews, re-initialisation,
refinement, rejection, persistence across a restart, stopping."""
import json

import numpy as np
import pytest

from ixgs_ros.core.volume import Grid
from ixgs_ros.engine.live import STATE_FILE, LiveConfig, LiveSession
from test_engine import small_config, sphere_views


@pytest.fixture(scope="module")
def grid():
    return Grid.centered(24, 2.5, (0, 0, 0))


class Recorder:
    def __init__(self):
        self.volumes, self.logs = [], []

    def on_volume(self, snap):
        self.volumes.append(snap)

    def log(self, level, text):
        self.logs.append((level, text))

    def said(self, level, fragment):
        return [t for lv, t in self.logs if lv == level and fragment in t]


def _session(grid, rec, live=None, **kw):
    cfg = small_config(iterations=10, densify=False)
    return LiveSession(grid, cfg, live or LiveConfig(min_views=3, chunk_iterations=5, publish_period_s=1e-3),
                       on_volume=rec.on_volume, log=rec.log, **kw)


def _run_until(session, done, rounds=60):
    for _ in range(rounds):
        session.work_once()
        if done():
            return
    raise AssertionError(f"not reached after {rounds} rounds: {session.status()}")


def test_views_arrive_one_by_one_previews_then_gaussians_then_reinit_and_final(grid):
    views, images = sphere_views(n=6)
    rec = Recorder()
    s = _session(grid, rec)
    assert s.status().state == "idle"
    for k in range(2):
        assert s.submit(f"v{k}", views[k], images[k]) is None
    s.work_once()
    st = s.status()
    assert st.state == "waiting_for_views" and "waiting for 1 more training view" in st.message
    s.submit("v2", views[2], images[2])
    _run_until(s, lambda: s.status().state == "converged")
    stages = [v.stage for v in rec.volumes]
    assert stages[0] == "preview" and stages[-1] == "final", stages
    assert rec.volumes[-1].view_ids == ("v0", "v1", "v2") and rec.volumes[-1].mu.shape == grid.shape
    assert s.engine.status().init_views == 3
    # 5 >= 1.5 x 3 training views: re-initialised from all of them, then a new schedule
    for k in (3, 4):
        s.submit(f"v{k}", views[k], images[k])
    _run_until(s, lambda: s.engine.status().init_views == 5 and s.status().state == "converged")
    assert rec.said("info", "re-initialising from 5 training views")
    assert rec.volumes[-1].view_ids == ("v0", "v1", "v2", "v3", "v4") and rec.volumes[-1].stage == "final"
    # one more view after the schedule, no re-init due (6 < 7.5): refined at the final rate
    it = s.engine.iteration
    s.submit("v5", views[5], images[5])
    _run_until(s, lambda: s.status().state == "converged" and s.engine.iteration > it)
    assert s.engine.iteration == it + s.live.refine_iterations and s.engine.status().init_views == 5


def test_duplicates_and_bad_views_are_refused_without_losing_accepted_ones(grid):
    views, images = sphere_views(n=3)
    rec = Recorder()
    s = _session(grid, rec)
    assert s.submit("a", views[0], images[0]) is None
    assert "duplicate view_id" in s.submit("a", views[1], images[1])
    s.submit("bad", views[1], images[1][:-2])        # wrong size: the engine refuses it in the worker
    s.submit("", views[2], images[2])                # no id: accepted (the ROS node refuses empty ids itself)
    s.work_once()
    assert len(s.engine.views) == 2 and s.view_ids == ["a", ""]
    assert rec.said("error", "rejected view 'bad': the engine refused it")
    assert s.submit("bad", views[1], images[1]) is None  # a refused id may be sent again
    # the content of an accepted view under another id: one shot sent twice
    assert "the same image and pose as a view already accepted" in s.submit("c", views[2], images[2].copy())
    assert s.status().rejected == {"duplicate_content": 1, "duplicate_id": 1, "engine": 1}


def test_heldout_views_are_scored_not_trained(grid):
    views, images = sphere_views(n=5)
    rec = Recorder()
    s = _session(grid, rec, LiveConfig(min_views=3, heldout_views=1, chunk_iterations=10, publish_period_s=1e-3))
    for k in range(4):
        s.submit(f"v{k}", views[k], images[k])
    _run_until(s, lambda: s.status().state == "converged")
    assert s.engine.holdout_indices == [0] and s.status().views_used == 3
    assert np.isfinite(s.status().heldout_psnr_2d) and rec.volumes[-1].view_ids == ("v1", "v2", "v3")


def test_a_restarted_session_keeps_every_accepted_view_and_its_ids(grid, tmp_path):
    views, images = sphere_views(n=4)
    rec = Recorder()
    s = _session(grid, rec, state_dir=tmp_path)
    for k in range(2):
        s.submit(f"v{k}", views[k], images[k])
    s.work_once()                                     # accepted and saved, not yet optimising
    meta = json.loads((tmp_path / STATE_FILE).read_text())
    assert meta["view_ids"] == ["v0", "v1"]
    # the process dies here; a new session restores what was accepted
    rec2 = Recorder()
    s2 = LiveSession.restore(tmp_path, grid, small_config(iterations=10, densify=False),
                             LiveConfig(min_views=3, publish_period_s=1e-3), on_volume=rec2.on_volume, log=rec2.log)
    assert s2.view_ids == ["v0", "v1"] and len(s2.engine.views) == 2
    assert "duplicate" in s2.submit("v1", views[1], images[1])
    s2.submit("v2", views[2], images[2])
    _run_until(s2, lambda: s2.status().state == "converged")
    assert rec2.volumes[-1].view_ids == ("v0", "v1", "v2")


def test_restore_refuses_another_grid_and_names_the_state_dir(grid, tmp_path):
    views, images = sphere_views(n=1)
    s = _session(grid, Recorder(), state_dir=tmp_path)
    s.submit("v0", views[0], images[0])
    s.work_once()
    with pytest.raises(ValueError, match="holds a reconstruction on grid"):
        LiveSession.restore(tmp_path, Grid.centered(20, 2.5, (0, 0, 0)), small_config())


def test_stop_during_the_initialisation_rolls_it_back_and_keeps_the_views(grid):
    views, images = sphere_views(n=3)
    rec = Recorder()
    s = _session(grid, rec)
    for k in range(3):
        s.submit(f"v{k}", views[k], images[k])
    s.on_volume = lambda snap: s.stop()              # stop at the first preview, inside the initialisation
    s.work_once()
    assert s.engine.model is None and len(s.engine.views) == 3
    assert rec.said("info", "initialisation stopped by the shutdown")


def test_live_config_is_validated():
    for bad in (dict(min_views=0), dict(reinit_growth=0.5), dict(chunk_iterations=0), dict(publish_period_s=0),
                dict(snapshot_share=1.0)):
        with pytest.raises(ValueError):
            LiveConfig(**bad).validate()


def test_snapshots_take_at_most_their_share_of_the_worker_time(grid):
    """The snapshot period stretches when a snapshot (voxelising, held-out score, state save) is slow, so that
    snapshots take at most ``snapshot_share`` of the worker's time; fast snapshots keep the period."""
    s = _session(grid, Recorder(), LiveConfig(publish_period_s=5.0))
    assert s.snapshot_period() == 5.0
    s._snapshot_s = 0.5
    assert s.snapshot_period() == 5.0
    s._snapshot_s = 3.0  # e.g. 128³ with 100k Gaussians on 2 cores
    period = s.snapshot_period()
    assert period == pytest.approx(12.0) and s._snapshot_s / (period + s._snapshot_s) == \
        pytest.approx(s.live.snapshot_share)


def test_reset_and_reinit_requests(grid, tmp_path):
    """An operator's reset drops every view (also after a restart, from state_dir) and a requested re-init
    initialises again from all training views; both happen in the worker, between chunks."""
    import threading

    views, images = sphere_views(n=4)
    rec = Recorder()
    cfg = small_config(iterations=10, densify=False, **{"init.solver": "torch"})  # no RTK to load: quicker
    s = LiveSession(grid, cfg, LiveConfig(min_views=3, chunk_iterations=5, publish_period_s=1e-3),
                    on_volume=rec.on_volume, log=rec.log, state_dir=tmp_path)
    assert "nothing to re-initialise yet" in s.request_reinit()
    for k in range(3):
        s.submit(f"v{k}", views[k], images[k])
    _run_until(s, lambda: s.status().state == "converged")
    assert s.request_reinit() is None
    it = s.engine.iteration
    _run_until(s, lambda: s.engine.iteration > it and s.status().state == "converged")
    assert rec.said("info", "re-initialising from 3 training views (the current volume was initialised from 3); "
                            "requested")
    assert s.status().volume_stage == "final" and s.status().volume_view_ids == ("v0", "v1", "v2")
    t = threading.Thread(target=lambda: s.reset(timeout=30.0, meta={"record_reset_seq": 7}))
    t.start()
    _run_until(s, lambda: not t.is_alive() and len(s.engine.views) == 0, rounds=200)
    t.join()
    st = s.status()
    assert st.state == "idle" and st.volume_stage == "" and s.meta == {"record_reset_seq": 7}
    assert s.submit("v0", views[0], images[0]) is None  # ids and contents of the dropped views are free again
    s.work_once()
    s2 = LiveSession.restore(tmp_path, grid, cfg, LiveConfig(min_views=3))
    assert s2.view_ids == ["v0"] and s2.meta == {"record_reset_seq": 7}
    assert "the same image and pose" in s2.submit("other", views[0], images[0])  # content digests are restored


def test_the_session_in_a_child_process(grid, tmp_path):
    """ProcessRunner: views go to the session in its own process, status and volumes come back, reset and re-init
    requests are answered, close saves; a second runner on the same state_dir waits for the first to let it go,
    and a state of another grid is refused with the child's one-line reason."""
    import time

    from ixgs_ros.engine.live_process import ProcessRunner

    views, images = sphere_views(n=4)
    cfg = small_config(iterations=10, densify=False, **{"init.solver": "torch"})
    rec = Recorder()
    r = ProcessRunner(grid, cfg, LiveConfig(min_views=3, chunk_iterations=5), state_dir=tmp_path,
                      on_volume=rec.on_volume, log=rec.log, preload_rtk=False)

    def wait(cond, timeout=120.0):
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.05)
        return cond()

    try:
        assert r.info["restored_views"] == 0 and not r.knows("v0")
        for k in range(3):
            r.submit(f"v{k}", views[k], images[k])
        r.submit("v0", views[3], images[3])             # a duplicate id: refused and counted by the child
        r.reject("saturated", "'x'", "a front end's own check")
        assert r.knows("v0")
        assert wait(lambda: r.status().get("state") == "converged"), r.status()
        st = r.status()
        assert st["views_used"] == 3 and st["rejected"] == {"duplicate_id": 1, "saturated": 1}
        assert st["volume_stage"] == "final" and st["volume_view_ids"] == ["v0", "v1", "v2"]
        assert rec.volumes and rec.volumes[-1].stage == "final" and r.last_volume.mu.shape == grid.shape
        assert rec.said("error", "rejected view 'v0': duplicate view_id")
        assert r.request_reinit() is None
        assert r.reset(timeout=60.0, meta={"record_reset_seq": 2})
        assert wait(lambda: r.status().get("state") == "idle" and r.meta.get("record_reset_seq") == 2)
        r.submit("v3", views[3], images[3])
        assert wait(lambda: r.status().get("views_used") == 1)
    finally:
        r.close()
    r2 = ProcessRunner(grid, cfg, LiveConfig(min_views=3), state_dir=tmp_path, preload_rtk=False)
    try:
        assert r2.info["restored_views"] == 1 and r2.knows("v3") and r2.meta == {"record_reset_seq": 2}
    finally:
        r2.close()
    with pytest.raises(ValueError, match="holds a reconstruction on grid"):
        ProcessRunner(Grid.centered(20, 2.5, (0, 0, 0)), cfg, LiveConfig(), state_dir=tmp_path, preload_rtk=False)


def test_an_initialisation_gives_way_while_young_and_until_it_has_shown_a_volume(grid):
    """Young (no TV-SART solve finished: the pose refinement, the first coarse solve) any new shot supersedes an
    initialisation; later only reinit_growth x more views do, and once it has handed out a preview none."""
    from ixgs_ros.engine.live import _Superseded

    views, images = sphere_views(n=8)
    s = LiveSession(grid, small_config(iterations=10), LiveConfig(min_views=3))
    progress = s._progress_callback("initialising from 4 training views", 4)
    progress("pose refinement (11 mm)", 4, 4)
    progress("coarse TV-SART (5.5 mm)", 10, 48)
    s.submit("v4", views[4], images[4])  # one shot: 5 < 1.5 x 4, but the initialisation is young
    with pytest.raises(_Superseded, match="abandoned in its coarse TV-SART \\(5.5 mm\\) \\(11/48\\)"):
        progress("coarse TV-SART (5.5 mm)", 11, 48)
    progress = s._progress_callback("initialising from 4 training views", 4)
    s._pending.clear()
    progress("coarse TV-SART (5.5 mm)", 48, 48)  # its first solve is done: no longer young
    s.submit("v5", views[5], images[5])
    progress("coarse TV-SART (2.75 mm)", 3, 24)  # 5 < 1.5 x 4: it goes on
    s.submit("v6", views[6], images[6])
    with pytest.raises(_Superseded, match="2 more shots arrived, it starts again from all 6"):
        progress("coarse TV-SART (2.75 mm)", 4, 24)
    s._pending.clear()
    progress = s._progress_callback("initialising from 4 training views", 4)
    progress("coarse TV-SART (2.75 mm)", 24, 24)
    s._preview(np.zeros(grid.shape, np.float32), "coarse TV-SART solution")
    for k in (5, 6, 7):  # 7 >= 1.5 x 4
        s.submit(f"w{k}", views[k], images[k] * 1.01)
    progress("fine TV-SART (1 mm)", 1, 16)  # a volume is out: it runs to its end, whatever waits
    assert s.last_volume.stage == "preview"


@pytest.mark.parametrize("supersede", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_an_initialisation_gives_way_to_one_from_the_shots_that_arrived(grid, supersede):
    """Shots keep coming during a long first initialisation: once those waiting reach reinit_growth times the
    views it started from, it is abandoned in its first stage and the next one starts from all of them (the
    final volume comes from every shot, with no re-initialisation after it); with supersede_init off it runs to
    its end and a re-initialisation follows."""
    import threading
    import time

    views, images = sphere_views(n=5)
    for supersede in (supersede,):
        rec = Recorder()
        cfg = small_config(iterations=10, densify=False, **{"init.solver": "torch", "init.passes": 400})
        s = LiveSession(grid, cfg, LiveConfig(min_views=3, chunk_iterations=5, publish_period_s=1e-3,
                                              supersede_init=supersede), on_volume=rec.on_volume, log=rec.log)
        for k in range(3):
            s.submit(f"v{k}", views[k], images[k])
        worker = threading.Thread(target=s.run, daemon=True)
        worker.start()
        deadline = time.monotonic() + 120
        while s._init_progress is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s._init_progress is not None and s._init_progress[3] == 400  # in its first stage (400 passes)
        for k in (3, 4):
            s.submit(f"v{k}", views[k], images[k])
        while not (s.status().state == "converged" and len(s.engine.views) == 5) and time.monotonic() < deadline + 300:
            time.sleep(0.05)
        s.stop()
        worker.join()
        assert s.status().state == "converged" and rec.volumes[-1].view_ids == ("v0", "v1", "v2", "v3", "v4")
        abandoned = rec.said("info", "initialising from 3 training views abandoned in its")
        reinits = rec.said("info", "re-initialising from 5 training views")
        if supersede:
            assert abandoned and not reinits and "2 more shots arrived, it starts again from all 5" in abandoned[0]
            assert all(len(v.view_ids) == 5 for v in rec.volumes)  # nothing from the abandoned 3-view init
        else:
            assert not abandoned and reinits
