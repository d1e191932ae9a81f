"""C-arm view geometry: the single source of truth for every part of ixgs_ros.

Long because the pinhole convention lives in one class, :class:`View` (projection, rays, frustum, detector and
C-arm descriptions, binning, serialisation): split, the convention would be spread over several files.

A view is a pinhole camera placed at the X-ray source.

* ``K`` (3x3, pixels): ``(u, v, 1) ~ K @ X_cam`` with ``u`` the column, ``v`` the row, pixel centres at
  integer coordinates (pixel ``(0, 0)`` is the centre of the first column/row).
* ``T_world_source`` (4x4, camera-to-world, mm): optical frame with ``z`` from the source toward the
  detector, ``x`` along image columns and ``y`` along image rows.
* ``width`` / ``height``: detector size in pixels (columns / rows).

Arbitrary 6-DoF poses and off-centre principal points are first-class. Projections are line integrals of
the attenuation coefficient (mu in 1/mm) along the ray from the source through the pixel centre.

Conversions: :meth:`View.detector_vectors` / :meth:`View.from_detector_vectors` (flat-detector vectors as
RTK / ASTRA use them, exact inverses), :meth:`View.from_carm` / :meth:`View.to_carm` (DICOM XA positioner
angles in patient LPS, see :func:`carm_rotation`). Visibility: :meth:`View.in_view`,
:meth:`View.frustum_planes`, :meth:`View.frustum_corners` and :func:`roi_visibility`.

Everything else (scan files, simulation, reconstruction, RTK baselines, ROS messages) converts to and from
:class:`View`; no other module re-derives camera maths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .validate import finite_number, finite_vector

__all__ = [
    "GeometryError",
    "View",
    "validate_K",
    "validate_pose",
    "look_at",
    "rotation_x",
    "rotation_y",
    "rotation_z",
    "carm_rotation",
    "CArmParams",
    "roi_visibility",
    "views_bounding_sphere",
]

ORTHONORMAL_TOL = 1e-6


class GeometryError(ValueError):
    """Raised for invalid camera geometry (bad K, non-rigid pose, NaN/inf, degenerate detector)."""


def _as_matrix(a, shape: tuple[int, int], name: str) -> np.ndarray:
    try:
        m = np.array(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{name}: must be a numeric {shape[0]}x{shape[1]} matrix: {exc}") from None
    if m.shape != shape:
        raise GeometryError(f"{name}: must have shape {shape}, got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise GeometryError(f"{name}: contains NaN or inf: {m.tolist()}")
    return m


def validate_K(K, name: str = "K") -> np.ndarray:
    """Return ``K`` as float64 3x3 after checking it is a valid pinhole intrinsic matrix."""
    K = _as_matrix(K, (3, 3), name)
    if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-9):
        raise GeometryError(f"{name}: last row must be [0, 0, 1], got {K[2].tolist()}")
    if abs(K[1, 0]) > 1e-9:
        raise GeometryError(f"{name}: entry [1][0] must be 0 (upper-triangular intrinsics), got {K[1, 0]}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise GeometryError(
            f"{name}: focal lengths must be positive (fx={K[0, 0]}, fy={K[1, 1]}); "
            "a mirrored detector is expressed by the pose, not by a negative focal length"
        )
    return K


def validate_pose(T, name: str = "T_world_source") -> np.ndarray:
    """Return ``T`` as float64 4x4 after checking it is a rigid transform (orthonormal, det +1)."""
    T = _as_matrix(T, (4, 4), name)
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise GeometryError(f"{name}: last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    err = np.abs(R.T @ R - np.eye(3)).max()
    if err > ORTHONORMAL_TOL:
        raise GeometryError(f"{name}: rotation is not orthonormal (max |R^T R - I| = {err:.3g})")
    det = np.linalg.det(R)
    if det < 0:
        raise GeometryError(f"{name}: rotation has determinant {det:.3f}: a reflection, not a rotation")
    return T


def rotation_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def rotation_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def rotation_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def rotvec_to_matrix(w) -> np.ndarray:
    """Rodrigues: the rotation matrix of the rotation vector ``w`` (axis times angle, radians)."""
    w = np.asarray(w, dtype=np.float64)
    th = float(np.linalg.norm(w))
    if th < 1e-15:
        return np.eye(3)
    k = w / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(th) * Kx + (1 - math.cos(th)) * Kx @ Kx


def look_at(source, target, up) -> np.ndarray:
    """Camera-to-world pose of a source at ``source`` looking at ``target``.

    The optical ``z`` axis points from the source to the target; image rows (``y``) point as close as possible
    to ``-up`` (so ``up`` appears at the top of the image), columns (``x``) complete a right-handed frame.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64)
    z = target - source
    nz = np.linalg.norm(z)
    if not np.isfinite(nz) or nz == 0:
        raise GeometryError("look_at: source and target coincide or are not finite")
    z /= nz
    y = -(up - np.dot(up, z) * z)
    ny = np.linalg.norm(y)
    if ny < 1e-9:
        raise GeometryError("look_at: 'up' is parallel to the viewing direction")
    y /= ny
    x = np.cross(y, z)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, source
    return T


def _as_vector(a, name: str, n: int = 3) -> np.ndarray:
    return finite_vector(a, n, name, GeometryError)


def _as_scalar(a, name: str) -> float:
    return finite_number(a, name, GeometryError)


def _positive_int(val, name: str) -> int:
    try:
        ok = not isinstance(val, bool) and float(val).is_integer() and int(val) > 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise GeometryError(f"{name}: must be a positive integer, got {val!r}")
    return int(val)


#: Camera axes (columns: image x = columns, image y = rows, optical z) in patient LPS at primary = secondary =
#: roll = 0: beam toward anterior (-y), rows toward the feet (-z), columns toward the patient's right (-x).
_CARM_R0 = np.array([[-1.0, 0.0, 0.0],
                     [0.0, 0.0, -1.0],
                     [0.0, -1.0, 0.0]])


def carm_rotation(primary_deg: float, secondary_deg: float, detector_roll_deg: float = 0.0) -> np.ndarray:
    """Camera-to-patient rotation (LPS) of a C-arm view, see :meth:`View.from_carm` for the conventions.

    ``R = Rz(primary) @ Rx(-secondary) @ R0 @ Rz(roll)``: the primary (LAO+/RAO-) rotation is about the
    patient's long axis and carries the secondary (CRA+/CAU-) axis with it, as in DICOM's XA positioner
    coordinate system; the roll turns the detector about the central beam (positive: image columns turn
    toward image rows, right-handed about the beam direction).
    """
    a = np.deg2rad(_as_scalar(primary_deg, "primary_deg"))
    b = np.deg2rad(_as_scalar(secondary_deg, "secondary_deg"))
    r = np.deg2rad(_as_scalar(detector_roll_deg, "detector_roll_deg"))
    return rotation_z(a) @ rotation_x(-b) @ _CARM_R0 @ rotation_z(r)


@dataclass(frozen=True)
class CArmParams:
    """C-arm description of a view as DICOM XA stores it (see :meth:`View.from_carm`). Angles in degrees,
    distances in mm, ``pixel_spacing_mm`` as (row, column) spacing on the detector, ``principal_offset_px``
    as (u, v) pixels, ``isocenter`` in patient LPS mm."""

    primary_deg: float
    secondary_deg: float
    sid_mm: float
    sod_mm: float
    pixel_spacing_mm: tuple[float, float]
    width: int
    height: int
    isocenter: tuple[float, float, float] = (0.0, 0.0, 0.0)
    principal_offset_px: tuple[float, float] = (0.0, 0.0)
    detector_roll_deg: float = 0.0

    def to_view(self, patient_to_world=None, meta: dict | None = None) -> "View":
        return View.from_carm(self.primary_deg, self.secondary_deg, self.sid_mm, self.sod_mm,
                              self.pixel_spacing_mm, self.width, self.height, isocenter=self.isocenter,
                              principal_offset_px=self.principal_offset_px,
                              detector_roll_deg=self.detector_roll_deg, patient_to_world=patient_to_world,
                              meta=meta)

    def to_dict(self) -> dict:
        return {"primary_deg": self.primary_deg, "secondary_deg": self.secondary_deg, "sid_mm": self.sid_mm,
                "sod_mm": self.sod_mm, "pixel_spacing_mm": list(self.pixel_spacing_mm), "width": self.width,
                "height": self.height, "isocenter": list(self.isocenter),
                "principal_offset_px": list(self.principal_offset_px),
                "detector_roll_deg": self.detector_roll_deg}


@dataclass(frozen=True)
class View:
    """One X-ray view: pinhole intrinsics, camera-to-world pose and detector size."""

    K: np.ndarray
    T_world_source: np.ndarray
    width: int
    height: int
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "K", validate_K(self.K))
        object.__setattr__(self, "T_world_source", validate_pose(self.T_world_source))
        for name in ("width", "height"):
            object.__setattr__(self, name, _positive_int(getattr(self, name), name))
        if self.meta is None:
            object.__setattr__(self, "meta", {})
        elif not isinstance(self.meta, dict):
            raise GeometryError(f"meta: must be a dict, got {type(self.meta).__name__}")
        self.K.setflags(write=False)
        self.T_world_source.setflags(write=False)

    # ----------------------------------------------------------------- basic quantities
    @property
    def R(self) -> np.ndarray:
        """Rotation camera-to-world (columns are the camera axes in world coordinates)."""
        return self.T_world_source[:3, :3]

    @property
    def source(self) -> np.ndarray:
        """Source (focal spot) position in world mm."""
        return self.T_world_source[:3, 3].copy()

    @property
    def T_source_world(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.R.T
        T[:3, 3] = -self.R.T @ self.T_world_source[:3, 3]
        return T

    @property
    def principal_axis(self) -> np.ndarray:
        """Unit optical axis (source toward detector) in world coordinates."""
        return self.R[:, 2].copy()

    @property
    def principal_point(self) -> np.ndarray:
        """(cx, cy) in pixels: where the perpendicular from the source meets the detector."""
        return self.K[:2, 2].copy()

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def projection_matrix(self) -> np.ndarray:
        """3x4 matrix P with (u, v, 1) ~ P @ (X_world, 1)."""
        return self.K @ self.T_source_world[:3, :]

    # ----------------------------------------------------------------- points and rays
    def world_to_camera(self, points) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64)
        return (p - self.T_world_source[:3, 3]) @ self.R

    def project(self, points) -> tuple[np.ndarray, np.ndarray]:
        """Project world points ``[..., 3]`` to pixels. Returns ``(uv [..., 2], depth [...])``.

        ``depth`` is the camera ``z`` (mm along the optical axis); points with depth <= 0 are behind the
        source and get NaN pixel coordinates.
        """
        pc = self.world_to_camera(points)
        z = pc[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            h = pc @ self.K.T
            uv = h[..., :2] / h[..., 2:3]
        uv[z <= 0] = np.nan
        return uv, z

    def pixel_grid(self) -> np.ndarray:
        """Pixel-centre coordinates ``[H, W, 2]`` as (u, v) = (column, row)."""
        v, u = np.meshgrid(np.arange(self.height, dtype=np.float64), np.arange(self.width, dtype=np.float64),
                           indexing="ij")
        return np.stack([u, v], axis=-1)

    def ray_directions(self, uv=None) -> np.ndarray:
        """Unit world ray directions from the source through pixel(s) ``uv`` ([..., 2]); all pixels if None."""
        if uv is None:
            uv = self.pixel_grid()
        uv = np.asarray(uv, dtype=np.float64)
        h = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], axis=-1)
        d_cam = h @ np.linalg.inv(self.K).T
        d = d_cam @ self.R.T
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def in_view(self, points, margin: float = 0.0) -> np.ndarray:
        """Boolean mask of world points that project inside the detector (with ``margin`` pixels slack)."""
        uv, z = self.project(points)
        u, v = uv[..., 0], uv[..., 1]
        with np.errstate(invalid="ignore"):
            return (z > 0) & (u >= -0.5 - margin) & (u <= self.width - 0.5 + margin) & \
                   (v >= -0.5 - margin) & (v <= self.height - 0.5 + margin)

    def corner_rays(self) -> np.ndarray:
        """Unit directions ``[4, 3]`` through the outer detector corners (pixel edges)."""
        w, h = self.width - 0.5, self.height - 0.5
        return self.ray_directions(np.array([[-0.5, -0.5], [w, -0.5], [w, h], [-0.5, h]]))

    def detector_vectors(self, sdd: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """RTK/ASTRA-style description of this view on a flat detector at distance ``sdd`` (mm) from the source.

        Returns ``(source, origin, u, v)`` in world mm: ``origin`` is the centre of pixel (0, 0), ``u`` / ``v``
        the world displacement of one pixel step along columns / rows. ``sdd`` defaults to ``meta['sdd']``
        when present, else to ``fx`` (1 mm pixels). The pixel pitch is ``sdd / fx`` by ``sdd / fy``.
        """
        if sdd is None:
            sdd = float(self.meta.get("sdd", self.K[0, 0]))
        if not np.isfinite(sdd) or sdd <= 0:
            raise GeometryError(f"source-detector distance must be positive, got {sdd}")
        Kinv = np.linalg.inv(self.K)
        cam = sdd * Kinv  # columns: d/du, d/dv, point of pixel (0, 0) on the plane z = sdd
        origin = self.R @ cam[:, 2] + self.source
        return self.source, origin, self.R @ cam[:, 0], self.R @ cam[:, 1]

    @classmethod
    def from_detector_vectors(cls, source, origin, u, v, width, height, meta: dict | None = None) -> "View":
        """Exact inverse of :meth:`detector_vectors`: a view from a flat-detector description in world mm.

        ``origin`` is the centre of pixel (0, 0), ``u`` / ``v`` the displacement of one pixel step along
        columns / rows (any pitch, skew allowed). The camera frame has ``x = u / |u|`` and ``z`` the detector
        plane normal pointing from the source toward the plane; ``K = d * M^-1`` with ``M = [u, v, origin -
        source]`` in that frame and ``d`` the source-to-plane distance, which is stored as ``meta['sdd']``.
        A mirrored detector (``u x v`` pointing back to the source) is rejected: mirror the image columns
        and negate ``u`` (moving ``origin`` to the last column) to describe it.
        """
        s = _as_vector(source, "source")
        o = _as_vector(origin, "origin")
        u = _as_vector(u, "u")
        v = _as_vector(v, "v")
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        if nu == 0 or nv == 0:
            raise GeometryError(f"degenerate detector: pixel step vectors must be non-zero (|u|={nu}, |v|={nv})")
        n = np.cross(u, v)
        nn = np.linalg.norm(n)
        if nn <= 1e-9 * nu * nv:
            raise GeometryError("degenerate detector: u and v are parallel")
        n /= nn
        d = float(np.dot(n, o - s))
        scale = max(nu, nv, float(np.linalg.norm(o - s)))
        if abs(d) <= 1e-9 * scale:
            raise GeometryError("degenerate detector: the source lies in the detector plane")
        if d < 0:
            raise GeometryError(
                "mirrored detector: u x v points toward the source (a left-handed image); mirror the image "
                "columns and negate u (origin moves to the last column) to express it as a pinhole view")
        x = u / nu
        y = np.cross(n, x)
        R = np.column_stack([x, y, n])
        M = R.T @ np.column_stack([u, v, o - s])
        M[1, 0] = M[2, 0] = M[2, 1] = 0.0  # exact zeros by construction, remove round-off
        M[0, 0], M[2, 2] = nu, d
        K = d * np.linalg.inv(M)
        K[1, 0] = 0.0
        K[2] = [0.0, 0.0, 1.0]
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, s
        meta = dict(meta or {})
        meta["sdd"] = d
        return cls(K, T, width, height, meta)

    @classmethod
    def from_carm(cls, primary_deg: float, secondary_deg: float, sid_mm: float, sod_mm: float,
                  pixel_spacing_mm, width: int, height: int, isocenter=(0.0, 0.0, 0.0),
                  principal_offset_px=(0.0, 0.0), detector_roll_deg: float = 0.0, patient_to_world=None,
                  meta: dict | None = None) -> "View":
        """A view from C-arm positioner angles as DICOM XA stores them, in patient LPS coordinates.

        * ``primary_deg``: LAO (+) / RAO (-) rotation about the patient's long axis (Positioner Primary Angle).
        * ``secondary_deg``: CRAnial (+) / CAUdal (-) tilt (Positioner Secondary Angle), about an axis that
          turns with the primary rotation.
        * At 0/0 the source is posterior and the detector anterior (beam toward -y); LAO 90 puts the
          detector on the patient's left (+x); CRA tilts the detector toward the head (+z). The unit vector
          from the isocenter to the detector centre is ``(sin a cos b, -cos a cos b, sin b)``.
        * Image rows point toward the feet at 0/0 and image columns toward the patient's RIGHT (-x): the
          image is seen from the source (beam's-eye view), which keeps the camera frame right-handed. A
          radiograph displayed the usual way (as seen from the detector side, the patient's left on the
          right of the image at 0/0) is the column mirror of it (see ``ixgs_ros.core.importers``).
        * ``detector_roll_deg`` turns the detector about the beam (see :func:`carm_rotation`).
        * ``sid_mm`` source-to-detector, ``sod_mm`` source-to-isocenter distance; ``pixel_spacing_mm`` the
          (row, column) pitch on the detector (DICOM ImagerPixelSpacing order), a number for square pixels.
        * The isocenter is on the central ray, which meets the detector at the image centre shifted by
          ``principal_offset_px`` = (du, dv) pixels: ``cx = (width - 1) / 2 + du``, ``cy = (height - 1) / 2 + dv``.
        * ``patient_to_world`` (4x4 rigid, default identity) maps patient LPS to the world frame.

        ``meta`` gets ``sdd`` (= sid) and ``carm`` (the parameters, see :class:`CArmParams`).
        """
        sid = _as_scalar(sid_mm, "sid_mm")
        sod = _as_scalar(sod_mm, "sod_mm")
        if sid <= 0:
            raise GeometryError(f"sid_mm: must be positive, got {sid}")
        if not 0 < sod < sid:
            raise GeometryError(f"sod_mm: must be between 0 and sid_mm ({sid}), got {sod}")
        try:
            ps = np.broadcast_to(np.asarray(pixel_spacing_mm, dtype=np.float64), (2,)).copy()
        except (TypeError, ValueError):
            ps = None
        if ps is None or not np.all(np.isfinite(ps)) or np.any(ps <= 0):
            raise GeometryError(f"pixel_spacing_mm: must be 1 or 2 positive numbers (row, col), got {pixel_spacing_mm}")
        iso = _as_vector(isocenter, "isocenter")
        off = _as_vector(principal_offset_px, "principal_offset_px", 2)
        roll = _as_scalar(detector_roll_deg, "detector_roll_deg")
        R = carm_rotation(primary_deg, secondary_deg, roll)
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = iso - sod * R[:, 2]
        if patient_to_world is not None:
            T = validate_pose(patient_to_world, "patient_to_world") @ T
        width, height = _positive_int(width, "width"), _positive_int(height, "height")
        K = np.array([[sid / ps[1], 0.0, (float(width) - 1) / 2 + off[0]],
                      [0.0, sid / ps[0], (float(height) - 1) / 2 + off[1]],
                      [0.0, 0.0, 1.0]])
        meta = dict(meta or {})
        meta["sdd"] = sid
        meta["carm"] = CArmParams(float(primary_deg), float(secondary_deg), sid, sod, (float(ps[0]), float(ps[1])),
                                  int(width), int(height), tuple(float(c) for c in iso),
                                  (float(off[0]), float(off[1])), roll).to_dict()
        return cls(K, T, width, height, meta)

    def to_carm(self, patient_to_world=None, isocenter=None, sid_mm: float | None = None,
                tol_mm: float = 1e-3) -> CArmParams:
        """C-arm angles and distances of this view (inverse of :meth:`from_carm`).

        Every rigid pose has angles (primary in (-180, 180], secondary in [-90, 90], the rest in the roll);
        what can make a view not C-arm-like is skewed pixels (``K[0][1] != 0``) or an isocenter that is
        not on the central ray. ``sid_mm`` defaults to ``meta['sdd']``. ``isocenter`` (patient LPS)
        defaults to ``meta['carm']['isocenter']`` when present, else to the point of the central ray nearest
        the patient origin. Raises :class:`GeometryError` when the view cannot be described.
        """
        K = self.K
        if abs(K[0, 1]) > 1e-9 * K[0, 0]:
            raise GeometryError(f"not C-arm-like: skewed pixels (K[0][1] = {K[0, 1]})")
        if sid_mm is None:
            if "sdd" not in self.meta:
                raise GeometryError("to_carm needs sid_mm (the view has no meta['sdd'])")
            sid_mm = self.meta["sdd"]
        sid = _as_scalar(sid_mm, "sid_mm")
        if sid <= 0:
            raise GeometryError(f"sid_mm: must be positive, got {sid}")
        T = self.T_world_source
        if patient_to_world is not None:
            P = validate_pose(patient_to_world, "patient_to_world")
            Pinv = np.eye(4)
            Pinv[:3, :3] = P[:3, :3].T
            Pinv[:3, 3] = -P[:3, :3].T @ P[:3, 3]
            T = Pinv @ T
        R, src = T[:3, :3], T[:3, 3]
        z = R[:, 2]
        b = float(np.arcsin(np.clip(z[2], -1.0, 1.0)))
        a = float(np.arctan2(z[0], -z[1])) if np.hypot(z[0], z[1]) > 1e-12 else 0.0
        Q = (rotation_z(a) @ rotation_x(-b) @ _CARM_R0).T @ R
        roll = float(np.arctan2(Q[1, 0], Q[0, 0]))
        if isocenter is None and isinstance(self.meta.get("carm"), dict) and "isocenter" in self.meta["carm"]:
            isocenter = self.meta["carm"]["isocenter"]
        if isocenter is None:
            t = float(np.dot(-src, z))
            if t <= 0:
                raise GeometryError("not C-arm-like: the patient origin is behind the source; pass isocenter")
            iso = src + t * z
        else:
            iso = _as_vector(isocenter, "isocenter")
            t = float(np.dot(iso - src, z))
            off_axis = float(np.linalg.norm(iso - src - t * z))
            if off_axis > tol_mm:
                raise GeometryError(f"not C-arm-like: the isocenter is {off_axis:.3g} mm off the central ray")
        if not 0 < t < sid:
            raise GeometryError(f"not C-arm-like: source-isocenter distance {t:.6g} mm is not in (0, sid={sid})")
        deg = lambda x: float(np.rad2deg(x)) + 0.0  # noqa: E731  (+0.0 turns -0.0 into 0.0)
        return CArmParams(deg(a), deg(b), sid, t, (float(sid / K[1, 1]), float(sid / K[0, 0])), self.width, self.height,
                          tuple(float(c) for c in iso),
                          (float(K[0, 2] - (self.width - 1) / 2), float(K[1, 2] - (self.height - 1) / 2)),
                          deg(roll))

    # ----------------------------------------------------------------- frustum
    def frustum_planes(self) -> tuple[np.ndarray, np.ndarray]:
        """The 4 side planes of the viewing pyramid (through the source and the outer detector edges).

        Returns ``(normals [4, 3], offsets [4])`` in world mm with unit normals pointing inward: a point
        ``X`` is seen by the view iff ``normals @ X + offsets >= 0`` for all four planes (this matches
        :meth:`in_view` with ``margin=0``; the half-spaces exclude the mirror pyramid behind the source).
        Order: top (row -0.5), right (column width - 0.5), bottom, left.
        """
        c = self.corner_rays()
        n = np.cross(c, np.roll(c, -1, axis=0))
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        centre = self.ray_directions(np.array([(self.width - 1) / 2.0, (self.height - 1) / 2.0]))
        n *= np.where(n @ centre < 0, -1.0, 1.0)[:, None]
        return n, -(n @ self.source)

    def frustum_corners(self, near: float, far: float) -> np.ndarray:
        """World corners ``[8, 3]`` of the viewing frustum cut at depths ``near`` and ``far`` (mm along the
        optical axis): near TL, TR, BR, BL then far TL, TR, BR, BL (outer pixel edges). ``near = 0`` puts the
        near corners at the source; ``far = meta['sdd']`` gives the detector corners."""
        near, far = _as_scalar(near, "near"), _as_scalar(far, "far")
        if not 0 <= near <= far:
            raise GeometryError(f"frustum depths must satisfy 0 <= near <= far, got near={near}, far={far}")
        w, h = self.width - 0.5, self.height - 0.5
        px = np.array([[-0.5, -0.5, 1.0], [w, -0.5, 1.0], [w, h, 1.0], [-0.5, h, 1.0]])
        d_cam = px @ np.linalg.inv(self.K).T  # camera z == 1
        cam = np.concatenate([near * d_cam, far * d_cam])
        return cam @ self.R.T + self.T_world_source[:3, 3]

    # ----------------------------------------------------------------- transforms
    def scaled(self, factor: float) -> "View":
        """The same view on a detector resampled by ``factor`` (0.5 = half the pixels per side).

        Pixel centres stay at integer coordinates: u' = factor * (u + 0.5) - 0.5.
        """
        if factor <= 0:
            raise GeometryError("scale factor must be positive")
        S = np.array([[factor, 0, 0.5 * factor - 0.5], [0, factor, 0.5 * factor - 0.5], [0, 0, 1]])
        return View(S @ self.K, self.T_world_source, max(1, round(self.width * factor)),
                    max(1, round(self.height * factor)), dict(self.meta))

    def transformed(self, T_new_world) -> "View":
        """The same view expressed in another world frame: ``X_new = T_new_world @ X_world``."""
        T_new_world = validate_pose(T_new_world, "T_new_world")
        return View(self.K, T_new_world @ self.T_world_source, self.width, self.height, dict(self.meta))

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict:
        return {"K": self.K.tolist(), "T_world_source": self.T_world_source.tolist(),
                "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict) -> "View":
        """Inverse of :meth:`to_dict`; keys other than K, T_world_source, width, height go to ``meta``."""
        if not isinstance(d, dict):
            raise GeometryError(f"view: must be a mapping, got {type(d).__name__}")
        missing = [k for k in ("K", "T_world_source", "width", "height") if k not in d]
        if missing:
            raise GeometryError(f"view: missing key(s) {', '.join(missing)}")
        meta = {k: v for k, v in d.items() if k not in ("K", "T_world_source", "width", "height")}
        return cls(d["K"], d["T_world_source"], d["width"], d["height"], meta)

    def __eq__(self, other):  # dataclass eq does not work with numpy arrays
        if not isinstance(other, View):
            return NotImplemented
        return (self.width, self.height) == (other.width, other.height) and \
            np.array_equal(self.K, other.K) and np.array_equal(self.T_world_source, other.T_world_source)

    __hash__ = None


def check_view_list(views, error: type[Exception] = GeometryError) -> list["View"]:
    """``views`` as a non-empty list of :class:`View`, else ``error`` naming the first bad entry."""
    views = list(views)
    if not views:
        raise error("no views given")
    for i, v in enumerate(views):
        if not isinstance(v, View):
            raise error(f"views[{i}] is not a View ({type(v).__name__})")
    return views


def views_bounding_sphere(views: Iterable[View]) -> tuple[np.ndarray, float]:
    """Rough centre/radius of the region all principal axes point at (least-squares ray intersection)."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    srcs = []
    for v in views:
        d = v.principal_axis
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ v.source
        srcs.append(v.source)
    c = np.linalg.lstsq(A, b, rcond=None)[0]
    r = float(np.min(np.linalg.norm(np.array(srcs) - c, axis=1)))
    return c, r


def roi_visibility(views: Sequence[View], grid_or_points, margin: float = 0.0,
                   chunk: int = 1 << 20) -> np.ndarray:
    """How many of ``views`` see each point (projects inside the detector, in front of the source).

    ``grid_or_points``: a :class:`ixgs_ros.core.volume.Grid` (its voxel centres; result ``[I, J, K]``) or
    world points ``[..., 3]`` (result ``[...]``). Returns int32 counts; ``margin`` is in pixels as in
    :meth:`View.in_view`. Points are processed ``chunk`` at a time to bound memory.
    """
    views = list(views)
    grid = None
    if hasattr(grid_or_points, "index_to_world") and hasattr(grid_or_points, "shape") \
            and not isinstance(grid_or_points, np.ndarray):
        grid = grid_or_points
        shape = tuple(grid.shape)
        flat = None
    else:
        pts = np.asarray(grid_or_points, dtype=np.float64)
        if pts.ndim == 0 or pts.shape[-1] != 3:
            raise GeometryError(f"points: expected shape [..., 3], got {pts.shape}")
        shape = pts.shape[:-1]
        flat = pts.reshape(-1, 3)
    n = int(np.prod(shape))
    counts = np.zeros(n, dtype=np.int32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        if grid is not None:
            ijk = np.stack(np.unravel_index(np.arange(start, stop), shape), axis=-1)
            p = grid.index_to_world(ijk)
        else:
            p = flat[start:stop]
        for v in views:
            counts[start:stop] += v.in_view(p, margin=margin)
    return counts.reshape(shape)
