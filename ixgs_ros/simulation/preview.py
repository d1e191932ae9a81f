"""The preview figure of a simulated scan: a few views with the ROI box drawn into them."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.volume import Grid
from .ct import ROI

__all__ = ["make_preview"]


def _box_edges(grid: Grid, samples: int = 24) -> list[np.ndarray]:
    c = grid.corners()  # index order: x-major over (lo, hi)
    edges = []
    for a in range(8):
        for b in range(a + 1, 8):
            if bin(a ^ b).count("1") == 1:
                t = np.linspace(0, 1, samples)[:, None]
                edges.append(c[a] * (1 - t) + c[b] * t)
    return edges


def make_preview(scan, roi: ROI, path, ct_grid: Grid | None = None, max_images: int = 6) -> Path:
    """A PNG with a few projections (ROI box outline in red) and a top-down sketch of the source positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    n = len(scan.views)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int))
    cols = 4
    rows = int(math.ceil((len(idx) + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    edges = _box_edges(roi.grid)
    for ax, i in zip(axes.flat, idx):
        v = scan.views[i]
        ax.imshow(scan.projections[i], cmap="gray", interpolation="nearest")
        for e in edges:
            uv, _ = v.project(e)
            ax.plot(uv[:, 0], uv[:, 1], "r-", lw=0.7)
        tr = v.meta.get("trajectory", {})
        ax.set_title(f"view {i}: {tr.get('primary_deg', float('nan')):.0f}/"
                     f"{tr.get('secondary_deg', float('nan')):.0f} deg", fontsize=8)
        ax.set_xlim(-0.5, v.width - 0.5)
        ax.set_ylim(v.height - 0.5, -0.5)
        ax.axis("off")
    # top-down sketch (world x-y plane, looking from the head: RAS x to the right, y up)
    ax = axes.flat[len(idx)]
    src = np.array([v.source for v in scan.views])
    c = roi.center
    if ct_grid is not None:
        lo, hi = ct_grid.bounds()
        ax.add_patch(plt.Rectangle((lo[0], lo[1]), hi[0] - lo[0], hi[1] - lo[1], fill=False, ec="0.6",
                                   ls="--", lw=0.8, label="CT"))
    rlo, rhi = roi.grid.bounds()
    ax.add_patch(plt.Rectangle((rlo[0], rlo[1]), rhi[0] - rlo[0], rhi[1] - rlo[1], fill=False, ec="r", lw=1,
                               label="ROI"))
    for s in src:
        ax.plot([s[0], c[0]], [s[1], c[1]], "-", color="0.8", lw=0.5)
    sc = ax.scatter(src[:, 0], src[:, 1], c=np.arange(n), cmap="viridis", s=12, zorder=3)
    ax.set_aspect("equal")
    ax.set_title("sources (top-down, world x/y mm)", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="upper right")
    cb = fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    cb.ax.tick_params(labelsize=6)
    cb.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    cb.set_label("view", fontsize=6)
    for ax in list(axes.flat)[len(idx) + 1:]:
        ax.axis("off")
    sim = scan.extra.get("simulation", {})
    fig.suptitle(f"ixgs simulate: {roi.name or 'ROI'}, {n} views, {sim.get('mode', '')}, "
                 f"{sim.get('trajectory', {}).get('kind', '')}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
