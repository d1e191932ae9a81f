"""Metal implants as analytic solids: exact chord lengths (mm) of every pixel ray through capped cylinders.

A pedicle screw is a shank (a cylinder from the entry point to the tip, 4.5-6.5 mm across) plus a tulip head
(a wider, short cylinder behind the entry point). Chords are computed in world mm along the same rays as the
CT path lengths (:meth:`View.ray_directions` from the source), so a screw is exactly registered with the
anatomy. The metal displaces the bone it sits in; that overlap is ignored (a 6.5 mm screw's attenuation is
several times that of the bone it replaces).

:func:`pedicle_screws` places a bilateral pair in a vertebra from its label's world centroid and bounding box
(RAS world: +x patient left-right axis, +y anterior, +z cranial): the tip a few mm lateral of the midline
near the front of the body, the shank converging medially by 5-20 degrees.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Cylinder", "cylinder_chords", "metal_path_lengths", "pedicle_screws", "METALS"]

#: Implant materials (keys of :data:`ixgs_ros.simulation.spectra.MATERIALS`).
METALS = ("titanium", "steel")


@dataclass
class Cylinder:
    """A solid capped cylinder from ``p0`` to ``p1`` (world mm) of ``radius`` mm made of ``material``."""

    p0: tuple
    p1: tuple
    radius: float
    material: str = "titanium"

    def __post_init__(self):
        self.p0 = tuple(float(x) for x in self.p0)
        self.p1 = tuple(float(x) for x in self.p1)
        self.radius = float(self.radius)
        if len(self.p0) != 3 or len(self.p1) != 3:
            raise ValueError("cylinder end points need 3 coordinates")
        if not self.radius > 0 or np.linalg.norm(np.subtract(self.p1, self.p0)) <= 0:
            raise ValueError("a cylinder needs a positive radius and length")
        if self.material not in METALS:
            raise ValueError(f"unknown implant material {self.material!r}: choose one of {', '.join(METALS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def cylinder_chords(origin, dirs, cyl: Cylinder) -> np.ndarray:
    """Length (mm) of each ray ``origin + t * dirs[k]`` (t >= 0, ``dirs`` unit vectors ``[..., 3]``) inside
    the capped cylinder ``cyl``: the overlap of the infinite cylinder's interval with the slab between the
    caps, clipped to t >= 0."""
    o = np.asarray(origin, dtype=np.float64)
    d = np.asarray(dirs, dtype=np.float64)
    p0, p1 = np.asarray(cyl.p0), np.asarray(cyl.p1)
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    a = axis / length
    w = o - p0
    da = d @ a                                   # [...]
    wa = float(w @ a)
    d_perp = d - da[..., None] * a               # components perpendicular to the axis
    w_perp = w - wa * a
    A = np.einsum("...i,...i->...", d_perp, d_perp)
    B = 2.0 * (d_perp @ w_perp)
    C = float(w_perp @ w_perp) - cyl.radius ** 2
    disc = B * B - 4.0 * A * C
    tiny = A < 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        sq = np.sqrt(np.maximum(disc, 0.0))
        t_in = np.where(tiny, -np.inf, (-B - sq) / (2.0 * A))
        t_out = np.where(tiny, np.inf, (-B + sq) / (2.0 * A))
    hit_side = np.where(tiny, C <= 0.0, disc > 0.0)  # a ray along the axis is inside iff its offset is
    # slab 0 <= wa + t * da <= length
    with np.errstate(divide="ignore", invalid="ignore"):
        s0 = (0.0 - wa) / da
        s1 = (length - wa) / da
    par = np.abs(da) < 1e-12
    s_lo = np.where(par, np.where((wa >= 0) & (wa <= length), -np.inf, np.inf), np.minimum(s0, s1))
    s_hi = np.where(par, np.where((wa >= 0) & (wa <= length), np.inf, -np.inf), np.maximum(s0, s1))
    lo = np.maximum(np.maximum(t_in, s_lo), 0.0)
    hi = np.minimum(t_out, s_hi)
    return np.where(hit_side, np.maximum(hi - lo, 0.0), 0.0)


def metal_path_lengths(views, implants) -> dict[str, np.ndarray]:
    """Per-material metal chord lengths ``{material: float32 [N, H, W] mm}`` of ``implants`` (Cylinders)
    along every pixel ray of ``views`` (only materials present are returned)."""
    views = list(views)
    out: dict[str, np.ndarray] = {}
    if not implants:
        return out
    H, W = views[0].shape
    for i, v in enumerate(views):
        dirs = v.ray_directions().reshape(H, W, 3)
        for cyl in implants:
            arr = out.setdefault(cyl.material, np.zeros((len(views), H, W), np.float32))
            arr[i] += cylinder_chords(v.source, dirs, cyl).astype(np.float32)
    return out


def pedicle_screws(anchor: dict, rng: np.random.Generator, material: str = "titanium",
                   diameter_mm: float = 6.5, length_mm: float = 40.0, convergence_deg: float = 12.0,
                   head: bool = True, sides=(-1, 1)) -> list[Cylinder]:
    """A bilateral pair of pedicle screws (shank + optional tulip head per side) in the vertebra ``anchor``
    (``{"centroid": [x, y, z], "bbox": [[lo], [hi]]}`` world mm, as :class:`PathLengths` anchors give).

    The tip lies 4-7 mm lateral of the midline, 8-12 mm behind the front of the body (bbox max y), at the
    centroid's height +-2 mm; the shank runs back and laterally at ``convergence_deg`` from the sagittal
    plane; the head is a 10-11 mm wide, 10-12 mm long cylinder behind the entry point. ``rng`` jitters the
    placement (the same rng gives the same screws)."""
    c = np.asarray(anchor["centroid"], dtype=np.float64)
    lo, hi = (np.asarray(b, dtype=np.float64) for b in anchor["bbox"])
    out = []
    for side in sides:
        th = np.deg2rad(convergence_deg + rng.uniform(-3, 3))
        tip = np.array([c[0] + side * rng.uniform(4.0, 7.0), hi[1] - rng.uniform(8.0, 12.0),
                        c[2] + rng.uniform(-2.0, 2.0)])
        back = np.array([side * np.sin(th), -np.cos(th), rng.uniform(-0.08, 0.08)])  # tip -> entry
        back /= np.linalg.norm(back)
        entry = tip + length_mm * back
        out.append(Cylinder(tuple(entry), tuple(tip), diameter_mm / 2.0, material))
        if head:
            head_end = entry + rng.uniform(10.0, 12.0) * back
            out.append(Cylinder(tuple(entry), tuple(head_end), rng.uniform(5.0, 5.5), material))
    return out
