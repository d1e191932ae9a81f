"""The benchmark's written results: results.json and the Markdown tables."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def clean_json(o):
    """``o`` with numpy scalars and arrays as plain Python and non-finite floats as None (valid JSON)."""
    if isinstance(o, dict):
        return {str(k): clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean_json(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return _finite(o.item())
    if isinstance(o, np.ndarray):
        return clean_json(o.tolist())
    if isinstance(o, float):
        return _finite(o)
    return o


def protocol_text() -> dict:
    return {
        "psnr_3d": "R2-Gaussian: GT scaled to [0,1] by its max (prediction by the same factor), peak 1, no clip",
        "ssim_3d": "R2-Gaussian: mean over slices of each axis (11-tap Gaussian, sigma 1.5), 3 axes averaged",
        "psnr_2d/ssim_2d": "held-out views, each scaled by its ground-truth max, averaged over views",
        "surface": "bone iso-surface at 250 HU (recon vs GT on the ROI grid), symmetric mean and HD95 (mm)",
        "wall_s": "reconstruction only (ixgs: init + optimisation + final voxelisation, curve evaluations "
                  "excluded; RTK: solve + resampling onto the ROI grid)",
        "peak_rss_mb": "ru_maxrss of the process that ran the method (a fresh process per run when "
                       "memory_isolated; includes the interpreter, torch and ITK: see rss_before_mb); "
                       "peak_rss_growth_mb: how far the run raised that peak above its value before the run",
    }


def write_json(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean_json(results), indent=1, allow_nan=False))
    os.replace(tmp, path)


# ================================================================================================ reporting
def fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def write_markdown(results: dict) -> str:
    """The Markdown report: machine, settings and one table row per record."""
    mc = results["machine"]
    cfg = results["config"]
    lines = ["# ixgs bench results", ""]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`", ""]
    lines += [
        f"Date: {results['date']}  ",
        f"Machine: {mc.get('cpu_model') or 'unknown CPU'}, {mc.get('cpu_count')} CPUs, "
        f"{mc.get('mem_total_gb')} GB RAM, {'GPU ' + mc['gpu'] if mc.get('gpu') else 'no GPU'}; "
        f"Python {mc.get('python')}, torch {mc.get('torch')}, itk-rtk {mc.get('itk_rtk')}; "
        f"load average at start {_fmt_load(mc.get('load_avg_start'))}, end {_fmt_load(mc.get('load_avg_end'))}; "
        f"CPU steal over the run {fmt(mc.get('cpu_steal_pct'), '.0f')} % (time the hypervisor gave to other "
        "guests: wall times scale by about 1 / (1 - steal))  ",
        f"Scans: {cfg['detector']}^2 px detector, ROI {cfg['roi_size']}^3 at {cfg['roi_spacing']:g} mm, "
        f"{cfg['holdout']} held-out views, seed {cfg['seed']}, renderer {cfg['renderer']}",
        "",
        "| case | views | method | iterations | PSNR 3D (dB) | SSIM 3D | PSNR 2D (dB) | SSIM 2D | "
        "surface mean (mm) | HD95 (mm) | wall (s) | CPU steal (%) | peak RSS (MB) | RSS growth (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["records"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['n_views']} | {r['method']} | - | failed: "
                         f"{r['error'][:80].replace('|', '/')} | | | | | | | | | |")
            continue
        m = r["metrics"]
        s = m.get("surface") or {}
        method = r["method"] + (" (imported)" if r.get("imported_from") else "")
        lines.append(
            f"| {r['case']} | {r['n_views']} | {method} | {r.get('iterations', '-')} | "
            f"{fmt(m['psnr_3d'], '.2f')} | {fmt(m['ssim_3d'], '.3f')} | {fmt(m['psnr_2d'], '.2f')} | "
            f"{fmt(m['ssim_2d'], '.3f')} | {fmt(s.get('mean_mm'), '.2f')} | {fmt(s.get('hd95_mm'), '.2f')} | "
            f"{fmt(r['wall_s'], '.1f')} | {fmt(r.get('cpu_steal_pct'), '.0f')} | {fmt(r['peak_rss_mb'], '.0f')} | "
            f"{fmt(r.get('peak_rss_growth_mb'), '.0f')} |")
    imported = sorted({r["imported_from"] for r in results["records"] if r.get("imported_from")})
    if imported:
        lines += ["", "(imported): RTK records of an earlier run on the same scan and views, from "
                  + ", ".join(f"`{p}`" for p in imported) + " (`--baseline-from`)."]
    gaps = results.get("margins") or []
    if gaps:
        lines += ["", "Margins (ixgs minus the best RTK method in the table above, 3D):", "",
                  "| case | views | method | PSNR 3D (dB) | best RTK | its solve grid (mm) | its PSNR 3D (dB) | "
                  "margin PSNR 3D (dB) | margin SSIM 3D |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for g in gaps:
            lines.append(
                f"| {g['case']} | {g['n_views']} | {g['method']} | {fmt(g['psnr_3d'], '.2f')} | "
                f"{g['best_rtk']}-{g['best_rtk_iterations']} | {fmt(g['best_rtk_solve_spacing_mm'], 'g')}"
                f"{' (coarser than the ROI)' if g['rtk_grid_coarser_than_roi'] else ''} | "
                f"{fmt(g['best_rtk_psnr_3d'], '.2f')} | {fmt(g['margin_psnr_3d'], '+.2f')} | "
                f"{fmt(g['margin_ssim_3d'], '+.3f')} |")
        if any(g["rtk_grid_coarser_than_roi"] for g in gaps):
            lines += ["", "A margin against RTK solved on a grid coarser than the ROI's is an upper bound: on finer "
                          "grids (`--rtk-spacing`) and with more passes SART scores higher on full-body scans "
                          "(docs/findings.md)."]
    lines += ["", "Zero-volume 3D PSNR (reference floor): " + ", ".join(
        f"{c['name']} {fmt(c['zero_psnr_3d'], '.2f')} dB" for c in results["cases"]), ""]
    beyond = [c for c in results["cases"] if c.get("roi_beyond_ct_mm")]
    if beyond:
        lines += ["ROI beyond the CT: " + ", ".join(f"{c['name']} {c['roi_beyond_ct_mm']:.1f} mm" for c in beyond)
                  + " (the ground truth is 0 there: the phantom ends where a patient would not, and full-body "
                    "solves smear mass into that air; docs/findings.md)", ""]
    if results.get("files"):
        lines += ["Plots: " + ", ".join(f"[{Path(f).name}]({f})" for f in results["files"]), ""]
    if results.get("total_s") is not None:
        lines += [f"Total benchmark time: {results['total_s']:.0f} s", ""]
    return "\n".join(lines)


def _fmt_load(v) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)
