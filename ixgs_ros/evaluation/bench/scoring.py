"""Scores of one run against the ground truth, and margins of ixgs over the best RTK baseline."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from .cases import IXGS_METHODS, RESULTS_SCHEMA, RTK_METHODS

def ok_records(records, case: str, n: int | None = None):
    """The successful records of ``case`` (and of ``n`` views when given)."""
    return [r for r in records if r["case"] == case and "error" not in r and (n is None or r["n_views"] == n)]


def score(vol, pred, gt, grid, labels, held_proj, surface: bool) -> dict:
    from ..metrics import psnr_2d, ssim_2d, volume_metrics

    m = volume_metrics(vol, gt)
    m["psnr_2d"] = psnr_2d(pred, held_proj)
    m["ssim_2d"] = ssim_2d(pred, held_proj)
    if surface:
        from ..accuracy import bone_surface_distance

        try:
            s = bone_surface_distance(vol, grid, gt, grid, labels=labels, n_points=20_000)
            m["surface"] = {"mean_mm": s["mean"], "hd95_mm": s["hd95"],
                            "per_vertebra": {k: {"mean_mm": v["mean"], "hd95_mm": v["hd95"]}
                                             for k, v in s["per_vertebra"].items()}}
        except ValueError as exc:  # no bone surface at the threshold (e.g. a failed reconstruction)
            m["surface"] = {"mean_mm": None, "hd95_mm": None, "per_vertebra": {}, "error": str(exc)}
    return m


def load_baseline(path) -> dict:
    """An earlier ``ixgs bench`` results.json (``--baseline-from``, whose RTK records may stand in for runs not
    repeated here, or ``--from-results``); a missing, unreadable or foreign file raises ValueError naming it."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        res = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {p}: {exc}") from None
    if not isinstance(res, dict) or res.get("schema") != RESULTS_SCHEMA or not isinstance(res.get("records"), list):
        raise ValueError(f"{p} is not an ixgs bench results file (schema {RESULTS_SCHEMA})")
    res["_path"] = str(p)
    return res


def import_baseline_records(results: dict, baselines: list, say: Callable[[str], None] = lambda m: None) -> int:
    """Append the RTK records of ``baselines`` (results dicts of earlier runs) that were run on the same scan
    (its cache name), case, view count and training / held-out views as a subset of ``results``; each is marked
    ``imported_from``. Records of other scans or subsets are skipped, with a message. Returns how many joined."""
    mine = {c["name"]: c for c in results["cases"]}
    added = 0
    for base in baselines:
        theirs = {c["name"]: c for c in base.get("cases", [])}
        for r in base["records"]:
            if r.get("method") not in RTK_METHODS or "error" in r or r.get("case") not in mine:
                continue
            case, other = mine[r["case"]], theirs.get(r["case"])
            subset = case["subsets"].get(str(r["n_views"]))
            if subset is None:
                continue
            if (other is None or Path(other["scan_dir"]).name != Path(case["scan_dir"]).name
                    or other["subsets"].get(str(r["n_views"])) != subset):
                say(f"[bench] baseline {base['_path']}: {r['case']} n={r['n_views']} {r['method']} skipped "
                    "(another scan or other training / held-out views)")
                continue
            results["records"].append({**r, "imported_from": base["_path"]})
            added += 1
    return added


def margins(records: list, cases: list) -> list[dict]:
    """ixgs against the best RTK method of the same case and view count (3D PSNR), one entry per ixgs record.

    Each entry names the best RTK method, the voxel size it solved on and whether that is coarser than the ROI
    grid: on full-body cases the default solve grid is coarse (2.75 mm) and finer ones (``--rtk-spacing``) make
    RTK stronger, so such a margin is an upper bound on the margin against the strongest RTK."""
    from ..baselines import solved_coarser

    roi_mm = {c["name"]: float(np.max(c["grid"]["spacing_mm"])) for c in cases}
    out = []
    for r in records:
        if r["method"] not in IXGS_METHODS or "error" in r:
            continue
        rtk = [q for q in ok_records(records, r["case"], r["n_views"]) if q["method"] in RTK_METHODS]
        if not rtk:
            continue
        best = max(rtk, key=lambda q: q["metrics"]["psnr_3d"])
        spacing = (best.get("info") or {}).get("solve_spacing_mm")  # FDK's: the ROI grid's own
        coarse = spacing is not None and r["case"] in roi_mm and solved_coarser(spacing, roi_mm[r["case"]])
        out.append({"case": r["case"], "n_views": r["n_views"], "method": r["method"],
                    "psnr_3d": r["metrics"]["psnr_3d"], "ssim_3d": r["metrics"]["ssim_3d"],
                    "best_rtk": best["method"], "best_rtk_iterations": best.get("iterations"),
                    "best_rtk_psnr_3d": best["metrics"]["psnr_3d"], "best_rtk_ssim_3d": best["metrics"]["ssim_3d"],
                    "best_rtk_solve_spacing_mm": spacing, "rtk_grid_coarser_than_roi": bool(coarse),
                    "margin_psnr_3d": r["metrics"]["psnr_3d"] - best["metrics"]["psnr_3d"],
                    "margin_ssim_3d": r["metrics"]["ssim_3d"] - best["metrics"]["ssim_3d"]})
    return out


def roi_beyond_ct_mm(scan_extra: dict) -> float | None:
    """How far (mm, the largest overshoot along any world axis) the ROI box of a simulated scan reaches beyond
    the box of the CT it was simulated from, from the scan's ``extra`` (``roi.grid``, ``simulation.ct_shape`` and
    ``ct_affine``, as ``ixgs simulate`` writes them); 0 when it lies inside, None when the scan does not say.
    The ground truth is 0 there (the phantom ends, a patient would not): e.g. the L1 cases of the bundled chest
    CT, whose last vertebra is L3 (docs/findings.md)."""
    from ...core.volume import Grid

    try:
        sim, roi = scan_extra["simulation"], scan_extra["roi"]["grid"]
        ct = Grid(tuple(int(n) for n in sim["ct_shape"]), np.asarray(sim["ct_affine"], float))
        box = Grid(tuple(int(n) for n in roi["shape"]), np.asarray(roi["affine"], float))
    except (KeyError, TypeError, ValueError):
        return None
    return box.beyond_mm(ct)
