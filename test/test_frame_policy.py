"""The ingest node's frame policy (ixgs_ros.core.frame_policy): 'all' takes every paired frame; 'still' takes the
first frame after the C-arm has settled at a new position and drops frames while it moves or stays put."""
import numpy as np
import pytest

from ixgs_ros.core.frame_policy import FramePolicy
from ixgs_ros.core.geometry import look_at


def pose(deg):
    a = np.deg2rad(deg)
    return look_at([400 * np.sin(a), -400 * np.cos(a), 0.0], (0, 0, 0), (0, 0, 1))


def run(policy, trajectory, rate=30.0):
    """trajectory(t) -> angle; returns the decisions of a stream at ``rate`` Hz."""
    out = []
    for k in range(int(6 * rate)):
        t = 100.0 + k / rate
        out.append((t, *policy.decide(t, pose(trajectory(t - 100.0)))))
    return out


def stop_and_go(t):
    """still 1 s at 0, 1 s moving to 20 degrees, still 1.5 s, moving to 40, still."""
    return float(np.interp(t, [0, 1, 2, 3.5, 4.5], [0, 0, 20, 20, 40]))


def test_still_policy_takes_one_frame_per_stop():
    got = run(FramePolicy("still", still_time_s=0.5), stop_and_go)
    views = [t - 100.0 for t, take, _ in got if take]
    assert len(views) == 3, views
    assert 0.45 <= views[0] <= 0.6 and 2.45 <= views[1] <= 2.6 and 4.95 <= views[2] <= 5.1  # settled 0.5 s
    reasons = {why for _, take, why in got if not take}
    assert reasons == {"moving", "same_position"}
    assert all(why == "moving" for t, take, why in got if 1.05 < t - 100.0 < 2.0)


def test_all_policy_and_gaps_and_bad_parameters():
    assert all(take for _, take, _ in run(FramePolicy("all"), stop_and_go))
    p = FramePolicy("still", still_time_s=0.5, max_gap_s=0.25)
    assert p.decide(10.0, pose(0)) == (False, "moving")      # nothing seen before: not known to be still
    assert p.decide(10.6, pose(0)) == (False, "moving")      # a gap of 0.6 s: no evidence it stayed
    with pytest.raises(ValueError, match="frame_policy"):
        FramePolicy("every")
    with pytest.raises(ValueError, match="still_mm"):
        FramePolicy("still", still_mm=float("nan"))
