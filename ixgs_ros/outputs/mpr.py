"""Multiplanar reformats (MPR): axial, coronal, sagittal and oblique slices through a world point.

World coordinates are the NIfTI scanner frame, RAS+ as nibabel uses it: +x toward the patient's Right,
+y Anterior, +z Superior. Slices are resampled by trilinear interpolation on a plane with square pixels of
a physical size, so anisotropic, rotated or mirrored grids all give correctly scaled, correctly oriented
images. Display follows the radiological convention (as 3D Slicer):

* axial: seen from the feet, patient Right on the image left, Anterior at the top;
* coronal: seen from the front, patient Right on the image left, Superior at the top;
* sagittal: seen from the patient's left, Anterior on the image left, Superior at the top.

Every PNG carries orientation letters at its four edges (computed from the plane's axes, so they are right
for oblique planes too), a physical scale bar and the window/level.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.volume import MU_WATER, Grid, VolumeError

__all__ = [
    "PATIENT_LETTERS",
    "montage_label",
    "direction_letters",
    "edge_letters",
    "Window",
    "SlicePlane",
    "standard_plane",
    "oblique_plane",
    "sample_world",
    "resample_plane",
    "annotate",
    "new_figure",
    "save_slice_png",
    "compute_mpr",
    "write_mpr",
]

#: Letters for the + and - direction of each world axis (RAS+).
PATIENT_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))

#: (right, down) unit vectors of the standard planes, radiological convention.
_STANDARD = {
    "axial": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "coronal": ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),
}


def direction_letters(v, max_letters: int = 2, min_fraction: float = 0.25) -> str:
    """Patient-direction letters of world direction ``v`` (RAS+): ``(-1, 0, 0) -> "L"``,
    ``(0.1, 0.8, 0.6) -> "AS"``. Components are listed largest first if at least ``min_fraction`` of the
    largest one."""
    v = np.asarray(v, dtype=np.float64)
    a = np.abs(v)
    if a.max() == 0:
        return ""
    order = np.argsort(-a, kind="stable")
    out = []
    for ax in order[:max_letters]:
        if a[ax] >= min_fraction * a[order[0]] and a[ax] > 1e-9:
            out.append(PATIENT_LETTERS[ax][0 if v[ax] > 0 else 1])
    return "".join(out)


def edge_letters(right, down) -> dict[str, str]:
    """Orientation letters at the image edges for in-plane axes ``right`` (+column) and ``down`` (+row)."""
    right, down = np.asarray(right, dtype=np.float64), np.asarray(down, dtype=np.float64)
    return {"left": direction_letters(-right), "right": direction_letters(right),
            "top": direction_letters(-down), "bottom": direction_letters(down)}


# --------------------------------------------------------------------------------------------- window
@dataclass(frozen=True)
class Window:
    """Display window: ``level`` (centre) and ``width`` in ``unit`` ("hu" or "mu", 1/mm)."""

    level: float = 400.0
    width: float = 1800.0
    unit: str = "hu"

    def mu_range(self, mu_water: float = MU_WATER) -> tuple[float, float]:
        lo, hi = self.level - self.width / 2.0, self.level + self.width / 2.0
        if self.unit.lower() == "hu":
            return float(mu_water * (1 + lo / 1000.0)), float(mu_water * (1 + hi / 1000.0))
        if self.unit.lower() == "mu":
            return float(lo), float(hi)
        raise VolumeError(f"window unit must be 'hu' or 'mu', got {self.unit!r}")

    def label(self) -> str:
        return f"W {self.width:g} L {self.level:g} {'HU' if self.unit.lower() == 'hu' else '1/mm'}"


# --------------------------------------------------------------------------------------------- planes
@dataclass(frozen=True)
class SlicePlane:
    """A sampling plane: pixel ``(row, col)`` centre is ``origin + col*pixel_mm*right + row*pixel_mm*down``."""

    name: str
    origin: np.ndarray
    right: np.ndarray
    down: np.ndarray
    pixel_mm: float
    shape: tuple[int, int]
    point: np.ndarray = field(default=None)

    @property
    def normal(self) -> np.ndarray:
        """Viewing direction (into the screen): ``right x down``."""
        return np.cross(self.right, self.down)

    def pixel_to_world(self, rows, cols) -> np.ndarray:
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        return (self.origin + (cols[..., None] * self.right + rows[..., None] * self.down) * self.pixel_mm)

    def world_to_pixel(self, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(row, col, signed distance from the plane in mm)`` of world points."""
        d = np.asarray(points, dtype=np.float64) - self.origin
        return d @ self.down / self.pixel_mm, d @ self.right / self.pixel_mm, d @ self.normal

    def points(self) -> np.ndarray:
        r, c = np.meshgrid(np.arange(self.shape[0]), np.arange(self.shape[1]), indexing="ij")
        return self.pixel_to_world(r, c)

    def edge_letters(self) -> dict[str, str]:
        return edge_letters(self.right, self.down)


def _plane_on_grid(name, grid: Grid, point, right, down, pixel_mm, max_size) -> SlicePlane:
    point = np.asarray(point, dtype=np.float64)
    right = np.asarray(right, dtype=np.float64)
    down = np.asarray(down, dtype=np.float64)
    right, down = right / np.linalg.norm(right), down / np.linalg.norm(down)
    rel = grid.corners() - point
    u, v = rel @ right, rel @ down
    if pixel_mm is None:
        pixel_mm = float(grid.spacing.min())
    pixel_mm = float(max(pixel_mm, (u.max() - u.min()) / max_size, (v.max() - v.min()) / max_size))
    if not np.isfinite(pixel_mm) or pixel_mm <= 0:
        raise VolumeError(f"pixel size must be positive, got {pixel_mm}")
    c0, c1 = int(np.floor(u.min() / pixel_mm)), int(np.ceil(u.max() / pixel_mm))
    r0, r1 = int(np.floor(v.min() / pixel_mm)), int(np.ceil(v.max() / pixel_mm))
    origin = point + (c0 * right + r0 * down) * pixel_mm
    return SlicePlane(name, origin, right, down, pixel_mm, (r1 - r0 + 1, c1 - c0 + 1), point)


def standard_plane(name: str, grid: Grid, point=None, *, pixel_mm: float | None = None, max_size: int = 768,
                   convention: str = "radiological") -> SlicePlane:
    """``"axial"``, ``"coronal"`` or ``"sagittal"`` plane through ``point`` (default: the grid centre),
    covering the whole grid, ``pixel_mm`` pixels (default: the finest voxel spacing, at most ``max_size``
    pixels a side). ``convention="neurological"`` puts patient Right on the image right (axial, coronal)."""
    key = name.lower()
    if key not in _STANDARD:
        raise ValueError(f"unknown plane {name!r}; use one of {sorted(_STANDARD)} or oblique_plane()")
    right, down = (np.array(x) for x in _STANDARD[key])
    if convention == "neurological" and key != "sagittal":
        right = -right
    elif convention != "radiological":
        raise ValueError(f"convention must be 'radiological' or 'neurological', got {convention!r}")
    point = grid.center if point is None else point
    return _plane_on_grid(key, grid, point, right, down, pixel_mm, max_size)


def oblique_plane(grid: Grid, point, normal, *, up=None, name: str = "oblique", pixel_mm: float | None = None,
                  max_size: int = 768) -> SlicePlane:
    """Plane through ``point`` perpendicular to ``normal`` (world, any sign).

    It is displayed like the standard plane it is closest to (normal sign, "up" direction), so a slightly
    tilted axial still looks axial. ``up`` (world direction) overrides which way is the top of the image.
    """
    n = np.asarray(normal, dtype=np.float64)
    if not np.all(np.isfinite(n)) or np.linalg.norm(n) == 0:
        raise VolumeError(f"oblique plane normal must be a non-zero vector, got {normal}")
    n = n / np.linalg.norm(n)
    best, ref_n, ref_down = -1.0, None, None
    for key, (r, d) in _STANDARD.items():
        sn = np.cross(r, d)
        if abs(n @ sn) > best:
            best, ref_n, ref_down = abs(n @ sn), sn, np.array(d)
    if n @ ref_n < 0:
        n = -n
    down = -np.asarray(up, dtype=np.float64) if up is not None else ref_down
    down = down - (down @ n) * n
    if np.linalg.norm(down) < 1e-6:  # up parallel to the normal: fall back to another axis
        down = np.array([0.0, 0.0, -1.0]) if abs(n[2]) < 0.9 else np.array([0.0, -1.0, 0.0])
        down = down - (down @ n) * n
    down /= np.linalg.norm(down)
    right = np.cross(down, n)
    return _plane_on_grid(name, grid, point, right, down, pixel_mm, max_size)


# --------------------------------------------------------------------------------------------- sampling
def sample_world(volume, grid: Grid, points, *, order: int = 1, cval: float = np.nan) -> np.ndarray:
    """Values of ``volume`` at world ``points`` ``[..., 3]`` (trilinear for ``order=1``); ``cval`` outside."""
    from scipy.ndimage import map_coordinates

    vol = np.asarray(volume)
    if vol.shape != grid.shape:
        raise VolumeError(f"volume shape {vol.shape} does not match grid shape {grid.shape}")
    pts = np.asarray(points, dtype=np.float64)
    ijk = grid.world_to_index(pts.reshape(-1, 3))
    # map_coordinates treats anything beyond the first/last voxel centre as outside; allow half a voxel
    # (the voxel's own extent) by clamping those coordinates onto the edge centre.
    shape = np.array(grid.shape)
    inside = np.all((ijk >= -0.5) & (ijk <= shape - 0.5), axis=1)
    ijk = np.clip(ijk, 0, shape - 1)
    vals = map_coordinates(vol.astype(np.float32, copy=False), ijk.T, order=order, mode="nearest")
    vals = np.where(inside, vals, cval)
    return vals.reshape(pts.shape[:-1])


def resample_plane(volume, grid: Grid, plane: SlicePlane, *, order: int = 1, cval: float = np.nan) -> np.ndarray:
    """The slice image ``[H, W]`` (float32) of ``volume`` on ``plane``; ``cval`` (NaN) outside the grid."""
    return sample_world(volume, grid, plane.points(), order=order, cval=cval).astype(np.float32)


# --------------------------------------------------------------------------------------------- drawing
def _nice_length(target: float) -> float:
    if target <= 0:
        return 1.0
    e = 10 ** np.floor(np.log10(target))
    for m in (5, 2, 1):
        if m * e <= target:
            return float(m * e)
    return float(e)


def annotate(ax, right, down, pixel_mm: float, shape, *, title: str | None = None, info: str | None = None,
             scale_bar: bool = True, letters: bool = True, color: str = "#ffd000") -> dict[str, str]:
    """Draw orientation letters, a scale bar, a title and an info line on an image axes (pixel coordinates,
    origin at the top left). Returns the letters used."""
    import matplotlib.patheffects as pe

    H, W = shape
    outline = [pe.withStroke(linewidth=3, foreground="black")]
    labels = edge_letters(right, down)
    if letters:
        # above the title / info text, so that a long info line cannot hide the bottom letter
        kw = dict(color=color, fontsize=15, fontweight="bold", transform=ax.transAxes, path_effects=outline,
                  zorder=6)
        ax.text(0.5, 0.985, labels["top"], ha="center", va="top", **kw)
        ax.text(0.5, 0.015, labels["bottom"], ha="center", va="bottom", **kw)
        ax.text(0.012, 0.5, labels["left"], ha="left", va="center", **kw)
        ax.text(0.988, 0.5, labels["right"], ha="right", va="center", **kw)
    if scale_bar:
        length_mm = _nice_length(0.25 * W * pixel_mm)
        n_px = length_mm / pixel_mm
        x1, y = W - 1 - 0.05 * W, H - 1 - 0.06 * H
        ax.plot([x1 - n_px, x1], [y, y], color="white", linewidth=3, solid_capstyle="butt", path_effects=outline)
        ax.text(x1 - n_px / 2, y - 0.015 * H, f"{length_mm:g} mm", color="white", ha="center", va="bottom",
                fontsize=10, path_effects=outline)
    if title:
        ax.text(0.012, 0.985, title, color="white", ha="left", va="top", fontsize=10, transform=ax.transAxes,
                path_effects=outline)
    if info:
        ax.text(0.012, 0.015, info, color="white", ha="left", va="bottom", fontsize=9, transform=ax.transAxes,
                path_effects=outline)
    return labels


def new_figure(shape, inches: float = 6.0, dpi: int = 100, title: str | None = None):
    """An Agg figure (no pyplot state: safe in threads) with one axes filling it, for an image ``shape``;
    with a ``title`` a header band above the image holds it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    H, W = shape[:2]
    s = inches / max(H, W)
    w_in, h_in = max(W * s, 2.0), max(H * s, 1.0)
    band = 0.3 if title else 0.0
    fig = Figure(figsize=(w_in, h_in + band), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, h_in / (h_in + band)))
    ax.set_axis_off()
    if title:
        fig.text(0.01, 1 - 0.5 * band / (h_in + band), title, color="white", ha="left", va="center", fontsize=10)
    return fig, ax


def save_slice_png(image, plane: SlicePlane, path, *, window: Window = Window(), title: str | None = None,
                   crosshair: bool = True, dpi: int = 100) -> Path:
    """Write a slice image as PNG (gray, window/level, letters, scale bar, crosshair at ``plane.point``)."""
    import matplotlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vmin, vmax = window.mu_range()
    if title is None:
        p = plane.point if plane.point is not None else plane.origin
        title = f"{plane.name} through ({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f}) mm (RAS)"
    fig, ax = new_figure(plane.shape, dpi=dpi, title=title)
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="#1c2430")
    ax.imshow(np.ma.masked_invalid(image), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="bilinear",
              origin="upper")
    if crosshair and plane.point is not None:
        r, c, _ = plane.world_to_pixel(plane.point)
        ax.axhline(r, color="#30c0ff", linewidth=0.8, alpha=0.6, linestyle="--")
        ax.axvline(c, color="#30c0ff", linewidth=0.8, alpha=0.6, linestyle="--")
    ax.set_xlim(-0.5, plane.shape[1] - 0.5)
    ax.set_ylim(plane.shape[0] - 0.5, -0.5)
    annotate(ax, plane.right, plane.down, plane.pixel_mm, plane.shape, info=window.label())
    fig.savefig(str(path), dpi=dpi, facecolor="black")
    return path


# --------------------------------------------------------------------------------------------- batch
def compute_mpr(volume, grid: Grid, point=None, *, planes=("axial", "coronal", "sagittal"), obliques=(),
                pixel_mm: float | None = None, max_size: int = 768,
                convention: str = "radiological") -> dict[str, tuple[np.ndarray, SlicePlane]]:
    """Slices through ``point`` (default: the grid centre): ``{name: (image, plane)}``.

    ``obliques``: normals (3 floats) or ``(name, normal)`` / ``(name, normal, up)`` tuples.
    """
    point = grid.center if point is None else np.asarray(point, dtype=np.float64)
    out = {}
    for name in planes:
        pl = standard_plane(name, grid, point, pixel_mm=pixel_mm, max_size=max_size, convention=convention)
        out[pl.name] = (resample_plane(volume, grid, pl), pl)
    for i, spec in enumerate(obliques):
        name, up = f"oblique_{i}", None
        if isinstance(spec, (tuple, list)) and spec and isinstance(spec[0], str):
            name, normal = spec[0], spec[1]
            up = spec[2] if len(spec) > 2 else None
        else:
            normal = spec
        pl = oblique_plane(grid, point, normal, up=up, name=name, pixel_mm=pixel_mm, max_size=max_size)
        out[pl.name] = (resample_plane(volume, grid, pl), pl)
    return out


def write_mpr(volume, grid: Grid, out_dir, point=None, *, planes=("axial", "coronal", "sagittal"), obliques=(),
              window: Window = Window(), pixel_mm: float | None = None, max_size: int = 768,
              prefix: str = "mpr_", convention: str = "radiological") -> dict[str, Path]:
    """Write one PNG per plane into ``out_dir`` (``mpr_axial.png``, ...). Returns ``{name: path}``."""
    out_dir = Path(out_dir)
    paths = {}
    for name, (img, pl) in compute_mpr(volume, grid, point, planes=planes, obliques=obliques, pixel_mm=pixel_mm,
                                       max_size=max_size, convention=convention).items():
        paths[name] = save_slice_png(img, pl, out_dir / f"{prefix}{name}.png", window=window)
    return paths


def montage_label(row: str, plane: str) -> str:
    """A montage cell's label: the row's name over the plane's, so that it stays short."""
    return f"{row}\n{plane}" if row else plane


def write_mpr_montage(volumes, grid: Grid, path, point=None, *, window: Window = Window(),
                      planes=("axial", "coronal", "sagittal"), title: str | None = None, max_size: int = 384,
                      dpi: int = 100) -> Path:
    """One PNG with a row per volume (``{row label: mu volume on grid}``, or a single array) and a column per
    plane through ``point`` (default: the grid centre), with letters, scale bars and the window/level."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(volumes, dict):
        volumes = {"": volumes}
    rows = list(volumes.items())
    slices = [compute_mpr(v, grid, point, planes=planes, max_size=max_size) for _, v in rows]
    names = list(slices[0])
    cell = 3.2
    band = 0.35
    fig = Figure(figsize=(cell * len(names), cell * len(rows) + band), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    title = f"{title}   [{window.label()}]" if title else window.label()
    band = 0.35
    fig.text(0.01, 1 - 0.5 * band / (cell * len(rows) + band), title, color="white", ha="left",
             va="center", fontsize=11)
    vmin, vmax = window.mu_range()
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="#1c2430")
    h_frac = cell / (cell * len(rows) + band)
    for r, ((label, _), sl) in enumerate(zip(rows, slices)):
        for c, name in enumerate(names):
            img, pl = sl[name]
            ax = fig.add_axes((c / len(names), 1 - band / (cell * len(rows) + band) - (r + 1) * h_frac,
                               1 / len(names), h_frac))
            ax.set_axis_off()
            ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="bilinear",
                      origin="upper", aspect="equal")
            ax.set_xlim(-0.5, pl.shape[1] - 0.5)
            ax.set_ylim(pl.shape[0] - 0.5, -0.5)
            # the row/plane label goes bottom-left so the top edge keeps its orientation letter, on two lines
            # so that it stays left of the bottom letter
            annotate(ax, pl.right, pl.down, pl.pixel_mm, pl.shape, info=montage_label(label, name))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=dpi, facecolor="black")
    return path
