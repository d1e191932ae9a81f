"""ShotAssembler (ixgs_ros.core.shot_sync): pairing images with the nearest camera_info and tracked pose."""
from __future__ import annotations

import numpy as np
import pytest

from ixgs_ros.core.geometry import look_at
from ixgs_ros.core.shot_sync import ShotAssembler, ShotSyncError

K = np.array([[400.0, 0.0, 15.5], [0.0, 400.0, 11.5], [0.0, 0.0, 1.0]])


def pose(t: float) -> np.ndarray:
    """A C-arm source orbiting the origin, 1 degree per 0.01 s (so each pose is told apart by its angle)."""
    a = np.radians(100.0 * t)
    return look_at([600.0 * np.sin(a), -600.0 * np.cos(a), 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0])


def image(t: float) -> np.ndarray:
    return np.full((24, 32), t, np.float32)


def test_images_pair_with_the_nearest_pose_once_a_later_pose_arrived():
    s = ShotAssembler(max_skew_s=0.02, max_wait_s=1.0)
    assert s.add_camera_info(1.000, K, 32, 24, now=0.0) == ([], [])
    for t in (0.960, 0.980, 1.000):
        assert s.add_pose(t, pose(t), now=0.0) == ([], [])
    shots, dropped = s.add_image(1.012, image(1.012), now=0.0, tag="stamp-A")
    assert shots == [] and dropped == [] and s.pending == 1  # 1.020 might still be nearer
    shots, dropped = s.add_pose(1.020, pose(1.020), now=0.01)
    assert dropped == [] and len(shots) == 1 and s.pending == 0
    shot = shots[0]
    assert shot.tag == "stamp-A" and shot.stamp == 1.012 and np.allclose(shot.image, 1.012)
    assert np.allclose(shot.view.T_world_source, pose(1.020)) and np.isclose(shot.pose_skew_s, 0.008)
    assert np.isclose(shot.info_skew_s, 0.012) and np.array_equal(shot.view.K, K)
    assert shot.view.shape == (24, 32)
    # an image older than the newest pose is resolved at once, with the nearest (earlier) pose
    shots, _ = s.add_image(0.983, image(0.983), now=0.02)
    assert len(shots) == 1 and np.allclose(shots[0].view.T_world_source, pose(0.980))


def test_an_unpaired_image_is_dropped_after_max_wait_naming_the_stream():
    s = ShotAssembler(max_skew_s=0.02, max_wait_s=0.5)
    s.add_camera_info(2.0, K, 32, 24, now=0.0)
    s.add_pose(1.0, pose(1.0), now=0.0)
    assert s.add_image(2.0, image(2.0), now=10.0) == ([], [])  # a later pose might still come
    assert s.poll(now=10.4) == ([], [])
    shots, dropped = s.poll(now=10.5)
    assert shots == [] and len(dropped) == 1 and s.pending == 0
    assert dropped[0].reason == ("image at 2.000000 s dropped: no source_pose (nearest 1.000 s away) within "
                                 "max_sync_skew_s = 0.02 s")
    # the tracker stopped just short of the image: after the wait the earlier pose within the skew is used
    s.add_pose(2.99, pose(2.99), now=11.0)
    s.add_camera_info(3.0, K, 32, 24, now=11.0)
    assert s.add_image(3.0, image(3.0), now=11.0) == ([], [])
    shots, dropped = s.poll(now=11.5)
    assert len(shots) == 1 and dropped == [] and np.allclose(shots[0].view.T_world_source, pose(2.99))
    # no camera_info at all
    s2 = ShotAssembler(max_skew_s=0.02, max_wait_s=0.0)
    s2.add_pose(5.0, pose(5.0), now=0.0)
    _, dropped = s2.add_image(5.0, image(5.0), now=0.0)
    assert "no camera_info (none received)" in dropped[0].reason


def test_size_mismatch_is_dropped_and_later_images_still_pair():
    s = ShotAssembler(max_skew_s=0.05)
    s.add_camera_info(1.0, K, 32, 24, now=0.0)
    s.add_pose(1.0, pose(1.0), now=0.0)
    shots, dropped = s.add_image(1.0, np.zeros((24, 30), np.uint16), now=0.0)
    assert shots == [] and dropped[0].reason == ("image at 1.000000 s dropped: it is 30x24 but its camera_info "
                                                 "says 32x24")
    assert s.add_image(1.01, np.zeros((24, 32), np.uint16), now=0.0) == ([], [])
    shots, dropped = s.add_pose(1.02, pose(1.02), now=0.0)
    assert len(shots) == 1 and dropped == []


def test_images_waiting_beyond_max_pending_are_dropped_oldest_first():
    s = ShotAssembler(max_skew_s=0.05, max_wait_s=100.0, max_pending=2)
    s.add_camera_info(0.0, K, 32, 24, now=0.0)
    for t in (1.0, 2.0):
        assert s.add_image(t, image(t), now=0.0) == ([], [])
    shots, dropped = s.add_image(3.0, image(3.0), now=0.0)
    assert shots == [] and [d.stamp for d in dropped] == [1.0] and "more than 2 images waiting" in dropped[0].reason
    assert s.pending == 2


def test_resent_samples_replace_and_old_ones_are_forgotten():
    s = ShotAssembler(max_skew_s=0.05, history_s=1.0)
    s.add_camera_info(1.0, K, 32, 24, now=0.0)
    K2 = K.copy()
    K2[0, 0] = 500.0
    s.add_camera_info(1.0, K2, 32, 24, now=0.0)  # same stamp: the newest wins
    s.add_pose(1.0, pose(1.0), now=0.0)
    shots, _ = s.add_image(1.0, image(1.0), now=0.0)
    assert shots[0].view.K[0, 0] == 500.0
    s.add_pose(5.0, pose(5.0), now=0.0)  # 4 s later: the pose at 1.0 s falls out of the 1 s history
    s.add_camera_info(5.0, K, 32, 24, now=0.0)
    _, dropped = s.add_image(1.0, image(1.0), now=0.0)
    assert "no camera_info (nearest 4.000 s away) and no source_pose (nearest 4.000 s away)" in dropped[0].reason


@pytest.mark.parametrize("call,msg", [
    (lambda s: s.add_camera_info(1.0, -K, 32, 24, now=0.0), "camera_info at 1.000000 s:"),
    (lambda s: s.add_camera_info(float("nan"), K, 32, 24, now=0.0), "camera_info stamp: must be finite"),
    (lambda s: s.add_pose(1.0, np.eye(3), now=0.0), "source_pose at 1.000000 s:"),
    (lambda s: s.add_pose(1.0, np.diag([2.0, 1.0, 1.0, 1.0]), now=0.0), "source_pose at 1.000000 s:"),
    (lambda s: s.add_image(1.0, np.zeros(5), now=0.0), "image at 1.000000 s: expected a non-empty 2D array"),
    (lambda s: ShotAssembler(max_skew_s=-1.0), "max_skew_s must be >= 0, got -1.0"),
    (lambda s: ShotAssembler(max_skew_s=0.5, history_s=0.1), "history_s (0.1) must be >= max_skew_s (0.5)"),
    (lambda s: ShotAssembler(max_pending=0), "max_pending must be a positive integer, got 0"),
])
def test_bad_input_is_refused_and_nothing_accepted_is_lost(call, msg):
    s = ShotAssembler(max_skew_s=0.05)
    s.add_camera_info(1.0, K, 32, 24, now=0.0)
    s.add_pose(0.5, pose(0.5), now=0.0)
    s.add_image(1.0, image(1.0), now=0.0)  # waits for a later pose
    with pytest.raises(ShotSyncError) as err:
        call(s)
    assert msg in str(err.value)
    shots, dropped = s.add_pose(1.0, pose(1.0), now=0.0)
    assert len(shots) == 1 and dropped == [] and np.allclose(shots[0].view.T_world_source, pose(1.0))
