"""Pose self-calibration: each training view's pose (and optionally principal point) is refined while the
engine initialises, by alternating a quick TV-SART solve with a 2D/3D registration of every view against it.

Why alternating and before the init: on a CPU schedule the accuracy comes from the TV-SART initial solve, not
from the Gaussian iterations, so corrections that only acted during the Gaussian stage would come too late.
The cascade (:func:`calibrated_init`, config section ``calibration``):

1. the *registration volume*: TV-SART (the configured solver) on the init's solve grid coarsened
   ``calibration.coarsen`` x, on detectors binned to its voxels, from the views with their current corrections
   (warm-started from the previous round's volume);
2. every training view is registered against it (:func:`~ixgs_ros.engine.registration.register_view`:
   Levenberg-Marquardt on its DRR), the corrections are composed, and the gauge is fixed
   (:func:`~ixgs_ros.engine.registration.fix_gauge`: no global rotation, translation or scaling, measured on
   the views that are not flagged);
3. ``calibration.rounds`` times, Anderson-accelerated over the rounds (restarted when a round moves the poses
   more than the one before: the extrapolation overshot); then the engine's normal init runs on the corrected
   views.

``auto`` (the default) runs the first round and goes on only when its corrections matter: when their RMS
displacement of the ROI centre reaches ``calibration.auto_min_shift_px`` detector pixels (a correction below that
is indistinguishable from the registration's own scatter on exact poses); else the poses stay as given (no flags)
and the normal init follows: the time of one round is all that ``auto`` costs on exact poses. After the last round
it keeps the corrections only when they make the views markedly more consistent: a quick solve from the corrected
poses must fit the images with an RMS misfit lower, by at least the fraction ``calibration.auto_min_gain``, than
the first round's solve from the poses as given. Images that disagree for other reasons (residual scatter, vendor
processing left by the standardization) pull the registration too, but its corrections then buy little consistency,
and fitting them costs accuracy. ``on`` always applies them (and reports the gain); ``off`` skips it. Scans with
fewer than ``calibration.min_views`` training views are never refined (the registration volume of so few views is
too streaky to register against).

A view is *flagged* when its correction is implausibly large for a tracked C-arm (a moved patient, a wrong
pose, a mixed-up shot): a rotation above ``max(flag_rotation_deg, flag_factor x the median)``, a source
translation above ``max(flag_translation_mm, flag_factor x the median)``, a displacement of the ROI centre in
the view above ``max(flag_shift_mm, flag_factor x the median)`` (what the images see of a pose error, whatever
its split between rotation and translation), or a registration that leaves it far
less consistent with the volume than the others (its NCC below ``flag_ncc`` too: on exact poses the views at the
ends of the arc score a little below the others, and that alone is no reason to flag them). A flagged view is
logged as a warning, kept out of the gauge and (``exclude_flagged``) out of the later rounds' registration
volume, and written with its flag (:meth:`PoseCalibration.to_json`, ``refined_poses.json``).

:class:`PoseCalibration` is the engine's record: the poses as given, the corrections, the flags; the engine
state saves and restores it (:meth:`to_dict` / :meth:`from_dict`).
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np

from ..core.geometry import View
from ..core.radiograph import bin_view
from ..core.solve_grid import coarse_binning, default_solve_grid
from . import init_solve
from .registration import (NPARAMS, DrrModel, compose, corrected_view, correction_sizes, fix_gauge,
                           register_view)
from .views import view_tensors

__all__ = ["PoseCalibration", "calibrated_init", "refinement_wanted", "REFINED_POSES_FORMAT"]

_log = logging.getLogger(__name__)

REFINED_POSES_FORMAT = "ixgs-refined-poses"


class PoseCalibration:
    """Per engine view index: the view as given, its correction (``[NPARAMS]``, see
    :mod:`~ixgs_ros.engine.registration`), its flag and the registration's numbers; plus how the last
    calibration went (``summary``)."""

    def __init__(self):
        self.given: dict[int, View] = {}
        self.corrections: dict[int, np.ndarray] = {}
        self.flags: dict[int, str] = {}           # view index -> why it is flagged
        self.registration: dict[int, dict] = {}   # view index -> ncc / cost before and after
        self.summary: dict = {}

    # -------------------------------------------------------------------------------- views
    def given_view(self, index: int, current: View) -> View:
        """The view ``index`` as it was given (``current`` when it was never corrected)."""
        return self.given.get(index, current)

    def correction(self, index: int) -> np.ndarray:
        return self.corrections.get(index, np.zeros(NPARAMS)).copy()

    @property
    def applied(self) -> bool:
        return any(np.any(p != 0) for p in self.corrections.values())

    def set(self, eng, index: int, p) -> None:
        """Give engine view ``index`` the correction ``p`` (relative to its pose as given): its view, intrinsics
        and pose tensors are replaced."""
        vd = eng.views[index]
        given = self.given.setdefault(index, vd.view)
        p = np.asarray(p, dtype=np.float64).reshape(NPARAMS)
        self.corrections[index] = p.copy()
        vd.view = corrected_view(given, p) if np.any(p != 0) else given
        vd.K, vd.T = view_tensors(vd.view, eng.frame, eng.device)

    def apply(self, eng) -> None:
        """Set every stored correction on ``eng``'s views (after a state is loaded)."""
        for i, p in sorted(self.corrections.items()):
            if i < len(eng.views):
                self.set(eng, i, p)

    def snapshot(self, eng):
        """What :meth:`restore` needs to put this record and ``eng``'s views back (an initialisation that fails
        or is stopped leaves the engine as it was)."""
        return copy.deepcopy(self.__dict__), [(vd.view, vd.K, vd.T) for vd in eng.views]

    def restore(self, eng, snap) -> None:
        state, views = snap
        self.__dict__.update(state)
        for vd, (v, K, T) in zip(eng.views, views):
            vd.view, vd.K, vd.T = v, K, T

    # -------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        """JSON-ready state (the engine state's ``pose_calibration``); the given views live in the state's
        ``views``."""
        return {"corrections": {str(i): [float(x) for x in p] for i, p in sorted(self.corrections.items())},
                "flags": {str(i): s for i, s in sorted(self.flags.items())},
                "registration": {str(i): r for i, r in sorted(self.registration.items())},
                "summary": self.summary}

    @classmethod
    def from_dict(cls, d: dict | None, given_views: list[View]) -> "PoseCalibration":
        cal = cls()
        if not d:
            return cal
        for k, p in (d.get("corrections") or {}).items():
            i = int(k)
            p = np.asarray(p, dtype=np.float64)
            if p.shape != (NPARAMS,) or not np.all(np.isfinite(p)) or not 0 <= i < len(given_views):
                raise ValueError(f"pose_calibration: bad correction for view {k}")
            cal.corrections[i] = p
            cal.given[i] = given_views[i]
        cal.flags = {int(k): str(v) for k, v in (d.get("flags") or {}).items()}
        cal.registration = {int(k): dict(v) for k, v in (d.get("registration") or {}).items()}
        cal.summary = dict(d.get("summary") or {})
        return cal

    def to_json(self, eng) -> dict:
        """The content of ``refined_poses.json``: per engine view the pose as given and as corrected, the
        correction and its size, the registration's consistency before and after, and the flag."""
        pivot = eng.grid.center
        out = []
        for i, vd in enumerate(eng.views):
            g = self.given_view(i, vd.view)
            p = self.correction(i)
            out.append({
                "index": i, "holdout": bool(vd.holdout), "refined": i in self.corrections,
                "K_given": g.K.tolist(), "T_world_source_given": g.T_world_source.tolist(),
                "K": vd.view.K.tolist(), "T_world_source": vd.view.T_world_source.tolist(),
                "correction": {"rotation_vector_deg": np.degrees(p[:3]).tolist(), "translation_mm": p[3:6].tolist(),
                               "principal_point_px": p[6:8].tolist()},
                "size": correction_sizes(g, p, pivot),
                "registration": self.registration.get(i, {}),
                "flagged": i in self.flags, "flag_reason": self.flags.get(i, ""),
            })
        return {"format": REFINED_POSES_FORMAT, "version": 1, "units": "mm, degrees, detector pixels",
                "conventions": "T' = [exp(omega) R | s + t] of the given pose [R | s] (rotation about the source, "
                               "world axes); K' = K with the principal point shifted; size.shift_* is the "
                               "displacement of the ROI centre in the view",
                "summary": self.summary, "flagged": sorted(self.flags), "views": out}


# ---------------------------------------------------------------------------------------------- decisions
def refinement_wanted(cfg, n_train: int) -> bool:
    """Whether the engine runs the calibration at an initialisation (``cfg`` an EngineConfig)."""
    c = cfg.calibration
    return c.mode != "off" and n_train >= c.min_views


def _flags(sizes: list[dict], ncc: np.ndarray, c) -> dict[int, str]:
    """Position in ``sizes`` -> why that view's correction is implausible (see the module docstring)."""
    rot = np.array([s["rotation_deg"] for s in sizes])
    tr = np.array([s["translation_mm"] for s in sizes])
    sh = np.array([s["shift_mm"] for s in sizes])
    lim_r = max(c.flag_rotation_deg, c.flag_factor * float(np.median(rot)))
    lim_t = max(c.flag_translation_mm, c.flag_factor * float(np.median(tr)))
    lim_s = max(c.flag_shift_mm, c.flag_factor * float(np.median(sh)))
    # consistency: 1 - NCC after registration, against the others' (robust spread)
    err = 1.0 - ncc
    med = float(np.median(err))
    mad = 1.4826 * float(np.median(np.abs(err - med))) + 1e-6
    out = {}
    for k, s in enumerate(sizes):
        why = []
        if rot[k] > lim_r:
            why.append(f"rotation {rot[k]:.2f} deg > {lim_r:.2f}")
        if tr[k] > lim_t:
            why.append(f"source translation {tr[k]:.1f} mm > {lim_t:.1f}")
        if sh[k] > lim_s:
            why.append(f"moves the ROI centre by {sh[k]:.1f} mm > {lim_s:.1f}")
        if err[k] > med + c.flag_inconsistency * mad and err[k] > 2.0 * med and ncc[k] < c.flag_ncc:
            why.append(f"inconsistent with the volume after registration (NCC {ncc[k]:.3f}, median "
                       f"{1.0 - med:.3f})")
        if why:
            out[k] = "; ".join(why)
    return out


# ---------------------------------------------------------------------------------------------- the cascade
#: the registration volume keeps at least this many voxels across its smallest side
MIN_REGISTRATION_VOXELS = 8


def _registration_grid(views, proj, grid, cfg):
    """The init's solve grid coarsened by ``calibration.coarsen`` (less when it would keep fewer than
    :data:`MIN_REGISTRATION_VOXELS` across), padded by two voxels: with wrong poses the material can appear
    beyond the box that holds it, and SART diverges at the faces of a grid that misses material."""
    solve = default_solve_grid(views, grid, projections=proj, max_voxels=cfg.init.solve_max_voxels)
    f = max(1, min(int(cfg.calibration.coarsen), int(min(solve.shape)) // MIN_REGISTRATION_VOXELS))
    return (solve.coarsened(f) if f > 1 else solve).padded(2)


def _binned_masks(views: list[View], masks, b: int) -> list:
    """Per view the binned validity (a binned pixel is valid when every detector pixel in it is), or None."""
    out = []
    for v, m in zip(views, masks if masks is not None else [None] * len(views)):
        out.append(None if m is None else bin_view(v, np.asarray(m, np.float32), b)[1] > 0.999)
    return out


def calibrated_init(eng, views: list[View], proj: np.ndarray, masks=None, warm=None, show=None):
    """The engine's initial solve with pose self-calibration (see the module docstring): ``views`` / ``proj``
    are the training views (world frame, in ``eng.train_indices`` order) and their line integrals, ``masks``
    their validity (``[H, W]`` bool per view, None where all pixels count). The quick solves see the masked
    pixels inpainted (as the init does); the registration and its consistency (NCC) use only the valid ones:
    an inpainted continuation is no measurement, and fitting it pulls exact poses away. ``warm`` and ``show`` are
    handed to the final :func:`~ixgs_ros.engine.init_solve.init_tv_sart`. Sets the corrections
    on ``eng``'s views and returns ``(InitSolve, the training views as corrected)``."""
    cfg, c = eng.config, eng.config.calibration
    cal: PoseCalibration = eng.calibration
    idx = eng.train_indices
    given = [cal.given_view(i, eng.views[i].view) for i in idx]
    p = np.stack([cal.correction(i) for i in idx])
    pivot = eng.grid.center
    gauge_points = _lattice(eng.grid)
    t0 = time.perf_counter()
    rgrid = _registration_grid(views, proj, eng.grid, cfg)
    b = coarse_binning(views, rgrid)
    bmasks = _binned_masks(views, masks, b)
    solver = init_solve.make_solver(cfg)
    free = np.array([True] * 6 + [c.principal_point] * 2)
    prior = 1.0 / np.array([np.radians(c.prior_rotation_deg)] * 3 + [c.prior_translation_mm] * 3
                           + [c.prior_principal_point_px / b] * 2) ** 2
    stage = f"pose refinement ({float(rgrid.spacing.max()):.3g} mm)"
    x = None
    flags: dict[int, str] = {}
    decision = "applied"
    hist: list[tuple[np.ndarray, np.ndarray]] = []  # (corrections in, corrections out) of each round
    ncc0 = ncc1 = np.zeros(len(idx))
    last_step = np.inf  # RMS image displacement of the ROI centre made by the previous round
    misfit0 = np.zeros((len(idx), 2))  # per view: squared residual and pixel count against the first volume
    for r in range(c.rounds):
        bv, bp = init_solve._binned([corrected_view(g, q) for g, q in zip(given, p)], proj, rgrid, b)
        use = _used(len(idx), flags, c)
        eng._report(stage, r, c.rounds)
        x = solver.sart_tv([bv[k] for k in use], bp[use], rgrid, init_solve.init_passes(cfg, c.passes, len(use)),
                           c.tv_weight, lam=cfg.init.relaxation, x0=x)
        model = DrrModel(x, rgrid, device=cfg.device)
        dps, ncc0, ncc1 = [], np.zeros(len(idx)), np.zeros(len(idx))
        for k, (v, im) in enumerate(zip(bv, bp)):
            off = p[k].copy()
            off[6:8] /= b
            m = bmasks[k]
            res = register_view(model, v, im, iterations=c.iterations, free=free, prior=prior, offset=off, mask=m)
            dp = res.correction.copy()
            dp[6:8] *= b  # binned pixels -> detector pixels
            dps.append(dp)
            drr = model.sample(v, with_jacobian=False)[0]
            ncc0[k] = _ncc(drr, im) if m is None else _ncc(drr[m], im[m])
            ncc1[k] = res.ncc
            if r == 0:
                misfit0[k] = _sq_misfit(drr, im, m)
        new = np.stack([compose(q, dp) for q, dp in zip(p, dps)])
        sizes = [correction_sizes(g, q, pivot) for g, q in zip(given, new)]
        flags = _flags(sizes, ncc1, c)
        trusted = np.array([k not in flags for k in range(len(idx))])
        new = fix_gauge(new, given, gauge_points, trusted=trusted)
        shift = float(np.sqrt(np.mean([correction_sizes(g, q, pivot)["shift_px"] ** 2
                                       for g, q in zip(given, new)])))
        if r == 0 and c.mode == "auto" and shift < c.auto_min_shift_px and not cal.applied:
            decision = (f"auto: not applied (RMS shift of the ROI centre {shift:.2f} px < "
                        f"{c.auto_min_shift_px:g} px: the poses are consistent)")
            p = np.zeros_like(p)
            flags = {}
            break
        step = _step_px(given, p, new, pivot, trusted)
        if step > last_step:  # the round moved the poses more than the one before: the extrapolation overshot,
            hist = []         # so restart the acceleration from this round's plain output
        last_step = step
        hist = (hist + [(p, new)])[-(c.acceleration + 1):]
        p = _anderson(hist, trusted=trusted)
    consistency = None
    if decision == "applied" and not cal.applied:
        # how much more consistent the corrections make the views (auto requires a marked gain): a quick solve
        # from the corrected poses, started as the first round's was, against that first one, over the views it
        # uses
        use = _used(len(idx), flags, c)
        bv, bp = init_solve._binned([corrected_view(given[k], p[k]) for k in use], proj[use], rgrid, b)
        x1 = solver.sart_tv(bv, bp, rgrid, init_solve.init_passes(cfg, c.passes, len(use)), c.tv_weight,
                            lam=cfg.init.relaxation)
        model = DrrModel(x1, rgrid, device=cfg.device)
        m1 = np.stack([_sq_misfit(model.sample(v, with_jacobian=False)[0], im, bmasks[k])
                       for k, v, im in zip(use, bv, bp)])
        before, after = _rms(misfit0[use]), _rms(m1)
        gain = 1.0 - after / max(before, 1e-30)
        consistency = {"misfit_given": before, "misfit_corrected": after, "gain": gain}
        if c.mode == "auto" and gain < c.auto_min_gain:
            decision = (f"auto: not applied (the corrections make the views only {100 * gain:.1f} % more "
                        f"consistent, < {100 * c.auto_min_gain:g} %: differences between the images themselves, "
                        "not pose errors)")
            p = np.zeros_like(p)
            flags = {}
    eng._report(stage, c.rounds, c.rounds)
    for k, i in enumerate(idx):
        cal.set(eng, i, p[k])
        cal.registration[i] = {"ncc_before": float(ncc0[k]), "ncc_after": float(ncc1[k])}
    cal.flags = {idx[k]: why for k, why in flags.items()}
    sizes = [correction_sizes(g, q, pivot) for g, q in zip(given, p)]
    for k, why in sorted(flags.items()):
        s = sizes[k]
        _log.warning("view %d: implausibly large pose correction: %s (correction applied: %.2f deg, %.1f mm, "
                     "%.1f mm at the ROI centre); a moved patient or a wrong pose? check this shot", idx[k], why,
                     s["rotation_deg"], s["translation_mm"], s["shift_mm"])
    cal.summary = {
        "mode": c.mode, "decision": decision, "applied": bool(np.any(p != 0)), "rounds": c.rounds,
        "views": len(idx), "flagged": sorted(cal.flags), "time_s": round(time.perf_counter() - t0, 3),
        "registration_grid_mm": float(rgrid.spacing.max()), "binning": int(b),
        "rms_shift_px": float(np.sqrt(np.mean([s["shift_px"] ** 2 for s in sizes]))),
        "max_rotation_deg": float(max(s["rotation_deg"] for s in sizes)),
        "max_translation_mm": float(max(s["translation_mm"] for s in sizes)),
    }
    if consistency is not None:  # the data-fit test (RMS line-integral misfit of a quick solve)
        cal.summary["consistency"] = consistency
    out_views = [eng.views[i].view for i in idx]
    init = init_solve.init_tv_sart(out_views, proj, eng.grid, cfg, progress=eng._report, warm=warm, show=show)
    return init, out_views


def _anderson(hist: list[tuple[np.ndarray, np.ndarray]], trusted=None) -> np.ndarray:
    """The next corrections from the rounds' ``(in, out)`` pairs by Anderson acceleration (type II): the
    affine combination of the outputs whose combined residual ``out - in`` is smallest. One round is a
    fixed-point map whose slow directions (errors the volume absorbs, shared by many views) shrink by only a
    fraction per round; Anderson extrapolates along them. With one pair: its output. The weights come from the
    ``trusted`` views (``[N]`` bool, default all) only, and the others take their latest output: a flagged
    view's large, erratic steps would otherwise decide the weights of every view."""
    last = hist[-1][1].copy()
    if len(hist) == 1:
        return last
    t = np.ones(len(last), bool) if trusted is None else np.asarray(trusted, bool)
    if not t.any():
        return last
    G = np.stack([(o[t] - i[t]).ravel() for i, o in hist], 1)
    A = G.T @ G
    A += 1e-10 * (np.trace(A) + 1e-30) * np.eye(len(hist))
    w = np.linalg.solve(A, np.ones(len(hist)))
    w /= w.sum()
    last[t] = sum(wk * o for wk, (_, o) in zip(w, hist))[t]
    return last


def _used(n: int, flags: dict, c) -> list[int]:
    """The view positions a registration volume is solved from: all but the flagged ones
    (``calibration.exclude_flagged``)."""
    return [k for k in range(n) if k not in flags or not c.exclude_flagged]


def _step_px(given, p, q, point, trusted) -> float:
    """RMS over the ``trusted`` views of how far the world ``point`` moves in the image between the corrections
    ``p`` and ``q`` of the views as ``given`` (detector pixels): the size of one round's fixed-point step."""
    d = [np.linalg.norm(corrected_view(g, a).project(point[None])[0] - corrected_view(g, b).project(point[None])[0])
         for g, a, b, t in zip(given, p, q, trusted) if t]
    return float(np.sqrt(np.mean(np.square(d)))) if d else 0.0


def _lattice(grid, n: int = 4) -> np.ndarray:
    """``[n**3, 3]`` world points spanning ``grid``'s voxel centres."""
    lo = grid.index_to_world(np.zeros(3))
    hi = grid.index_to_world(np.asarray(grid.shape, dtype=np.float64) - 1.0)
    ax = [np.linspace(a, b, n) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3)


def _sq_misfit(drr, image, mask) -> tuple[float, int]:
    """(sum of squared residuals, pixel count) of a DRR against its image over the ``mask`` (None: all)."""
    r = np.asarray(drr, np.float64) - np.asarray(image, np.float64)
    r = r if mask is None else r[mask]
    return float((r * r).sum()), int(r.size)


def _rms(parts) -> float:
    """The RMS residual of ``[N, 2]`` (sum of squares, count) rows."""
    parts = np.asarray(parts, np.float64).reshape(-1, 2)
    return float(np.sqrt(parts[:, 0].sum() / max(parts[:, 1].sum(), 1.0)))


def _ncc(a, b) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-30))
