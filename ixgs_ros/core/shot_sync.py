"""Assemble C-arm shots from three asynchronous streams: detector images, intrinsics, tracked source poses.

A live C-arm set-up publishes each detector image, its intrinsics (camera info, usually re-sent with every
image under the same stamp) and the optical tracker's pose of the X-ray source (at the tracker's rate,
independent of the exposures). :class:`ShotAssembler` pairs each image with the intrinsics and the pose
whose stamps are nearest to the image's, accepting a pair only when the stamp difference is at most
``max_skew_s``. It is ROS-free (stamps in seconds, poses as 4x4 mm matrices); ``xray_ingest_node`` feeds
it converted messages.

Timing rules:

* The nearest pose is only known once a pose stamped at or after the image has arrived, and one within the
  skew is there. Until then the image waits; a tracker streaming poses resolves each image as soon as its next
  pose arrives. Images may arrive out of stamp order: an image older than poses already received, whose own
  pose samples are still on their way, waits for them like any other (it is not paired with a far pose or
  dropped at once).
* Intrinsics must be stamped within the skew of the image (as ROS camera drivers do, publishing
  camera_info with each image under the image's stamp); any such camera_info resolves the image at once, and
  the image waits for one until ``max_wait_s``.
* An image still unresolved ``max_wait_s`` after it arrived (wall clock, ``now`` arguments) is decided
  with what is there: paired if a pose / intrinsics within the skew exist, dropped otherwise, with a reason
  naming the stream, the image stamp and the nearest stamp difference.
* Poses and intrinsics are kept for ``history_s`` seconds of stamps behind the newest of their stream, so
  an image that arrives late (detector read-out, transport) can still be paired.

Nothing accepted is lost silently: every image comes out either as a :class:`Shot` or as a
:class:`Dropped` with its reason.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from .geometry import GeometryError, View
from .validate import finite_number

__all__ = ["Shot", "Dropped", "ShotAssembler", "ShotSyncError"]


class ShotSyncError(ValueError):
    """A parameter or an input that the assembler cannot take (the message names it)."""


@dataclass
class Shot:
    """One assembled shot: ``view`` (K, T_world_source, detector size) and its ``image``."""
    stamp: float
    view: View
    image: np.ndarray
    info_skew_s: float
    pose_skew_s: float
    tag: object = None  #: what the caller passed with the image (the node: the exact ROS stamp)


@dataclass
class Dropped:
    stamp: float
    reason: str
    tag: object = None


@dataclass
class _Pending:
    stamp: float
    image: np.ndarray
    arrived: float
    tag: object = None


@dataclass
class _Stream:
    """Stamp-sorted samples of one stream."""
    stamps: list = field(default_factory=list)
    values: list = field(default_factory=list)

    def add(self, stamp: float, value) -> None:
        i = bisect.bisect_right(self.stamps, stamp)
        if i > 0 and self.stamps[i - 1] == stamp:  # re-sent sample: the newest wins
            self.values[i - 1] = value
            return
        self.stamps.insert(i, stamp)
        self.values.insert(i, value)

    def nearest(self, stamp: float):
        """(index, |dt|) of the sample nearest ``stamp``, or (None, inf)."""
        if not self.stamps:
            return None, float("inf")
        i = bisect.bisect_left(self.stamps, stamp)
        best, best_dt = None, float("inf")
        for j in (i - 1, i):
            if 0 <= j < len(self.stamps):
                dt = abs(self.stamps[j] - stamp)
                if dt < best_dt:
                    best, best_dt = j, dt
        return best, best_dt

    def newest(self) -> float:
        return self.stamps[-1] if self.stamps else float("-inf")

    def forget_before(self, stamp: float) -> None:
        i = bisect.bisect_left(self.stamps, stamp)
        if i > 0:
            del self.stamps[:i], self.values[:i]


class ShotAssembler:
    """Pairs images with the nearest intrinsics and pose (see the module docstring).

    ``add_image`` / ``add_camera_info`` / ``add_pose`` / ``poll`` each return ``(shots, dropped)``: what
    that call completed. ``now`` is any monotonic wall clock in seconds (the node passes its clock)."""

    def __init__(self, max_skew_s: float = 0.05, max_wait_s: float = 1.0, history_s: float = 10.0,
                 max_pending: int = 32):
        self.max_skew_s = finite_number(max_skew_s, "max_skew_s", ShotSyncError)
        self.max_wait_s = finite_number(max_wait_s, "max_wait_s", ShotSyncError)
        self.history_s = finite_number(history_s, "history_s", ShotSyncError)
        if self.max_skew_s < 0:
            raise ShotSyncError(f"max_skew_s must be >= 0, got {max_skew_s}")
        if self.max_wait_s < 0:
            raise ShotSyncError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if self.history_s < self.max_skew_s:
            raise ShotSyncError(f"history_s ({history_s}) must be >= max_skew_s ({max_skew_s})")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ShotSyncError(f"max_pending must be a positive integer, got {max_pending!r}")
        self.max_pending = max_pending
        self._info = _Stream()
        self._pose = _Stream()
        self._pending: list[_Pending] = []

    # ------------------------------------------------------------------------------------------ inputs
    def add_camera_info(self, stamp: float, K, width: int, height: int, now: float):
        """Intrinsics ``K`` (3x3 pixels) of a ``width`` x ``height`` detector, stamped ``stamp`` (s)."""
        stamp = finite_number(stamp, "camera_info stamp", ShotSyncError)
        K = np.asarray(K, dtype=np.float64)
        try:  # validate now, so a bad camera_info is refused here and not at every image it would meet
            View(K, np.eye(4), int(width), int(height))
        except (GeometryError, TypeError, ValueError) as exc:
            raise ShotSyncError(f"camera_info at {stamp:.6f} s: {exc}") from None
        self._info.add(stamp, (K.copy(), int(width), int(height)))
        self._info.forget_before(self._info.newest() - self.history_s)
        return self._resolve(now)

    def add_pose(self, stamp: float, T_world_source, now: float):
        """Tracked ``T_world_source`` (4x4, mm) stamped ``stamp`` (s)."""
        stamp = finite_number(stamp, "source_pose stamp", ShotSyncError)
        T = np.asarray(T_world_source, dtype=np.float64)
        try:
            View(np.diag([1.0, 1.0, 1.0]), T, 1, 1)
        except (GeometryError, TypeError, ValueError) as exc:
            raise ShotSyncError(f"source_pose at {stamp:.6f} s: {exc}") from None
        self._pose.add(stamp, T.copy())
        self._pose.forget_before(self._pose.newest() - self.history_s)
        return self._resolve(now)

    def add_image(self, stamp: float, image, now: float, tag=None):
        """A detector ``image`` (rows, columns) stamped ``stamp`` (s); ``tag`` comes back with its
        :class:`Shot` or :class:`Dropped`."""
        stamp = finite_number(stamp, "image stamp", ShotSyncError)
        img = np.asarray(image)
        if img.ndim != 2 or img.size == 0:
            raise ShotSyncError(f"image at {stamp:.6f} s: expected a non-empty 2D array, got shape {img.shape}")
        self._pending.append(_Pending(stamp, img, float(now), tag))
        dropped = []
        while len(self._pending) > self.max_pending:  # a stream stopped: do not buffer images forever
            old = self._pending.pop(0)
            dropped.append(Dropped(old.stamp, f"image at {old.stamp:.6f} s dropped: more than {self.max_pending} "
                                              f"images waiting for their camera_info / source_pose", old.tag))
        shots, more = self._resolve(now)
        return shots, dropped + more

    def poll(self, now: float):
        """Decide images that waited ``max_wait_s``; call it periodically (the node does on a timer)."""
        return self._resolve(now)

    @property
    def pending(self) -> int:
        """Images waiting for their pairing."""
        return len(self._pending)

    # ------------------------------------------------------------------------------------------ pairing
    def _ready(self, stream: _Stream, stamp: float, expired: bool) -> bool:
        """Is the nearest sample of ``stream`` to ``stamp`` final: one within the skew is there and a later one
        (nearer) can no longer come, or the image waited long enough?"""
        if expired or stamp < stream.newest() - self.history_s:  # samples that old are forgotten at once
            return True
        return stream.newest() >= stamp and stream.nearest(stamp)[1] <= self.max_skew_s

    def _resolve(self, now: float):
        shots: list[Shot] = []
        dropped: list[Dropped] = []
        keep: list[_Pending] = []
        for p in self._pending:
            expired = float(now) - p.arrived >= self.max_wait_s
            info_ready = (expired or self._info.nearest(p.stamp)[1] <= self.max_skew_s  # any within the skew will do
                          or p.stamp < self._info.newest() - self.history_s)
            if not (info_ready and self._ready(self._pose, p.stamp, expired)):
                keep.append(p)
                continue
            i, dt_info = self._info.nearest(p.stamp)
            j, dt_pose = self._pose.nearest(p.stamp)
            missing = [f"{name} (nearest {dt:.3f} s away)" if np.isfinite(dt) else f"{name} (none received)"
                       for name, dt in (("camera_info", dt_info), ("source_pose", dt_pose))
                       if dt > self.max_skew_s]
            if missing:
                dropped.append(Dropped(p.stamp, f"image at {p.stamp:.6f} s dropped: no {' and no '.join(missing)} "
                                                f"within max_sync_skew_s = {self.max_skew_s} s", p.tag))
                continue
            K, w, h = self._info.values[i]
            if p.image.shape != (h, w):
                dropped.append(Dropped(p.stamp, f"image at {p.stamp:.6f} s dropped: it is {p.image.shape[1]}x"
                                                f"{p.image.shape[0]} but its camera_info says {w}x{h}", p.tag))
                continue
            view = View(K, self._pose.values[j], w, h, {"stamp": p.stamp})
            shots.append(Shot(p.stamp, view, p.image, dt_info, dt_pose, p.tag))
        self._pending = keep
        return shots, dropped
