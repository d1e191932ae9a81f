"""The bone target of a live reconstruction (ROS-free): bone-only line integrals per view id in, a bone volume
out after each final volume of the full target.

>>> bone = LiveBoneTarget(grid, config, target="auto", state_dir=d, reject=ledger_reject, on_result=publish)
>>> bone.note_view(view_id, view, image.shape)      # a line-integral view the front end accepted
>>> bone.submit_bone(view_id, view, bone_image)     # its bone image (either may come first); None = kept
>>> bone.on_volume("final", view_ids, token)        # a final volume of the full target was published
>>> bone.status()                                   # {"target", "state", "message", "bone_views", ...}

Pairing: a bone image belongs to the line-integral view of the same id. It is refused (``reject(key, name,
why)`` with a :data:`~ixgs_ros.core.shot_checks.REASONS` key, and logged by the caller's ledger) when its
values are not finite (``bone_image``), when its id already holds a bone image (``duplicate_id``), or when its
size, intrinsics or pose differ from its line view's (``bone_mismatch``; checked as soon as both are known,
whichever came first). A bone image whose line view this object never saw (taken up from a shot record,
restored from an older state) is used with its own pose.

When to run: after a ``final`` volume (and again after each later final volume with other training views), once
every training view of it has its bone image; ``target`` ``auto`` runs when any bone image arrived, ``both``
always waits for them (the status says which are missing), ``full`` never. The run
(:class:`~.bone.BoneReconstruction` on the configured engine, then the caller's ``postprocess(mu, views)``,
e.g. the bone pieces and their gate) happens in this object's worker thread, or with ``process=True`` in a
child process (RTK holds the interpreter lock for seconds), never in the caller's. Newest wins: a run whose
volume was superseded before it started is skipped, one in a thread is abandoned at its next progress call.

Persistence (``state_dir``): each accepted bone image is written, before :meth:`submit_bone` returns, to
``state_dir/bone_views/<hash>.npz`` (temporary file, fsync, rename: a crash leaves whole files only), the line
views' geometry to ``lines.json`` and the last final volume's view ids to ``final.json``; a new object on the
same ``state_dir`` restores them (and runs when they are complete). :meth:`reset` removes them.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.geometry import View
from ..core.scan import atomic_write
from ..core.volume import Grid
from .config import EngineConfig

__all__ = ["LiveBoneTarget", "BoneRun", "BONE_TARGETS", "BONE_DIR", "run_bone_job", "pose_mismatch"]

#: The node's ``target`` values (the CLI's ``--target`` without ``bone``: the live node always runs the full target).
BONE_TARGETS = ("auto", "full", "both")
BONE_DIR = "bone_views"
POSE_TOL_MM = 0.01       # source positions further apart than this are another pose
ROT_TOL = 1e-5           # largest difference of rotation matrix entries
K_REL_TOL = 1e-5


def _noop(*_a, **_k):
    return None


def pose_mismatch(a: View, b: View) -> str | None:
    """Why the bone view ``b`` is not the geometry of the line view ``a`` (None when it is)."""
    if (a.width, a.height) != (b.width, b.height):
        return f"image {b.width}x{b.height} but its line-integral view is {a.width}x{a.height}"
    if not np.allclose(a.K, b.K, rtol=K_REL_TOL, atol=1e-9):
        return "intrinsics differ from its line-integral view's"
    dt = float(np.linalg.norm(a.T_world_source[:3, 3] - b.T_world_source[:3, 3]))
    dr = float(np.abs(a.T_world_source[:3, :3] - b.T_world_source[:3, :3]).max())
    if dt > POSE_TOL_MM or dr > ROT_TOL:
        return f"pose differs from its line-integral view's ({dt:.3g} mm, rotation entries {dr:.2g})"
    return None


def run_bone_job(grid: Grid, config: EngineConfig, views, images, progress=None):
    """``(bone mu, info)`` of the bone target on these views (a plain function: it also runs in a child process)."""
    from .bone import BoneReconstruction

    rec = BoneReconstruction(grid, config)
    for v, img in zip(views, images):
        rec.add_view(v, img)
    info = rec.run(progress=progress)
    return rec.volume(), info


@dataclass
class BoneRun:
    """A finished run: the bone volume of the final volume ``token`` (the caller's) from ``view_ids``."""
    mu: np.ndarray
    view_ids: tuple
    token: object
    views: list
    info: dict
    extra: object = None      # postprocess(mu, views)'s first value
    seconds: dict = field(default_factory=dict)


class _Abandoned(Exception):
    pass


class LiveBoneTarget:
    """See the module docstring."""

    def __init__(self, grid: Grid, config: EngineConfig, *, target: str = "auto", state_dir=None, reject=None,
                 log=None, on_result=None, postprocess=None, process: bool = False):
        if target not in BONE_TARGETS:
            raise ValueError(f"target must be one of {', '.join(BONE_TARGETS)}, got {target!r}")
        self.grid, self.config, self.target = grid, config, target
        self.reject = reject or _noop
        self.log = log or _noop
        self.on_result = on_result or _noop
        self.postprocess = postprocess
        self.process = bool(process)
        self.dir = Path(state_dir) / BONE_DIR if state_dir else None
        self._cond = threading.Condition()
        self.bone: dict[str, tuple[View, np.ndarray, bool]] = {}   # id -> (view, image, checked against its line)
        self.lines: dict[str, View] = {}
        self._final: tuple | None = None       # (view ids, token) of the last final volume
        self._job: tuple | None = None         # (view ids, token, views, images) waiting for the worker
        self._queued_ids: tuple | None = None  # ids of the last run handed to the worker
        self._stop = False
        self._generation = 0                   # bumped by reset: results of an earlier generation are dropped
        self.state, self.detail = ("off" if target == "full" else "idle"), ""
        self.last: BoneRun | None = None
        self.runs = 0
        self._pool = None
        if self.dir is not None and target != "full":
            self._restore()
        self._thread = threading.Thread(target=self._work, name="ixgs_bone", daemon=True)
        if target != "full":
            self._thread.start()
            with self._cond:
                self._maybe_run()

    # ------------------------------------------------------------------------------ input
    def note_view(self, view_id: str, view: View, shape) -> None:
        """A line-integral view accepted by the front end (the first geometry of an id counts)."""
        if self.target == "full" or not view_id:
            return
        with self._cond:
            if view_id in self.lines:
                return
            self.lines[view_id] = view
            self._save_lines()
            entry = self.bone.get(view_id)
            if entry is not None and not entry[2]:
                why = pose_mismatch(view, entry[0])
                if why:
                    del self.bone[view_id]
                    self._remove_file(view_id)
                    if self._queued_ids and view_id in self._queued_ids:
                        self._queued_ids = None  # its run is stale; the next complete set runs again
                    self.reject("bone_mismatch", view_id, f"bone view: {why} (dropped)")
                else:
                    self.bone[view_id] = (entry[0], entry[1], True)
                    self._write_bone(view_id, *self.bone[view_id])
            self._maybe_run()

    def submit_bone(self, view_id: str, view: View, image, name: str | None = None) -> str | None:
        """Keep the bone image of ``view_id``; returns None when kept, else the reason it was refused (counted
        through ``reject``). Persisted before it returns."""
        name = name or view_id
        if self.target == "full":
            return None
        img = np.asarray(image)
        if img.ndim != 2 or img.shape != (view.height, view.width):
            return self._refuse("bone_image", name, f"bone image of shape {img.shape}, expected "
                                                    f"{(view.height, view.width)}")
        img = img.astype(np.float32)
        if not np.all(np.isfinite(img)):
            return self._refuse("bone_image", name, f"bone image with {int((~np.isfinite(img)).sum())} values "
                                                    "that are not finite")
        with self._cond:
            if view_id in self.bone:
                return self._refuse("duplicate_id", name, "a bone image of this view_id was already accepted")
            line = self.lines.get(view_id)
            checked = False
            if line is not None:
                why = pose_mismatch(line, view)
                if why:
                    return self._refuse("bone_mismatch", name, f"bone view: {why}")
                checked = True
            try:
                self._write_bone(view_id, view, img, checked)
            except OSError as exc:
                return self._refuse("record", name, f"bone view not written to {self.dir}: {exc}")
            self.bone[view_id] = (view, img, checked)
            self._maybe_run()
        return None

    def on_volume(self, stage: str, view_ids, token=None) -> None:
        """A volume of the full target was published; a ``final`` one is due its bone volume."""
        if self.target == "full" or stage != "final":
            return
        ids = tuple(str(v) for v in view_ids)
        with self._cond:
            self._final = (ids, token)
            self._save_final(ids)
            self._maybe_run()

    def _refuse(self, key, name, why) -> str:
        self.reject(key, name, why)
        return why

    # ------------------------------------------------------------------------------ decision
    def missing(self) -> list[str]:
        """Training views of the last final volume without their bone image."""
        with self._cond:
            if self._final is None:
                return []
            return [i for i in self._final[0] if i not in self.bone]

    def _maybe_run(self) -> None:
        """Hand a run to the worker when it is due (caller holds the lock)."""
        if self.target == "full" or self._final is None:
            return
        ids, token = self._final
        if not ids or (self.target == "auto" and not self.bone):
            return
        if any(i not in self.bone for i in ids) or ids == self._queued_ids:
            return
        views = [self.bone[i][0] for i in ids]
        images = [self.bone[i][1] for i in ids]
        self._job = (ids, token, views, images, self._generation)
        self._queued_ids = ids
        self._cond.notify_all()

    # ------------------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._job is not None)
                if self._stop:
                    return
                job, self._job = self._job, None
                self.state, self.detail = "running", f"from {len(job[0])} bone views"
            ids, token, views, images, gen = job
            t0 = time.perf_counter()
            try:
                mu, info = self._solve(ids, views, images)
                seconds = {"solve": time.perf_counter() - t0}
                extra, note = None, ""
                if self.postprocess is not None:
                    t1 = time.perf_counter()
                    extra, note = self.postprocess(mu, views)
                    seconds["outputs"] = time.perf_counter() - t1
                run = BoneRun(mu, ids, token, views, info, extra, seconds)
            except _Abandoned:
                self._settle()
                continue
            except Exception as exc:  # a failed run must not end the target: the next final volume tries again
                if self._stop:  # ended by close(): its child was stopped, not a failure
                    with self._cond:
                        self.state, self.detail = "idle", ""
                    return
                with self._cond:
                    if gen == self._generation:
                        self.state, self.detail = "failed", f"{type(exc).__name__}: {exc}"
                self.log("error", f"bone target from {len(ids)} views failed: {type(exc).__name__}: {exc}")
                continue
            if self._stale(ids, images):
                self.log("info", f"bone target: a run from {len(ids)} views dropped (its bone views changed)")
                self._settle()
                continue
            with self._cond:
                if gen != self._generation or self._stop:
                    continue
                self.last, self.runs = run, self.runs + 1
                if self._job is None:
                    self.state, self.detail = "done", note
            self.log("info", f"bone target: a bone volume from {len(ids)} views in {seconds['solve']:.1f} s"
                             + (f"; {note}" if note else ""))
            try:
                self.on_result(run)
            except Exception as exc:
                self.log("error", f"bone target result not delivered: {type(exc).__name__}: {exc}")

    def _settle(self) -> None:
        with self._cond:
            if self.state == "running" and self._job is None:
                self.state, self.detail = "idle", ""

    def _stale(self, ids, images) -> bool:
        """A bone image of this run was dropped or replaced since (its line view disagreed, or a reset)."""
        with self._cond:
            return any(self.bone.get(i, (None, None))[1] is not img for i, img in zip(ids, images))

    def _solve(self, ids, views, images):
        if not self.process:
            def progress(stage, done, total):
                if self._stop or self._job is not None or self._stale(ids, images):
                    raise _Abandoned()
            return run_bone_job(self.grid, self.config, views, images, progress=progress)
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._pool.submit(run_bone_job, self.grid, self.config, views, images).result()
        except BrokenProcessPool:
            self._pool = None  # the child died (e.g. out of memory): the next run starts a new one
            raise

    # ------------------------------------------------------------------------------ status, reset, close
    def status(self) -> dict:
        """``{"target", "state", "message", "bone_views", "missing", "runs"}`` (state: off | idle | waiting |
        running | done | failed)."""
        with self._cond:
            state, detail = self.state, self.detail
            missing = [i for i in self._final[0] if i not in self.bone] if self._final else []
            n_bone = len(self.bone)
            if self.target != "full" and state not in ("running",) and self._final is not None and missing:
                if self.target == "both" or n_bone:
                    state, detail = "waiting", (f"waiting for the bone views of {len(missing)} of "
                                                f"{len(self._final[0])} training views (xray_views_bone)")
            if self.target == "both" and n_bone == 0 and state == "idle":
                state, detail = "waiting", "no bone views received (xray_views_bone)"
        idle = (f"{n_bone} bone views, waiting for a final volume" if n_bone else
                "no bone views yet" if self.target == "auto" else "idle")
        text = {"off": "off (target full)", "idle": idle,
                "running": f"running ({detail})", "done": f"done ({detail})" if detail else "done",
                "failed": f"failed: {detail}", "waiting": detail}[state]
        return {"target": self.target, "state": state, "message": text, "bone_views": n_bone,
                "missing": len(missing), "runs": self.runs}

    def reset(self) -> None:
        """Drop every bone image, line geometry and result (and their files)."""
        with self._cond:
            self._generation += 1
            self.bone.clear()
            self.lines.clear()
            self._final = self._job = self._queued_ids = None
            self.last = None
            self.state, self.detail = ("off" if self.target == "full" else "idle"), ""
            if self.dir is not None and self.dir.exists():
                for p in self.dir.iterdir():
                    p.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the worker: a run going on in the child process is ended by stopping the child, then the pool
        is shut down and waited for, so that nothing of it is left for the interpreter's exit (a pool still
        running there writes to a closed pipe and prints a traceback)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        pool = self._pool
        if pool is not None and self._thread.is_alive():
            for proc in list(getattr(pool, "_processes", {}).values()):
                if proc.is_alive():
                    proc.terminate()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------------------------ persistence
    def _file(self, view_id: str) -> Path:
        return self.dir / (hashlib.sha256(view_id.encode()).hexdigest()[:32] + ".npz")

    def _write_bone(self, view_id, view: View, image, checked: bool) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._file(view_id), lambda f: np.savez(
            f, image=image, K=view.K, T=view.T_world_source, size=np.array([view.width, view.height]),
            view_id=np.array(view_id), checked=np.array(bool(checked))))

    def _remove_file(self, view_id) -> None:
        if self.dir is not None:
            self._file(view_id).unlink(missing_ok=True)

    def _write_json(self, name: str, doc) -> None:
        if self.dir is None:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.dir / name, lambda f: f.write(json.dumps(doc).encode()))
        except OSError as exc:
            self.log("error", f"bone target: could not write {self.dir / name}: {exc}")

    def _save_lines(self) -> None:
        self._write_json("lines.json", {k: {"K": v.K.tolist(), "T": v.T_world_source.tolist(), "width": v.width,
                                            "height": v.height} for k, v in self.lines.items()})

    def _save_final(self, ids) -> None:
        self._write_json("final.json", {"view_ids": list(ids)})

    def _restore(self) -> None:
        if not self.dir.is_dir():
            return
        for p in sorted(self.dir.glob("*.npz")):
            try:
                with np.load(p) as z:
                    w, h = (int(x) for x in z["size"])
                    vid = str(z["view_id"])
                    self.bone[vid] = (View(z["K"], z["T"], w, h), z["image"].astype(np.float32), bool(z["checked"]))
            except Exception as exc:  # one damaged file must not lose the others
                self.log("warn", f"bone target: {p} unreadable ({type(exc).__name__}: {exc}); skipped")
        try:
            if (self.dir / "lines.json").exists():
                doc = json.loads((self.dir / "lines.json").read_text())
                self.lines = {k: View(np.array(d["K"]), np.array(d["T"]), int(d["width"]), int(d["height"]))
                              for k, d in doc.items()}
            if (self.dir / "final.json").exists():
                self._final = (tuple(json.loads((self.dir / "final.json").read_text())["view_ids"]), None)
        except Exception as exc:
            self.log("warn", f"bone target: {self.dir} bookkeeping unreadable ({type(exc).__name__}: {exc})")
        if self.bone:
            self.log("info", f"bone target: restored {len(self.bone)} bone views from {self.dir}")
