"""Navigation outputs of a reconstruction in one call: volume files, bone meshes, MPR slices, 3D renders and a
report. Used by ``ixgs reconstruct`` (by default) and by the ROS nodes.

Layout under ``out_dir`` (keys of the returned dict in brackets)::

    volume_mu.nii.gz [nifti]        volume_hu.nrrd [nrrd]          (export.py)
    mesh/bone.ply [mesh_ply]        mesh/bone.stl [mesh_stl]       mesh/mesh_<name>.ply [mesh_<name>]
    mpr/mpr_<plane>.png [mpr_<plane>]                              (mpr.py)
    render/render_<kind>_<viewpoint>.png [render_<kind>_<viewpoint>]  (render3d.py)
    geometry.png [geometry]         report.html [report_html]      report.png [report_png]
    navigation.json [summary]
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.volume import Grid, VolumeError

__all__ = ["NavigationConfig", "write_navigation_outputs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NavigationConfig:
    """What :func:`write_navigation_outputs` writes, and how."""

    # bone threshold for meshes and iso renders
    threshold: float = 250.0
    threshold_unit: str = "hu"  # "hu" or "mu"
    # volume exports
    export_nifti: bool = True
    export_nrrd: bool = True
    nrrd_space: str = "LPS"  # "LPS" (what Slicer/ITK write) or "RAS"
    nrrd_values: str = "hu"  # "hu" or "mu"
    # bone surface
    mesh: bool = True
    mesh_formats: tuple[str, ...] = ("ply", "stl")
    smooth_iterations: int = 10
    target_faces: int | None = 200_000
    min_component_fraction: float = 0.02
    vertebra_meshes: bool = True  # when a label map is given
    vertebra_target_faces: int | None = 20_000
    vertebra_margin_mm: float = 3.0
    # multiplanar reformats
    mpr: bool = True
    mpr_point: tuple[float, float, float] | None = None  # world mm (RAS); None: grid centre
    mpr_planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    # normals (x, y, z) of oblique planes through the point; default: axial tilted 20 deg about the L-R axis
    mpr_obliques: tuple = ((0.0, -0.34202, 0.93969),)
    window_level: float = 400.0
    window_width: float = 1800.0
    window_unit: str = "hu"
    mpr_max_size: int = 768
    # 3D renders: (azimuth, elevation) in degrees; az 0 = anterior, +90 = patient left, el +90 = from above
    render: bool = True
    render_viewpoints: tuple = ((0.0, 0.0), (90.0, 0.0), (45.0, 20.0))
    render_kinds: tuple[str, ...] = ("mip", "drr", "iso")
    render_max_size: int = 512
    device: str | None = None  # torch device for the renders; None: CUDA if available
    # report
    report: bool = True
    title: str = "ixgs_ros reconstruction"

    def to_dict(self) -> dict:
        return asdict(self)


def write_navigation_outputs(volume_mu, grid: Grid, out_dir, *, views=None, labels=None, metrics=None,
                             config: NavigationConfig = NavigationConfig()) -> dict[str, Path]:
    """Write the navigation outputs of a mu volume (1/mm, float32 [I, J, K] on ``grid``) into ``out_dir``.

    ``views``: the X-ray views (``geometry.View``) for the geometry figure; ``labels``: a TotalSegmentator
    label map on the same grid for per-vertebra meshes; ``metrics``: a dict shown in the report.
    Returns ``{key: path}`` of every file written (see the module docstring for keys and layout).
    """
    from . import export, mesh as meshmod, mpr, render3d, report

    t_start = time.perf_counter()
    if hasattr(volume_mu, "detach"):  # torch tensor
        volume_mu = volume_mu.detach().cpu().numpy()
    vol = np.asarray(volume_mu, dtype=np.float32)
    if vol.shape != grid.shape:
        raise VolumeError(f"volume shape {vol.shape} does not match grid shape {grid.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != grid.shape:
            raise VolumeError(f"label map shape {labels.shape} does not match grid shape {grid.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config
    level = meshmod.threshold_to_mu(cfg.threshold, cfg.threshold_unit)
    paths: dict[str, Path] = {}
    timings: dict[str, float] = {}
    notes: dict[str, object] = {}

    def lap(name, t0):
        timings[name] = round(time.perf_counter() - t0, 3)

    # volumes ---------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if cfg.export_nifti:
        paths["nifti"] = export.export_nifti(out / "volume_mu.nii.gz", vol, grid)
    if cfg.export_nrrd:
        paths["nrrd"] = export.save_nrrd(out / f"volume_{cfg.nrrd_values}.nrrd", vol, grid, space=cfg.nrrd_space,
                                         values=cfg.nrrd_values)
    lap("volumes", t0)

    # meshes ----------------------------------------------------------------------------------------------
    if cfg.mesh:
        t0 = time.perf_counter()
        bone = meshmod.bone_surface(vol, grid, threshold=cfg.threshold, unit=cfg.threshold_unit,
                                    smooth_iterations=cfg.smooth_iterations, target_faces=cfg.target_faces,
                                    min_component_fraction=cfg.min_component_fraction)
        notes["bone_mesh"] = {"vertices": bone.n_vertices, "faces": bone.n_faces,
                              "area_mm2": round(bone.area(), 1)}
        if bone.is_empty:
            log.warning("no bone surface at threshold %g %s: meshes not written", cfg.threshold, cfg.threshold_unit)
        else:
            for fmt in cfg.mesh_formats:
                paths[f"mesh_{fmt}"] = meshmod.write_mesh(bone, out / "mesh" / f"bone.{fmt}")
        if labels is not None and cfg.vertebra_meshes:
            verts = meshmod.vertebra_surfaces(vol, grid, labels, threshold=cfg.threshold, unit=cfg.threshold_unit,
                                              margin_mm=cfg.vertebra_margin_mm,
                                              smooth_iterations=cfg.smooth_iterations,
                                              target_faces=cfg.vertebra_target_faces)
            for name, m in verts.items():
                paths[f"mesh_{name}"] = meshmod.write_mesh(m, out / "mesh" / f"mesh_{name}.ply")
            notes["vertebra_meshes"] = sorted(verts)
        lap("meshes", t0)

    sections: dict[str, dict[str, Path]] = {}
    # slices ----------------------------------------------------------------------------------------------
    if cfg.mpr:
        t0 = time.perf_counter()
        window = mpr.Window(cfg.window_level, cfg.window_width, cfg.window_unit)
        mp = mpr.write_mpr(vol, grid, out / "mpr", cfg.mpr_point, planes=cfg.mpr_planes,
                           obliques=cfg.mpr_obliques, window=window, max_size=cfg.mpr_max_size)
        sections["Slices"] = mp
        paths.update({f"mpr_{k}": p for k, p in mp.items()})
        lap("mpr", t0)

    # renders ---------------------------------------------------------------------------------------------
    if cfg.render and cfg.render_kinds and cfg.render_viewpoints:
        t0 = time.perf_counter()
        rp = render3d.write_renders(vol, grid, out / "render", viewpoints=cfg.render_viewpoints, level=level,
                                    kinds=cfg.render_kinds, max_size=cfg.render_max_size, device=cfg.device)
        sections["3D renderings"] = rp
        paths.update({f"render_{k}": p for k, p in rp.items()})
        lap("render", t0)

    # geometry + report -----------------------------------------------------------------------------------
    if views:
        t0 = time.perf_counter()
        paths["geometry"] = report.plot_view_geometry(views, grid, out / "geometry.png")
        sections["View geometry"] = {"geometry": paths["geometry"]}
        lap("geometry", t0)
    summary = {
        "grid": grid.to_dict(),
        "threshold": {"value": cfg.threshold, "unit": cfg.threshold_unit, "mu": level},
        "n_views": len(views) if views else 0,
        "metrics": metrics or {},
        "notes": notes,
        "timings_s": timings,
        "config": cfg.to_dict(),
    }
    if cfg.report:
        t0 = time.perf_counter()
        extra = {"bone threshold": f"{cfg.threshold:g} {cfg.threshold_unit.upper()} (mu {level:.5f} /mm)",
                 "views": len(views) if views else 0}
        for k, v in notes.items():
            extra[k] = v
        files = {k: p for k, p in paths.items() if not k.startswith(("mpr_", "render_", "geometry"))}
        paths.update(report.write_report(out, sections=sections, grid=grid, volume=vol, metrics=metrics,
                                         files=files, title=cfg.title, extra_info=extra))
        lap("report", t0)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    summary["files"] = {k: str(Path(p).relative_to(out)) if Path(p).is_relative_to(out) else str(p)
                        for k, p in paths.items()}
    paths["summary"] = out / "navigation.json"
    paths["summary"].write_text(json.dumps(summary, indent=2, default=json_default))
    return paths


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
