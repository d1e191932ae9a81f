"""Taking up recorded shots a live reconstruction did not receive (ROS-free).

The ingest side writes every shot to a :class:`~ixgs_ros.core.shot_record.ShotRecord` before it sends it on. A
reconstruction that was down, or missed a message, finds the shots it lacks there: :class:`RecordTakeUp`
compares the record with the ids its runner knows (accepted, queued or restored) and submits the others,
standardized as the live chain does (:func:`ixgs_ros.core.radiograph.standardize`: ``-ln(I / I0)`` for raw
images, then binning by ``downsample``; give it the standardize step's parameters). Shots younger than
``grace_s`` are left to the live messages, which normally arrive within milliseconds. Shots recorded before the
session's last reset (``meta["record_reset_seq"]``) belong to an earlier acquisition and are skipped.
"""
from __future__ import annotations

import os
import time

from ..core.radiograph import RadiographError, standardize
from ..core.shot_record import RecordError, ShotRecord

__all__ = ["RecordTakeUp", "RESET_SEQ_KEY"]

#: The session meta key holding the last record seq before the latest reset.
RESET_SEQ_KEY = "record_reset_seq"


class RecordTakeUp:
    def __init__(self, runner, record_dir, *, i0: float = 0.0, downsample: int = 1, grace_s: float = 2.0,
                 log=None):
        self.runner = runner
        self.record_dir = os.path.expanduser(str(record_dir))
        self.i0 = float(i0)
        self.downsample = int(downsample)
        self.grace_s = float(grace_s)
        self.log = log or (lambda level, text: None)
        self._record: ShotRecord | None = None
        self._done_seq = -1     # every shot up to this seq was taken up, received or skipped
        self.taken_up = 0
        self.failed = 0

    def record(self) -> ShotRecord | None:
        """The record, once its folder exists (the ingest node creates it)."""
        if self._record is None and os.path.isfile(os.path.join(self.record_dir, "record.json")):
            try:
                self._record = ShotRecord(self.record_dir)
            except RecordError as exc:
                self.log("error", f"shot record: {exc}")
        return self._record

    def last_seq(self) -> int:
        rec = self.record()
        return rec.latest_seq() if rec is not None else -1

    def poll(self, now: float | None = None) -> int:
        """Submit the recorded shots the runner does not know (older than ``grace_s``); returns how many."""
        rec = self.record()
        if rec is None:
            return 0
        now = time.time() if now is None else now
        start = max(self._done_seq, int(self.runner.meta.get(RESET_SEQ_KEY, -1)))
        n = 0
        for shot in rec.entries(after_seq=start):
            json_path = shot.image_path.with_suffix(".json")
            try:
                if now - json_path.stat().st_mtime < self.grace_s:
                    break  # this one and the later ones are still on their way as messages
            except OSError:
                break
            self._done_seq = shot.seq
            if self.runner.knows(shot.view_id):
                continue
            try:
                view, image = shot.view(), shot.image()
                view, li, _ = standardize(view, image, raw=shot.image_kind == "raw",
                                          i0=self.i0 or float(shot.meta.get("i0", 0.0) or 0.0),
                                          downsample=self.downsample)
            except (RecordError, RadiographError, ValueError) as exc:
                self.failed += 1
                self.log("error", f"shot record: cannot take up {shot.view_id!r} (seq {shot.seq}): {exc}")
                continue
            self.runner.submit(shot.view_id, view, li, f"{shot.view_id!r} (taken up from the shot record)",
                               quiet_duplicate=True)
            n += 1
        if n:
            self.taken_up += n
            self.log("info", f"took up {n} shot(s) from the shot record {self.record_dir} that had not arrived "
                             "as messages")
        return n
