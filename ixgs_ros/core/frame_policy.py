"""Which paired detector frames become views: the ingest node's frame policy, ROS-free.

A C-arm in radiography mode sends one image per exposure: every paired frame is a shot (policy ``all``). In
fluoroscopy it streams 15-30 frames per second while the operator positions it; a reconstruction wants one view
per C-arm position, not hundreds of near-identical frames (each one recorded, standardized and kept by the engine:
memory and work without bound). Policy ``still``:

* a frame is *paired* first (image + camera_info + a tracked source pose within the skew; see
  :mod:`ixgs_ros.core.shot_sync`): a frame without a tracked pose is never a view;
* it becomes a view when the C-arm has been still for ``still_time_s`` up to it: every frame paired in that
  window has its source within ``still_mm`` and its orientation within ``still_deg`` of this one's, and the frames
  cover the window (no gap longer than ``max_gap_s``);
* one view per still position: a still frame whose pose is within the same tolerances of the last view taken is
  dropped (``same_position``); a frame while the C-arm moves or settles is dropped (``moving``).

So the view is the first frame after the C-arm settles at a new position, and a fluoroscopy run of N stops gives N
views. :meth:`FramePolicy.decide` returns ``(True, "view")`` or ``(False, reason)``; the node counts both.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = ["FramePolicy", "FRAME_POLICIES", "DROP_REASONS"]

FRAME_POLICIES = ("all", "still")
#: Why a paired frame did not become a view.
DROP_REASONS = {"moving": "the C-arm moved (or had not settled) within still_time_s before the frame",
                "same_position": "a view at this position was already taken"}


def _moved(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(translation mm, rotation degrees) between two 4x4 poses."""
    dt = float(np.linalg.norm(A[:3, 3] - B[:3, 3]))
    c = (np.trace(A[:3, :3].T @ B[:3, :3]) - 1.0) / 2.0
    return dt, math.degrees(math.acos(max(-1.0, min(1.0, c))))


class FramePolicy:
    def __init__(self, mode: str = "all", still_time_s: float = 0.5, still_mm: float = 0.5, still_deg: float = 0.2,
                 max_gap_s: float = 0.25):
        if mode not in FRAME_POLICIES:
            raise ValueError(f"frame_policy must be one of {', '.join(FRAME_POLICIES)}, got {mode!r}")
        for name, v in (("still_time_s", still_time_s), ("still_mm", still_mm), ("still_deg", still_deg),
                        ("max_gap_s", max_gap_s)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        self.mode = mode
        self.still_time_s, self.still_mm, self.still_deg, self.max_gap_s = (float(still_time_s), float(still_mm),
                                                                            float(still_deg), float(max_gap_s))
        self._recent: deque = deque()   # (stamp, T) of the paired frames of the last still_time_s
        self._last_view = None          # T of the last view taken

    def _near(self, A, B) -> bool:
        dt, dr = _moved(A, B)
        return dt <= self.still_mm and dr <= self.still_deg

    def decide(self, stamp: float, T_world_source) -> tuple[bool, str]:
        """Does the paired frame at ``stamp`` (s) with source pose ``T_world_source`` (4x4 mm) become a view?"""
        if self.mode == "all":
            return True, "view"
        T = np.asarray(T_world_source, dtype=np.float64)
        self._recent.append((float(stamp), T))
        newest = max(s for s, _ in self._recent)
        while self._recent and self._recent[0][0] < newest - self.still_time_s - self.max_gap_s:
            self._recent.popleft()
        start = stamp - self.still_time_s
        ordered = sorted(((s, P) for s, P in self._recent if s <= stamp), key=lambda x: x[0])
        before = [x for x in ordered if x[0] < start][-1:]  # the last frame before the window: where it began
        window = before + [x for x in ordered if x[0] >= start]
        stamps = [s for s, _ in window]
        covered = stamps[0] <= start and all(b - a <= self.max_gap_s for a, b in zip(stamps, stamps[1:]))
        if not covered or not all(self._near(P, T) for _, P in window):
            return False, "moving"
        if self._last_view is not None and self._near(self._last_view, T):
            return False, "same_position"
        self._last_view = T
        return True, "view"
