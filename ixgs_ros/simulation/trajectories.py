"""C-arm trajectories around a region of interest: lists of :class:`~ixgs_ros.core.geometry.View`.

Every view is built with :meth:`View.from_carm` (DICOM XA angles in patient LPS) and placed in the world
frame of a NIfTI CT (RAS+ mm) through ``PATIENT_TO_WORLD`` (LPS -> RAS: x and y negated), i.e. the patient
lies along the CT's superior-inferior axis (world z) and the C-arm's primary rotation turns about it:
primary 0 deg puts the source posterior and the detector anterior, +90 deg (LAO 90) puts the detector on
the patient's left. The secondary angle (cranial +/caudal -) is the "tilt", the detector roll about the
central beam the "roll".

Families (``kind``):

* ``random-arc``: ``n_views`` primary angles drawn stratified-uniformly over an arc (one random angle in
  each of ``n_views`` equal sectors, so coverage is even but irregular), default 160 deg;
* ``limited-arc``: evenly spaced over a short arc (default 90 deg, both ends included);
* ``circular``: evenly spaced over the full 360 deg;
* ``two-orbit``: two evenly spaced arcs (default 160 deg each) at tilts ``tilt_deg -/+ orbit_separation_deg/2``,
  the second orbit's angles offset by half a step.

Each view then gets independent random jitter (uniform in +/- the given amplitude): tilt and roll (deg),
source-isocentre and source-detector distances (mm), isocentre position (mm, each axis), principal-point
offset (pixels, each axis) and relative pixel pitch. All views share the detector size (pixels), as the
ixgs-scan format requires. The random stream depends only on ``seed``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..core.geometry import View

__all__ = ["TRAJECTORY_KINDS", "DEFAULT_ARCS", "PATIENT_TO_WORLD", "TrajectoryConfig", "make_trajectory",
           "auto_pixel_mm", "random_arc", "limited_arc", "circular", "two_orbit"]

TRAJECTORY_KINDS = ("random-arc", "limited-arc", "circular", "two-orbit")
DEFAULT_ARCS = {"random-arc": 160.0, "limited-arc": 90.0, "circular": 360.0, "two-orbit": 160.0}

#: Patient LPS -> world RAS (nibabel's scanner frame): a rotation of 180 deg about the long axis.
PATIENT_TO_WORLD = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class TrajectoryConfig:
    """Parameters of a simulated C-arm trajectory (angles in degrees, lengths in mm)."""

    kind: str = "random-arc"
    n_views: int = 25
    arc_deg: float | None = None           # None: DEFAULT_ARCS[kind]
    arc_center_deg: float = 0.0            # primary angle at the middle of the arc (0: source posterior)
    tilt_deg: float = 0.0                  # base secondary angle (cranial +)
    orbit_separation_deg: float = 30.0     # two-orbit: tilt difference between the orbits
    sod_mm: float = 600.0
    sdd_mm: float = 1000.0
    width: int = 256
    height: int | None = None              # None: = width
    pixel_mm: float | None = None          # detector pitch; None: the ROI's bounding sphere fills the detector
    # per-view jitter amplitudes (uniform in +/- amplitude)
    tilt_jitter_deg: float = 2.0
    roll_jitter_deg: float = 2.0
    sod_jitter_mm: float = 5.0
    sdd_jitter_mm: float = 5.0
    iso_jitter_mm: float = 2.0
    principal_jitter_px: float = 3.0
    pixel_jitter: float = 0.005            # relative pitch jitter
    seed: int = 0

    def resolved_arc(self) -> float:
        return float(DEFAULT_ARCS[self.kind] if self.arc_deg is None else self.arc_deg)

    def without_jitter(self) -> "TrajectoryConfig":
        d = asdict(self)
        for k in ("tilt_jitter_deg", "roll_jitter_deg", "sod_jitter_mm", "sdd_jitter_mm", "iso_jitter_mm",
                  "principal_jitter_px", "pixel_jitter"):
            d[k] = 0.0
        return TrajectoryConfig(**d)

    def validate(self) -> "TrajectoryConfig":
        if self.kind not in TRAJECTORY_KINDS:
            raise ValueError(f"unknown trajectory {self.kind!r}: choose one of {', '.join(TRAJECTORY_KINDS)}")
        if int(self.n_views) < 1:
            raise ValueError(f"the number of views must be at least 1, got {self.n_views}")
        if self.kind == "two-orbit" and int(self.n_views) < 2:
            raise ValueError("a two-orbit trajectory needs at least 2 views")
        arc = self.resolved_arc()
        if not 0 <= arc <= 360:
            raise ValueError(f"arc must be within [0, 360] degrees, got {arc}")
        if not (self.sod_mm > 0 and self.sdd_mm > self.sod_mm):
            raise ValueError(f"need 0 < SOD < SDD, got SOD {self.sod_mm} mm, SDD {self.sdd_mm} mm")
        if self.sod_mm - self.sod_jitter_mm <= 0 or \
                self.sdd_mm - self.sdd_jitter_mm <= self.sod_mm + self.sod_jitter_mm:
            raise ValueError("SOD/SDD jitter too large: the source could reach the detector")
        if int(self.width) < 1 or (self.height is not None and int(self.height) < 1):
            raise ValueError("detector size must be positive")
        if self.pixel_mm is not None and not self.pixel_mm > 0:
            raise ValueError(f"pixel pitch must be positive, got {self.pixel_mm}")
        for k in ("tilt_jitter_deg", "roll_jitter_deg", "sod_jitter_mm", "sdd_jitter_mm", "iso_jitter_mm",
                  "principal_jitter_px", "pixel_jitter"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0")
        if self.pixel_jitter >= 0.5:
            raise ValueError("pixel_jitter is relative and must be < 0.5")
        return self


def auto_pixel_mm(cfg: TrajectoryConfig, roi_radius_mm: float) -> float:
    """Detector pitch (mm) such that a sphere of ``roi_radius_mm`` around the isocentre projects inside the
    detector for every jittered view (worst case of SOD, SDD, isocentre, principal point and pitch jitter)."""
    r = float(roi_radius_mm) + math.sqrt(3.0) * cfg.iso_jitter_mm
    d_min = cfg.sod_mm - cfg.sod_jitter_mm
    if r >= d_min:
        raise ValueError(f"the ROI (radius {roi_radius_mm:.0f} mm) reaches the source at SOD {cfg.sod_mm} mm")
    tan_half = r / math.sqrt(d_min * d_min - r * r)
    n = min(int(cfg.width), int(cfg.height or cfg.width))
    half_px = n / 2.0 - cfg.principal_jitter_px - 1.0
    if half_px <= 1:
        raise ValueError("detector too small for the principal-point jitter")
    pitch = (cfg.sdd_mm + cfg.sdd_jitter_mm) * tan_half / half_px / (1.0 - cfg.pixel_jitter)
    return math.ceil(pitch * 1000.0) / 1000.0


def _primary_angles(cfg: TrajectoryConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(primary, base secondary, orbit index) per view."""
    n, arc, c = int(cfg.n_views), cfg.resolved_arc(), float(cfg.arc_center_deg)
    if cfg.kind == "random-arc":
        edges = np.linspace(-arc / 2, arc / 2, n + 1)
        prim = c + edges[:-1] + rng.uniform(0.0, 1.0, n) * np.diff(edges)
        return prim, np.full(n, cfg.tilt_deg), np.zeros(n, dtype=int)
    if cfg.kind == "limited-arc":
        prim = c + (np.linspace(-arc / 2, arc / 2, n) if n > 1 else np.zeros(1))
        return prim, np.full(n, cfg.tilt_deg), np.zeros(n, dtype=int)
    if cfg.kind == "circular":
        prim = c - arc / 2 + np.arange(n) * arc / n if arc < 360 else c + np.arange(n) * 360.0 / n
        return prim, np.full(n, cfg.tilt_deg), np.zeros(n, dtype=int)
    # two-orbit
    n1 = (n + 1) // 2
    n2 = n - n1
    out_p, out_s, out_o = [], [], []
    for orbit, (m, tilt) in enumerate(((n1, cfg.tilt_deg - cfg.orbit_separation_deg / 2),
                                       (n2, cfg.tilt_deg + cfg.orbit_separation_deg / 2))):
        if m == 0:
            continue
        step = arc / max(m, 1)
        p = c - arc / 2 + (np.arange(m) + (0.25 if orbit == 0 else 0.75)) * step
        out_p.append(p)
        out_s.append(np.full(m, tilt))
        out_o.append(np.full(m, orbit))
    return np.concatenate(out_p), np.concatenate(out_s), np.concatenate(out_o)


def _wrap180(a):
    return (np.asarray(a, dtype=np.float64) + 180.0) % 360.0 - 180.0


def make_trajectory(cfg: TrajectoryConfig, isocenter, roi_radius_mm: float = 0.0) -> list[View]:
    """Views of the trajectory ``cfg`` around the world point ``isocenter`` (mm).

    ``roi_radius_mm`` is used to choose the pixel pitch when ``cfg.pixel_mm`` is None. Every view's meta
    holds ``sdd``, ``carm`` (from :meth:`View.from_carm`) and ``trajectory`` (kind, index, orbit, nominal and
    jittered angles, distances, isocentre in world mm).
    """
    cfg.validate()
    iso_world = np.asarray(isocenter, dtype=np.float64).reshape(3)
    width = int(cfg.width)
    height = int(cfg.height or cfg.width)
    pitch0 = float(cfg.pixel_mm) if cfg.pixel_mm is not None else auto_pixel_mm(cfg, max(roi_radius_mm, 1.0))
    rng = np.random.default_rng(cfg.seed)
    prim, sec, orbit = _primary_angles(cfg, rng)
    n = len(prim)
    u = lambda amp, *shape: rng.uniform(-1.0, 1.0, shape or (n,)) * amp  # noqa: E731
    tilt_j, roll_j = u(cfg.tilt_jitter_deg), u(cfg.roll_jitter_deg)
    sod_j, sdd_j = u(cfg.sod_jitter_mm), u(cfg.sdd_jitter_mm)
    iso_j = u(cfg.iso_jitter_mm, n, 3)
    pp_j = u(cfg.principal_jitter_px, n, 2)
    pitch_j = 1.0 + u(cfg.pixel_jitter)
    world_to_patient = np.linalg.inv(PATIENT_TO_WORLD)
    views = []
    for i in range(n):
        iso_w = iso_world + iso_j[i]
        iso_p = world_to_patient[:3, :3] @ iso_w + world_to_patient[:3, 3]
        primary = float(_wrap180(prim[i]))
        secondary = float(sec[i] + tilt_j[i])
        sod, sdd = float(cfg.sod_mm + sod_j[i]), float(cfg.sdd_mm + sdd_j[i])
        pitch = pitch0 * float(pitch_j[i])
        meta = {"trajectory": {
            "kind": cfg.kind, "index": i, "orbit": int(orbit[i]), "primary_deg": primary,
            "nominal_primary_deg": float(prim[i]), "secondary_deg": secondary,
            "nominal_secondary_deg": float(sec[i]), "roll_deg": float(roll_j[i]), "sod_mm": sod, "sdd_mm": sdd,
            "pixel_mm": pitch, "isocenter_world": [float(x) for x in iso_w],
            "principal_offset_px": [float(pp_j[i, 0]), float(pp_j[i, 1])]}}
        views.append(View.from_carm(primary, secondary, sdd, sod, pitch, width, height, isocenter=iso_p,
                                    principal_offset_px=pp_j[i], detector_roll_deg=float(roll_j[i]),
                                    patient_to_world=PATIENT_TO_WORLD, meta=meta))
    return views


def _family(kind):
    def build(isocenter, n_views=25, roi_radius_mm=0.0, **kwargs) -> list[View]:
        return make_trajectory(TrajectoryConfig(kind=kind, n_views=n_views, **kwargs), isocenter, roi_radius_mm)

    build.__name__ = kind.replace("-", "_")
    build.__doc__ = f"``{kind}`` trajectory around ``isocenter``; keyword arguments as :class:`TrajectoryConfig`."
    return build


random_arc = _family("random-arc")
limited_arc = _family("limited-arc")
circular = _family("circular")
two_orbit = _family("two-orbit")
