"""The benchmark's figures: PSNR against views and time, slice montages."""
from __future__ import annotations

from pathlib import Path

from .cases import IXGS_METHODS, RTK_METHODS, BenchCase
from .scoring import ok_records

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_views(out: Path, case: BenchCase, records) -> Path | None:
    recs = ok_records(records, case.name)
    if not recs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(r["method"] for r in recs):
        rs = sorted((r for r in recs if r["method"] == method), key=lambda r: r["n_views"])
        x = [r["n_views"] for r in rs]
        axes[0].plot(x, [r["metrics"]["psnr_3d"] for r in rs], "o-", label=method)
        axes[1].plot(x, [r["metrics"]["psnr_2d"] for r in rs], "o-", label=method)
    axes[0].set_title("3D PSNR (ROI volume)")
    axes[1].set_title("2D PSNR (held-out views)")
    for ax in axes:
        ax.set_xlabel("training views")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"ixgs bench: {case.name}")
    fig.tight_layout()
    path = out / "plots" / f"psnr_vs_views-{case.name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_time(out: Path, case: BenchCase, n: int, records) -> Path | None:
    recs = ok_records(records, case.name, n)
    if not recs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in recs:
        if r.get("curve"):
            c = [p for p in r["curve"] if p["time_s"] > 0]
            ax.plot([p["time_s"] for p in c], [p["psnr_3d"] for p in c], ".-", label=f"{r['method']} (optimising)")
            ax.plot([r["wall_s"]], [r["metrics"]["psnr_3d"]], "k*", ms=10)
        else:
            ax.plot([r["wall_s"]], [r["metrics"]["psnr_3d"]], "o", ms=8, label=r["method"])
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s, log)")
    ax.set_ylabel("3D PSNR (dB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"{case.name}, {n} views: PSNR vs wall time", fontsize=10)
    fig.tight_layout()
    path = out / "plots" / f"psnr_vs_time-{case.name}-{n}v.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def montage(out: Path, case: BenchCase, n: int, gt, grid, volumes: dict, records) -> Path | None:
    from ...outputs.mpr import write_mpr_montage

    recs = {r["method"]: r for r in ok_records(records, case.name, n)}
    rows = {"GT": gt}
    rtk = [m for m in volumes if m in RTK_METHODS and m in recs]
    if rtk:
        best = max(rtk, key=lambda m: recs[m]["metrics"]["psnr_3d"])
        rows[f"{best.upper()} = best RTK, {recs[best]['metrics']['psnr_3d']:.1f} dB"] = volumes[best]
    for m in IXGS_METHODS:
        if m in volumes and m in recs:
            rows[f"{m}, {recs[m]['metrics']['psnr_3d']:.1f} dB"] = volumes[m]
    if len(rows) == 1:
        return None
    path = out / "plots" / f"montage-{case.name}-{n}v.png"
    return write_mpr_montage(rows, grid, path, title=f"ixgs bench {case.name}, {n} training views")
