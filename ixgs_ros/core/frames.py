"""A frame graph of rigid transforms over time, ROS-free: what a tf listener needs, in millimetres and seconds.

A tracked C-arm publishes a chain of transforms such as world <- tracker (static: where the camera stands),
tracker <- C-arm marker (the tracker's measurement, tens of Hz) and marker <- X-ray source (a static
calibration). :class:`FrameGraph` stores each edge ``parent <- child`` (``T_parent_child``: 4x4, maps points in
``child`` coordinates into ``parent`` coordinates, translations in mm) and composes any two connected frames
at a time stamp: :meth:`FrameGraph.lookup` ``(target, source, stamp)`` gives ``T_target_source``.

Rules (the tf2 model, reimplemented from its documented behaviour):

* The frames form a forest: each child has one parent. A child that gets a new parent drops the old edge.
* A static edge holds at every time; a dynamic edge keeps the samples of the last ``cache_s`` seconds of
  stamps (behind its newest) and is interpolated between the two samples around the asked stamp (linear in
  translation, spherical in rotation). A stamp outside a dynamic edge's samples is an error
  (:class:`FrameError`, naming the edge and how far outside) unless within ``tolerance_s`` of the nearest
  sample, which is then used as is. ``stamp=None`` uses each edge's newest sample.
* Quaternions are checked: a norm further than :data:`QUAT_NORM_TOL` from 1 (including 0) is not a rotation
  and is refused (:func:`quaternion_to_rotation`); publishers' rounding (1 +- 1e-7) passes and is normalised.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FrameError", "FrameGraph", "QUAT_NORM_TOL", "quaternion_to_rotation", "rotation_to_quaternion",
           "slerp", "transform_from", "invert"]

#: Largest accepted deviation of a quaternion's norm from 1 (a rounding error, not a different rotation).
QUAT_NORM_TOL = 1e-3


class FrameError(ValueError):
    """A transform that cannot be stored or looked up (the message names the frames and the reason)."""


# ------------------------------------------------------------------------------------------- rotations
def quaternion_to_rotation(x: float, y: float, z: float, w: float, norm_tol: float | None = QUAT_NORM_TOL,
                           error: type[Exception] = FrameError) -> np.ndarray:
    """3x3 rotation of the quaternion ``(x, y, z, w)``. With ``norm_tol`` a quaternion whose norm is more than
    ``norm_tol`` from 1 is refused (``error``); None normalises any non-zero quaternion."""
    q = np.array([x, y, z, w], dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not math.isfinite(n) or n < 1e-6:
        raise error(f"quaternion ({x}, {y}, {z}, {w}) is not a rotation (norm {n})")
    if norm_tol is not None and abs(n - 1.0) > norm_tol:
        raise error(f"quaternion ({x}, {y}, {z}, {w}) is not a unit quaternion (norm {n:.6g}, allowed 1 +- "
                    f"{norm_tol:g})")
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotation_to_quaternion(R) -> tuple[float, float, float, float]:
    """Unit quaternion ``(x, y, z, w)`` with ``w >= 0`` of a 3x3 rotation (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        w, x, y, z = 0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        w, x, y, z = (R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        w, x, y, z = (R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s
    else:
        s = 2.0 * math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        w, x, y, z = (R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return tuple(float(c) for c in q)


def slerp(q0, q1, t: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions ``q0`` (t = 0) and ``q1`` (t = 1), the short way."""
    q0, q1 = np.asarray(q0, dtype=np.float64), np.asarray(q1, dtype=np.float64)
    d = float(q0 @ q1)
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:  # nearly equal: linear is exact enough and avoids dividing by sin(~0)
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    a = math.acos(min(d, 1.0))
    return (math.sin((1 - t) * a) * q0 + math.sin(t * a) * q1) / math.sin(a)


def transform_from(R, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def invert(T) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    T = np.asarray(T, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    return transform_from(R.T, -R.T @ t)


def _check_rigid(T, what: str) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise FrameError(f"{what}: a transform must be a finite 4x4 matrix, got shape {T.shape}")
    R = T[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-6 or np.linalg.det(R) < 0:
        raise FrameError(f"{what}: not a rigid transform (rotation not orthonormal or a reflection)")
    if not np.allclose(T[3], [0, 0, 0, 1]):
        raise FrameError(f"{what}: last row must be [0, 0, 0, 1]")
    return T


# ------------------------------------------------------------------------------------------- the graph
@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list = field(default_factory=list)     # sorted (dynamic edges)
    quats: list = field(default_factory=list)      # (x, y, z, w) per stamp
    trans: list = field(default_factory=list)      # translation (mm) per stamp

    def add(self, stamp: float, T: np.ndarray) -> None:
        q = np.array(rotation_to_quaternion(T[:3, :3]))
        t = T[:3, 3].copy()
        if self.static:
            self.stamps, self.quats, self.trans = [stamp], [q], [t]
            return
        i = bisect.bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:  # re-sent sample: the newest wins
            self.quats[i], self.trans[i] = q, t
            return
        self.stamps.insert(i, stamp)
        self.quats.insert(i, q)
        self.trans.insert(i, t)

    def forget_before(self, stamp: float) -> None:
        i = bisect.bisect_left(self.stamps, stamp)
        if i > 0:
            del self.stamps[:i], self.quats[:i], self.trans[:i]

    def at(self, stamp: float | None, tolerance_s: float, name: str) -> np.ndarray:
        if self.static or stamp is None or len(self.stamps) == 1 and stamp == self.stamps[0]:
            return transform_from(quaternion_to_rotation(*self.quats[-1], norm_tol=None), self.trans[-1])
        s = self.stamps
        if stamp < s[0] - tolerance_s or stamp > s[-1] + tolerance_s:
            side = "before the first" if stamp < s[0] else "after the newest"
            gap = s[0] - stamp if stamp < s[0] else stamp - s[-1]
            raise FrameError(f"{name}: no transform at {stamp:.6f} s: {gap:.3f} s {side} sample "
                             f"({len(s)} samples from {s[0]:.6f} to {s[-1]:.6f} s)")
        if stamp <= s[0]:
            k, f = 0, 0.0
            j = 0
        elif stamp >= s[-1]:
            k = j = len(s) - 1
            f = 0.0
        else:
            j = bisect.bisect_right(s, stamp)
            k = j - 1
            f = (stamp - s[k]) / (s[j] - s[k])
        q = slerp(self.quats[k], self.quats[j], f)
        t = (1 - f) * self.trans[k] + f * self.trans[j]
        return transform_from(quaternion_to_rotation(*q, norm_tol=None), t)


class FrameGraph:
    """Rigid transforms between named frames over time (see the module docstring)."""

    def __init__(self, cache_s: float = 10.0, tolerance_s: float = 0.0):
        if not (math.isfinite(cache_s) and cache_s > 0):
            raise FrameError(f"cache_s must be a positive number of seconds, got {cache_s}")
        if not (math.isfinite(tolerance_s) and tolerance_s >= 0):
            raise FrameError(f"tolerance_s must be >= 0, got {tolerance_s}")
        self.cache_s = float(cache_s)
        self.tolerance_s = float(tolerance_s)
        self._edges: dict[str, _Edge] = {}  # child -> edge to its parent

    def __contains__(self, frame: str) -> bool:
        return frame in self._edges or any(e.parent == frame for e in self._edges.values())

    @property
    def frames(self) -> set[str]:
        return set(self._edges) | {e.parent for e in self._edges.values()}

    def set_transform(self, parent: str, child: str, T_parent_child, stamp: float, static: bool = False) -> None:
        """Store ``T_parent_child`` (4x4, mm) at ``stamp`` (s). Raises :class:`FrameError` for an empty or equal
        frame name, a loop, a non-rigid or non-finite transform or a non-finite stamp."""
        name = f"transform {parent!r} <- {child!r}"
        if not parent or not child:
            raise FrameError(f"{name}: frame names must not be empty")
        if parent == child:
            raise FrameError(f"{name}: a frame cannot be its own parent")
        if not math.isfinite(stamp):
            raise FrameError(f"{name}: stamp must be finite, got {stamp}")
        T = _check_rigid(T_parent_child, name)
        node = parent
        while node in self._edges:  # would the new edge close a loop?
            node = self._edges[node].parent
            if node == child:
                raise FrameError(f"{name}: {child!r} is already an ancestor of {parent!r} (a loop)")
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != bool(static):
            edge = self._edges[child] = _Edge(parent, bool(static))
        edge.add(float(stamp), T)
        if not edge.static:
            edge.forget_before(edge.stamps[-1] - self.cache_s)

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def path(self, target: str, source: str) -> list[tuple[str, str, bool]]:
        """The edges ``(parent, child, static)`` between ``target`` and ``source``; FrameError when unconnected."""
        if target not in self or source not in self:
            missing = [f for f in (target, source) if f not in self]
            raise FrameError(f"no transform from {source!r} to {target!r}: frame(s) {', '.join(map(repr, missing))} "
                             f"unknown (known: {', '.join(sorted(map(repr, self.frames))) or 'none'})")
        up_s, up_t = self._chain(source), self._chain(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            raise FrameError(f"no transform from {source!r} to {target!r}: they are in unconnected trees (roots "
                             f"{up_s[-1]!r} and {up_t[-1]!r})")
        edges = []
        for chain in (up_s, up_t):
            for f in chain[: chain.index(common)]:
                edges.append((self._edges[f].parent, f, self._edges[f].static))
        return edges

    def _to_ancestor(self, frame: str, ancestor: str, stamp: float | None) -> np.ndarray:
        T = np.eye(4)
        f = frame
        while f != ancestor:
            e = self._edges[f]
            T = e.at(stamp, self.tolerance_s, f"transform {e.parent!r} <- {f!r}") @ T
            f = e.parent
        return T

    def lookup(self, target: str, source: str, stamp: float | None = None) -> np.ndarray:
        """``T_target_source`` (4x4, mm) at ``stamp`` (s; None = newest samples). FrameError when the frames
        are not connected or a dynamic edge on the way has no sample near enough ``stamp``."""
        if target == source:
            return np.eye(4)
        self.path(target, source)  # raises for unknown / unconnected frames
        up_t = set(self._chain(target))
        common = next(f for f in self._chain(source) if f in up_t)
        return invert(self._to_ancestor(target, common, stamp)) @ self._to_ancestor(source, common, stamp)

    def can_transform(self, target: str, source: str, stamp: float | None = None) -> bool:
        try:
            self.lookup(target, source, stamp)
        except FrameError:
            return False
        return True
