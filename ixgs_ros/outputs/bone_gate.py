"""The quality gate before a bone mesh reaches a robot: a confidence per bone piece from what the views could
tell about it, and the decision whether it is fit for navigation.

Terms (each in 0..1; the confidence is their product):

* ``coverage``: how much of the half-circle of ray directions the views cover at the piece. The rays through
  its centroid from every view whose detector sees it, projected onto the plane across the trajectory's
  rotation axis, as undirected lines (a ray and its opposite tell the same); coverage is ``1 - largest angular
  gap / 180 deg``. A 160 deg arc gives about 0.85-0.9, a 90 deg arc about 0.5: the wedge no view looks along is
  where limited-angle streaks and blurred edges lie.
* ``tangential``: the fraction of the piece's surface area seen tangentially by some view (a ray through the
  face within ``tangent_deg`` of the surface plane). Tomography places an edge where rays graze it; a surface no
  ray grazes is interpolated by the prior.
* ``consistency`` (only with held-out views): ``1 - e / consistency_error``, clipped to 0..1, with ``e`` the mean
  absolute difference between the measured and the re-projected bone line integrals of the held-out views in the
  piece's shadow, relative to the measured mean there.

A piece is ``for_navigation`` when its confidence reaches ``threshold``, it is not cut by the grid's boundary (a
vertebra only partly inside the field of view is not registered as a whole) and it is not a fragment (smaller
than ``min_volume_mm3``). ``reason`` says why not.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.geometry import View
from ..core.volume import Grid

__all__ = ["GateConfig", "rotation_axis", "angular_coverage", "tangential_fraction", "piece_shadow",
           "holdout_images", "gate_pieces"]


@dataclass(frozen=True)
class GateConfig:
    threshold: float = 0.5          # confidence at or above which a piece is fit for navigation
    tangent_deg: float = 10.0       # a ray within this angle of a face's plane sees it tangentially
    consistency_error: float = 0.5  # relative held-out error at which the consistency term reaches 0
    min_views: int = 6              # fewer views seeing a piece: confidence 0
    min_volume_mm3: float = 2000.0  # smaller pieces are fragments (a vertebra is 20-60 cm^3): not for navigation

    def to_dict(self) -> dict:
        return asdict(self)


def rotation_axis(views) -> np.ndarray:
    """The unit direction most orthogonal to every view's principal axis (a C-arm arc's rotation axis)."""
    D = np.array([v.principal_axis for v in views], dtype=np.float64)
    _, V = np.linalg.eigh(D.T @ D)
    return V[:, 0]


def _seeing(views, point) -> list[View]:
    out = []
    for v in views:
        uv, z = v.project(np.asarray(point, dtype=np.float64)[None])
        u, r = uv[0]
        if z[0] > 0 and 0 <= u <= v.width - 1 and 0 <= r <= v.height - 1:
            out.append(v)
    return out


def angular_coverage(views, point, axis=None) -> tuple[float, int]:
    """``(coverage, n)``: the coverage term (module docstring) at the world ``point`` and how many views see it."""
    vs = _seeing(views, point)
    if len(vs) < 2:
        return 0.0, len(vs)
    axis = rotation_axis(views) if axis is None else np.asarray(axis, dtype=np.float64)
    e1 = np.cross(axis, [1.0, 0.0, 0.0])
    if np.linalg.norm(e1) < 0.5:
        e1 = np.cross(axis, [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    d = np.array([np.asarray(point) - v.source for v in vs], dtype=np.float64)
    ang = np.sort(np.degrees(np.arctan2(d @ e2, d @ e1)) % 180.0)
    gaps = np.diff(np.concatenate([ang, [ang[0] + 180.0]]))
    return float(max(0.0, 1.0 - gaps.max() / 180.0)), len(vs)


def tangential_fraction(mesh, views, tangent_deg: float = 10.0, max_faces: int = 20000, seed: int = 0) -> float:
    """Fraction of the mesh's area seen tangentially by at least one view (a ray through the face centre within
    ``tangent_deg`` of its plane, the face on that view's detector)."""
    if mesh.is_empty:
        return 0.0
    rng = np.random.default_rng(seed)
    idx = np.arange(mesh.n_faces)
    if len(idx) > max_faces:
        idx = np.sort(rng.choice(len(idx), max_faces, replace=False))
    tri = mesh.triangles()[idx]
    c = tri.mean(1)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(n, axis=1)
    n = n / np.maximum(2.0 * area[:, None], 1e-30)
    seen = np.zeros(len(c), dtype=bool)
    s = np.sin(np.radians(tangent_deg))
    for v in views:
        uv, z = v.project(c)
        with np.errstate(invalid="ignore"):
            on = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= v.width - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= v.height - 1)
        d = c - v.source
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        seen |= on & (np.abs(np.einsum("ij,ij->i", d, n)) <= s)
    tot = float(area.sum())
    return float(area[seen].sum() / tot) if tot > 0 else 0.0


def piece_shadow(mesh, view: View, dilate: int = 1) -> np.ndarray:
    """Boolean [H, W]: the pixels the piece covers in ``view`` (its mesh's vertices and face centres splatted,
    closed, holes filled)."""
    from scipy.ndimage import binary_closing, binary_dilation, binary_fill_holes

    pts = np.concatenate([mesh.vertices, mesh.triangles().mean(1)])
    uv, z = view.project(pts)
    with np.errstate(invalid="ignore"):
        u, r = np.rint(uv[:, 0]), np.rint(uv[:, 1])
        ok = (z > 0) & (u >= 0) & (u < view.width) & (r >= 0) & (r < view.height)
    img = np.zeros((view.height, view.width), dtype=bool)
    img[r[ok].astype(int), u[ok].astype(int)] = True
    img = binary_closing(binary_dilation(img, iterations=dilate), iterations=2)
    return binary_fill_holes(img)


def holdout_images(views, measured, predicted) -> dict:
    """The held-out evidence for the gate: views, their measured and re-projected bone line integrals."""
    measured = np.asarray(measured, dtype=np.float32)
    predicted = np.asarray(predicted, dtype=np.float32)
    if measured.shape != predicted.shape or len(views) != len(measured):
        raise ValueError(f"held-out views, measured {measured.shape} and predicted {predicted.shape} images "
                         "must match")
    return {"views": list(views), "measured": measured, "predicted": predicted}


def _consistency(mesh, held: dict) -> float | None:
    num = den = 0.0
    for v, m, p in zip(held["views"], held["measured"], held["predicted"]):
        sh = piece_shadow(mesh, v)
        if not sh.any():
            continue
        num += float(np.abs(p[sh] - m[sh]).sum())
        den += float(np.abs(m[sh]).sum())
    return None if den <= 0 else num / den


def gate_pieces(pieces, volume, grid: Grid, views, *, consistency: dict | None = None,
                config: GateConfig = GateConfig()) -> None:
    """Set each piece's ``terms``, ``confidence`` and ``for_navigation`` (in place; see the module docstring)."""
    views = list(views)
    axis = rotation_axis(views) if len(views) >= 2 else np.array([0.0, 0.0, 1.0])
    for p in pieces:
        cov, n_seen = angular_coverage(views, p.centroid, axis)
        tan = tangential_fraction(p.mesh, views, config.tangent_deg)
        terms = {"coverage": cov, "views_seeing": n_seen, "tangential": tan}
        conf = cov * tan
        if consistency is not None:
            e = _consistency(p.mesh, consistency)
            if e is not None:
                terms["holdout_error"] = e
                terms["consistency"] = float(np.clip(1.0 - e / config.consistency_error, 0.0, 1.0))
                conf *= terms["consistency"]
        if n_seen < config.min_views:
            conf = 0.0
        p.terms = terms
        p.confidence = float(conf)
        reasons = []
        if conf < config.threshold:
            reasons.append(f"confidence {conf:.2f} < {config.threshold:g}")
        if p.truncated:
            reasons.append("cut by the reconstruction grid's boundary")
        if n_seen < config.min_views:
            reasons.append(f"seen by {n_seen} views (< {config.min_views})")
        if p.volume_mm3 < config.min_volume_mm3:
            reasons.append(f"a fragment ({p.volume_mm3:.0f} mm^3 < {config.min_volume_mm3:g})")
        p.for_navigation = not reasons
        p.terms["reason"] = "; ".join(reasons) if reasons else "ok"
