"""The picture a surgeon looks at before trusting a bone mesh: axial and sagittal slices through a pedicle with
the reconstructed bone contour (red) over a background volume and, when known, the reference (CT) bone contour
(green); optionally the reconstructed vertebra's mesh over the reference one in 3D.

Slices follow :mod:`.mpr` (radiological convention, world RAS+ mm, orientation letters, scale bar).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.volume import Grid
from .mesh import threshold_to_mu
from .mpr import annotate, resample_plane, standard_plane

__all__ = ["pedicle_point", "bone_slices_figure"]


def pedicle_point(piece) -> np.ndarray:
    """A point near a pedicle of a vertebra piece (world RAS+ mm): from its centroid, a fifth of its
    bounding-box width along +x, a tenth of its depth posterior (-y), a tenth of its height up (+z). A heuristic
    for thoracolumbar vertebrae, whose centroid lies near the back of the body; pass the point explicitly when
    it matters."""
    lo, hi = (np.asarray(b, dtype=np.float64) for b in piece.bbox)
    ext = hi - lo
    c = np.asarray(piece.centroid, dtype=np.float64)
    return c + np.array([0.2 * ext[0], -0.1 * ext[1], 0.1 * ext[2]])


def _choose_piece(pieces, grid: Grid):
    if not pieces:
        return None
    cands = [p for p in pieces if p.vertebra is not None] or [p for p in pieces if p.for_navigation] or list(pieces)
    return min(cands, key=lambda p: float(np.linalg.norm(np.asarray(p.centroid) - grid.center)))


def bone_slices_figure(bone, grid: Grid, path, *, background=None, reference=None, pieces=None, labels=None,
                       point=None, reference_mesh=None, threshold: float = 250.0, title: str | None = None,
                       window=(-200.0, 1400.0)) -> Path:
    """Write ``path`` (PNG): axial and sagittal slices through ``point`` (default: the pedicle of the vertebra
    piece nearest the grid centre, :func:`pedicle_point`) of ``background`` (mu on ``grid``; default the bone
    volume itself) with the bone contour at ``threshold`` HU of ``bone`` (red) and of ``reference`` (green, mu on
    ``grid``); with ``reference_mesh`` (and ``pieces``) a third panel: the chosen piece's mesh over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = threshold_to_mu(threshold, "hu")
    piece = _choose_piece(pieces or [], grid)
    if point is None:
        point = pedicle_point(piece) if piece is not None else grid.center
    point = np.asarray(point, dtype=np.float64)
    bg = bone if background is None else background
    n_panels = 3 if (reference_mesh is not None and piece is not None) else 2
    fig = plt.figure(figsize=(5.2 * n_panels, 5.6), dpi=100)
    lo_hu, hi_hu = window
    mu_w = threshold_to_mu(0.0, "hu")
    for k, name in enumerate(("axial", "sagittal")):
        ax = fig.add_subplot(1, n_panels, k + 1)
        plane = standard_plane(name, grid, point, max_size=512)
        img = resample_plane(bg, grid, plane)
        hu = (np.nan_to_num(img, nan=0.0) / mu_w - 1.0) * 1000.0
        ax.imshow(hu, cmap="gray", vmin=lo_hu, vmax=hi_hu, interpolation="bilinear")
        rec = np.nan_to_num(resample_plane(bone, grid, plane), nan=0.0)
        if rec.max() >= level:
            ax.contour(rec, [level], colors="red", linewidths=0.9)
        if reference is not None:
            ref = np.nan_to_num(resample_plane(reference, grid, plane), nan=0.0)
            if ref.max() >= level:
                ax.contour(ref, [level], colors="lime", linewidths=0.7)
        pr, pc, _ = plane.world_to_pixel(point[None])
        ax.plot([pc[0]], [pr[0]], "y+", markersize=12)
        annotate(ax, plane.right, plane.down, plane.pixel_mm, img.shape,
                 title=f"{name} through {'the pedicle of ' + piece.label if piece is not None else 'the centre'}",
                 info="red: reconstruction" + (", green: reference" if reference is not None else "")
                      + f" ({threshold:g} HU)")
        ax.set_axis_off()
    if n_panels == 3:
        from mpl_toolkits.mplot3d.art3d import Poly3DCollection

        from .mesh import clean_mesh

        ax = fig.add_subplot(1, 3, 3, projection="3d")
        lo, hi = (np.asarray(b) for b in piece.bbox)
        from .mesh import Mesh

        for mesh, color, alpha in ((reference_mesh, (0.2, 0.8, 0.2), 0.35), (piece.mesh, (0.85, 0.2, 0.2), 0.55)):
            c = mesh.triangles().mean(1)
            sel = np.all((c >= lo - 1.0) & (c <= hi + 1.0), axis=1)
            part = clean_mesh(Mesh(mesh.vertices, mesh.faces[sel]).compact(), min_component_fraction=0.05,
                              smooth_iterations=0, target_faces=5000)
            ax.add_collection3d(Poly3DCollection(part.triangles(), facecolor=color, edgecolor="none", alpha=alpha))
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_zlim(lo[2], hi[2])
        ax.view_init(elev=20, azim=-60)
        ax.set_title(f"{piece.label}: reconstruction (red) over the reference (green)")
        ax.set_box_aspect(hi - lo)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
