"""One-page reconstruction report: an HTML file with embedded PNGs and the same content as a PNG montage.

Also draws the acquisition geometry (camera frusta of the X-ray views around the volume box) in 3D with
matplotlib (Agg, no display needed).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from pathlib import Path

import numpy as np

from ..core.config import flatten
from ..core.volume import Grid

__all__ = ["flatten_metrics", "view_frustum", "plot_view_geometry", "write_montage", "write_html_report",
           "grid_info", "write_report"]


def flatten_metrics(metrics: dict | None, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``."""
    return flatten(metrics or {}, prefix)


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    if isinstance(v, (list, tuple, np.ndarray)):
        a = np.asarray(v)
        if a.dtype.kind in "fc":
            return np.array2string(a, precision=3, separator=", ", max_line_width=120, threshold=24)
        return str(v)[:200]
    return str(v)[:200]


# --------------------------------------------------------------------------------------------- geometry
def view_frustum(view, depth: float | None = None, grid: Grid | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(source [3], corners [4, 3])``: the detector corners of ``view`` in world mm, on the plane at camera
    depth ``depth`` (default: ``meta['sdd']``, else 1.3x the distance to the grid centre)."""
    src = np.asarray(view.source, dtype=np.float64)
    if depth is None:
        depth = view.meta.get("sdd") if getattr(view, "meta", None) else None
    if depth is None:
        centre = grid.center if grid is not None else src + view.principal_axis * 1000.0
        depth = 1.3 * float(np.dot(centre - src, view.principal_axis))
    depth = float(depth)
    fc = getattr(view, "frustum_corners", None)
    if callable(fc):  # geometry.View.frustum_corners(near, far) -> [8, 3], far corners last
        corners = np.asarray(fc(0.0, depth), dtype=np.float64)
        return src, corners[-4:]
    rays = view.corner_rays()
    scale = depth / np.maximum(rays @ view.principal_axis, 1e-9)
    return src, src + rays * scale[:, None]


def _box_edges(grid: Grid):
    c = grid.corners()  # index 4*x + 2*y + z
    for a in range(8):
        for bit in (1, 2, 4):
            b = a | bit
            if b != a:
                yield c[a], c[b]


def plot_view_geometry(views, grid: Grid, path, *, title: str = "acquisition geometry", max_views: int = 60,
                       dpi: int = 100) -> Path:
    """3D plot of the volume box (RAS+ world, mm) and the camera frustum of each view."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    views = list(views or [])
    if len(views) > max_views:
        views = [views[i] for i in np.linspace(0, len(views) - 1, max_views).round().astype(int)]
    fig = Figure(figsize=(7, 6.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111, projection="3d")
    pts = [grid.corners()]
    for p, q in _box_edges(grid):
        ax.plot(*np.stack([p, q]).T, color="black", linewidth=1.2)
    cmap = __import__("matplotlib").colormaps["viridis"]
    for n, v in enumerate(views):
        col = cmap(n / max(len(views) - 1, 1))
        src, corners = view_frustum(v, grid=grid)
        pts += [src[None], corners]
        ax.scatter(*src, color=col, s=18)
        for c in corners:
            ax.plot(*np.stack([src, c]).T, color=col, linewidth=0.6, alpha=0.7)
        ring = np.vstack([corners, corners[:1]])
        ax.plot(*ring.T, color=col, linewidth=1.0)
        ax.plot(*np.stack([src, grid.center]).T, color=col, linewidth=0.6, linestyle=":")
        ax.text(*src, f" {n}", color=col, fontsize=7)
    allp = np.vstack(pts)
    mid, half = (allp.max(0) + allp.min(0)) / 2, (allp.max(0) - allp.min(0)).max() / 2 * 1.05
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] - half, mid[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("x (L \u2192 R) mm")
    ax.set_ylabel("y (P \u2192 A) mm")
    ax.set_zlabel("z (I \u2192 S) mm")
    ax.view_init(elev=20, azim=-60)
    ax.set_title(f"{title}: {len(views)} view(s), volume box in black", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=dpi)
    return path


# --------------------------------------------------------------------------------------------- montage
def _text_lines(info: dict[str, object], metrics: dict | None, max_lines: int = 60) -> list[str]:
    lines = [f"{k}: {_fmt(v)}" for k, v in info.items()]
    flat = flatten_metrics(metrics)
    if flat:
        lines.append("")
        lines.append("metrics")
        lines += [f"  {k}: {_fmt(v)}" for k, v in flat.items()]
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [f"... ({len(lines) - max_lines + 1} more in the HTML report)"]
    return lines


def write_montage(images: dict[str, Path], path, *, title: str = "ixgs_ros reconstruction",
                  info: dict | None = None, metrics: dict | None = None, cols: int = 4, panel_in: float = 3.6,
                  dpi: int = 90) -> Path:
    """All ``images`` (name -> PNG) on one PNG page, plus a text panel with ``info`` and ``metrics``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    items = [(k, Path(p)) for k, p in images.items() if p is not None and Path(p).exists()]
    n = len(items) + 1
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * panel_in, rows * panel_in + 0.6), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=14, y=1 - 0.25 / (rows * panel_in + 0.6))
    top = 1 - 0.6 / (rows * panel_in + 0.6)
    gs = fig.add_gridspec(rows, cols, left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.04, hspace=0.12)
    for i, (name, p) in enumerate(items):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        ax.imshow(imread(str(p)))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    ax = fig.add_subplot(gs[(n - 1) // cols, (n - 1) % cols])
    ax.set_axis_off()
    lines = _text_lines(info or {}, metrics, max_lines=int(panel_in * 7))
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=7, family="monospace",
            transform=ax.transAxes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=dpi, facecolor="white")
    return path


# --------------------------------------------------------------------------------------------- html
def _img_tag(path: Path, name: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>")


def write_html_report(path, *, title: str, sections: dict[str, dict[str, Path]], info: dict | None = None,
                      metrics: dict | None = None, files: dict[str, Path] | None = None) -> Path:
    """A self-contained HTML page: info table, metrics table, image sections (embedded PNGs), file list."""
    path = Path(path)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}",
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;"
        "font-size:13px;text-align:left}th{background:#eee}",
        ".grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;background:#000;padding:4px}"
        "figure img{max-width:420px;max-height:420px;display:block}"
        "figcaption{color:#ddd;font-size:12px;padding-top:3px}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>written {_dt.datetime.now().isoformat(timespec='seconds')}</p>",
    ]
    if info:
        parts.append("<h2>Volume</h2><table>")
        parts += [f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in info.items()]
        parts.append("</table>")
    flat = flatten_metrics(metrics)
    if flat:
        parts.append("<h2>Metrics</h2><table>")
        parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in flat.items()]
        parts.append("</table>")
    for sec, imgs in sections.items():
        imgs = {k: p for k, p in imgs.items() if p is not None and Path(p).exists()}
        if not imgs:
            continue
        parts.append(f"<h2>{html.escape(sec)}</h2><div class='grid'>")
        parts += [_img_tag(p, k) for k, p in imgs.items()]
        parts.append("</div>")
    if files:
        parts.append("<h2>Files</h2><table>")
        for k, p in files.items():
            try:
                rel = Path(p).resolve().relative_to(path.parent.resolve())
            except ValueError:
                rel = Path(p)
            parts.append(f"<tr><th>{html.escape(k)}</th><td><a href='{html.escape(rel.as_posix())}'>"
                         f"{html.escape(rel.as_posix())}</a></td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def grid_info(grid: Grid, volume=None) -> dict[str, object]:
    lo, hi = grid.bounds()
    info = {"shape": list(grid.shape), "spacing_mm": grid.spacing.round(4).tolist(),
            "centre_mm (RAS)": grid.center.round(2).tolist(), "bounds_min_mm": lo.round(2).tolist(),
            "bounds_max_mm": hi.round(2).tolist()}
    if volume is not None:
        v = np.asarray(volume)
        info["mu_range_1/mm"] = [float(np.nanmin(v)), float(np.nanmax(v))]
    return info


def write_report(out_dir, *, sections: dict[str, dict[str, Path]], grid: Grid, volume=None,
                 metrics: dict | None = None, files: dict[str, Path] | None = None,
                 title: str = "ixgs_ros reconstruction", extra_info: dict | None = None,
                 name: str = "report") -> dict[str, Path]:
    """``report.html`` (embedded PNGs) and ``report.png`` (montage) in ``out_dir``."""
    out_dir = Path(out_dir)
    info = grid_info(grid, volume)
    info.update(extra_info or {})
    html_path = write_html_report(out_dir / f"{name}.html", title=title, sections=sections, info=info,
                                  metrics=metrics, files=files)
    images = {}
    for imgs in sections.values():
        images.update(imgs)
    png_path = write_montage(images, out_dir / f"{name}.png", title=title, info=info, metrics=metrics)
    return {"report_html": html_path, "report_png": png_path}
