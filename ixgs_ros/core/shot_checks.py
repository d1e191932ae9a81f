"""Checks of live shots that come from outside (a C-arm driver, a tracker, another node), ROS-free.

Each check returns None for a good input or a one-line reason for a bad one; the nodes log the reason, refuse
the input and count it in a :class:`RejectionLedger` under a stable key (the keys below), which the status
and diagnostics messages report. Nothing accepted before is affected by a refusal.
"""
from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter

import numpy as np

__all__ = ["REASONS", "RejectionLedger", "saturation_reason", "stamp_reason", "line_integral_dtype_reason",
           "view_id_reason", "view_id_problem", "raw_i0_reason", "no_signal_reason", "content_digest", "MAX_VIEW_ID_LENGTH", "DEFAULT_MAX_SATURATED_FRACTION", "DEFAULT_MAX_FUTURE_S"]

#: Stable keys of the rejection reasons (status and diagnostics count by them) and what each means.
REASONS = {
    "conversion": "the message does not convert (sizes, encoding, intrinsics, pose)",
    "quaternion": "a pose's quaternion is zero or not of unit norm",
    "saturated": "too many pixels at the detector's maximum value",
    "encoding": "integer pixel data labelled as line integrals",
    "image_kind": "raw images sent where line integrals are expected",
    "frame": "a frame id that is not (and cannot be transformed into) the world frame",
    "stamp_zero": "an unset (zero) stamp",
    "stamp_future": "a stamp too far ahead of the receiver's clock",
    "stamp_invalid": "a stamp that is not a time (negative seconds, or nanoseconds of 1e9 or more)",
    "empty_id": "an empty view_id",
    "invalid_id": "a view_id too long or holding control characters",
    "duplicate_id": "a view_id already accepted",
    "duplicate_content": "the same image and pose as a view already accepted, under another id",
    "engine": "the reconstruction engine refused the view (e.g. it does not see the grid)",
    "sync": "an image that could not be paired with a pose / camera_info",
    "record": "the shot could not be written to the shot record",
    "i0": "a raw image whose i0 lies below most of its pixels (no attenuation to compute)",
    "no_signal": "a raw image with (almost) no signal: 90 % or more of its pixels at 0 or below",
    "bone_image": "a bone-only view (xray_views_bone) whose image is not finite or not of its detector's size",
    "bone_mismatch": "a bone-only view whose size, intrinsics or pose differ from its line-integral view's",
}

DEFAULT_MAX_SATURATED_FRACTION = 0.25
DEFAULT_MAX_FUTURE_S = 5.0
#: Longest view_id accepted (ids name views in logs, status messages and state files).
MAX_VIEW_ID_LENGTH = 256


class RejectionLedger:
    """Thread-safe counts of rejected inputs by reason key (:data:`REASONS`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Counter = Counter()

    def count(self, key: str) -> int:
        if key not in REASONS:
            raise KeyError(f"unknown rejection reason {key!r}; known: {sorted(REASONS)}")
        with self._lock:
            self._counts[key] += 1
            return self._counts[key]

    def snapshot(self) -> dict[str, int]:
        """``{reason key: count}`` of the reasons seen, sorted by key."""
        with self._lock:
            return dict(sorted(self._counts.items()))

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


def saturation_reason(image, max_fraction: float = DEFAULT_MAX_SATURATED_FRACTION) -> str | None:
    """Integer detector images: too large a share of pixels at the dtype's maximum (e.g. 65535) means an
    over-exposed or failed read-out (a fully saturated frame would become an all-zero view). Float images
    carry no known maximum and pass."""
    a = np.asarray(image)
    if not np.issubdtype(a.dtype, np.integer) or a.size == 0:
        return None
    top = np.iinfo(a.dtype).max
    frac = float(np.count_nonzero(a == top)) / a.size
    if frac > max_fraction:
        return (f"{100 * frac:.1f} % of the pixels are saturated (at {top}); at most {100 * max_fraction:g} % "
                "allowed")
    return None


def stamp_reason(stamp_s: float, now_s: float, max_future_s: float = DEFAULT_MAX_FUTURE_S,
                 nanosec: int = 0) -> tuple[str, str] | None:
    """``(key, reason)`` for a stamp of exactly 0 (never set), one that is not a time (negative seconds, or a
    message stamp whose ``nanosec`` field is 1e9 or more) or one more than ``max_future_s`` after ``now_s``."""
    if not math.isfinite(stamp_s):
        return "stamp_invalid", f"stamp {stamp_s} is not a time"
    if stamp_s == 0.0:
        return "stamp_zero", "stamp is 0 (never set by the sender)"
    if stamp_s < 0.0:
        return "stamp_invalid", f"stamp {stamp_s:.3f} s is negative"
    if not 0 <= nanosec < 1_000_000_000:
        return "stamp_invalid", f"stamp nanosec {nanosec} is not in [0, 1e9)"
    if stamp_s > now_s + max_future_s:
        return "stamp_future", (f"stamp {stamp_s:.3f} s is {stamp_s - now_s:.1f} s ahead of this node's clock "
                                f"(at most {max_future_s:g} s allowed)")
    return None


def line_integral_dtype_reason(dtype) -> str | None:
    """Line integrals are real numbers: integer pixel data labelled as line integrals is a mislabelled raw image."""
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        return f"the image is {dt} but is labelled as line integrals (which are floating point: 32FC1 / 64FC1)"
    return None


def view_id_reason(view_id: str) -> str | None:
    if not str(view_id).strip():
        return "view_id is empty (every shot needs a unique id)"
    return None


def view_id_problem(view_id: str) -> tuple[str, str] | None:
    """``(key, reason)`` for an empty view_id, one longer than :data:`MAX_VIEW_ID_LENGTH` characters or one
    holding control characters (a newline would forge log lines); None for a good one."""
    why = view_id_reason(view_id)
    if why:
        return "empty_id", why
    vid = str(view_id)
    if len(vid) > MAX_VIEW_ID_LENGTH:
        return "invalid_id", f"view_id has {len(vid)} characters (at most {MAX_VIEW_ID_LENGTH})"
    if any(ord(c) < 32 or ord(c) == 127 for c in vid):
        return "invalid_id", f"view_id {vid[:40]!r} holds control characters"
    return None


def raw_i0_reason(image, i0: float, max_fraction: float = 0.5, margin: float = 1.5) -> str | None:
    """A raw image to be converted with a given ``i0``: when more than ``max_fraction`` of its pixels are above
    ``margin * i0`` (photon noise never gets there) the i0 does not belong to this image (e.g. 1.0 for counts of
    thousands): every such pixel would become a line integral of 0, a transparent patient."""
    a = np.asarray(image)
    if a.size == 0 or not i0 > 0:
        return None
    frac = float(np.count_nonzero(a > margin * i0)) / a.size
    if frac > max_fraction:
        return (f"{100.0 * frac:.0f} % of the pixels are above {margin:g} x i0 = {margin * i0:.6g}: the i0 does "
                "not belong to this image")
    return None


def no_signal_reason(image, max_fraction: float = 0.9) -> str | None:
    """A raw image whose pixels are (almost) all 0 or below: no exposure or a dead read-out. With a given i0 it
    would become a uniform, fully opaque view (every ray clipped at the floor), not a refusal."""
    a = np.asarray(image)
    if a.size == 0:
        return None
    frac = float(np.count_nonzero(~(a > 0))) / a.size
    if frac >= max_fraction:
        return f"{100.0 * frac:.0f} % of the pixels are 0 or below: no signal (no exposure or a dead read-out)"
    return None


def content_digest(K, T_world_source, image) -> str:
    """A digest of a view's content (intrinsics, pose to 1 nm / 1e-9, the image's bytes and shape): two shots with
    the same digest are one shot sent twice."""
    h = hashlib.sha256()
    h.update((np.round(np.asarray(K, dtype=np.float64), 9) + 0.0).tobytes())  # + 0.0: -0.0 becomes 0.0
    h.update((np.round(np.asarray(T_world_source, dtype=np.float64), 6) + 0.0).tobytes())
    a = np.ascontiguousarray(image)
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
    return h.hexdigest()
