"""The frame graph (ixgs_ros.core.frames): composing a tracked C-arm's chain world <- tracker <- marker <- source,
interpolating a dynamic link between its samples, and refusing what is not a transform."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ixgs_ros.core.frames import (FrameError, FrameGraph, invert, quaternion_to_rotation, rotation_to_quaternion,
                                  slerp, transform_from)
from ixgs_ros.core.geometry import look_at, rotation_x, rotation_y, rotation_z


def rigid(rng):
    q = rng.normal(size=4)
    return transform_from(quaternion_to_rotation(*q, norm_tol=None), rng.normal(size=3) * 300.0)


def marker_pose(t):
    """The tracked C-arm marker in the tracker frame: turning 10 degrees per second about z, moving along y."""
    return transform_from(rotation_z(np.deg2rad(10.0 * t)) @ rotation_x(0.3), [100.0, 50.0 * t, 800.0])


def test_chain_composes_static_and_dynamic_links():
    rng = np.random.default_rng(1)
    T_world_tracker, T_marker_source = rigid(rng), rigid(rng)
    g = FrameGraph()
    g.set_transform("world", "tracker", T_world_tracker, 0.0, static=True)
    g.set_transform("marker", "source", T_marker_source, 0.0, static=True)
    for t in np.arange(0.0, 2.01, 0.01):
        g.set_transform("tracker", "marker", marker_pose(t), float(t))
    for t in (0.0, 0.5, 1.0, 2.0):
        expected = T_world_tracker @ marker_pose(t) @ T_marker_source
        np.testing.assert_allclose(g.lookup("world", "source", t), expected, atol=1e-9)
    # the inverse direction and a lookup between two leaves
    np.testing.assert_allclose(g.lookup("source", "world", 1.0), invert(T_world_tracker @ marker_pose(1.0) @
                                                                        T_marker_source), atol=1e-9)
    assert [e[:2] for e in g.path("world", "source")] == [("marker", "source"), ("tracker", "marker"),
                                                          ("world", "tracker")]
    assert [e[2] for e in g.path("world", "source")] == [True, False, True]


def test_dynamic_link_is_interpolated_between_samples():
    g = FrameGraph()
    g.set_transform("tracker", "marker", marker_pose(0.0), 0.0)
    g.set_transform("tracker", "marker", marker_pose(1.0), 1.0)
    T = g.lookup("tracker", "marker", 0.25)
    # translation linear, rotation a quarter of the way (slerp about z: 2.5 degrees)
    np.testing.assert_allclose(T[:3, 3], [100.0, 12.5, 800.0], atol=1e-9)
    np.testing.assert_allclose(T[:3, :3], marker_pose(0.25)[:3, :3], atol=1e-9)
    # samples arriving out of order are sorted
    g2 = FrameGraph()
    g2.set_transform("tracker", "marker", marker_pose(1.0), 1.0)
    g2.set_transform("tracker", "marker", marker_pose(0.0), 0.0)
    np.testing.assert_allclose(g2.lookup("tracker", "marker", 0.25), T, atol=1e-12)


def test_extrapolation_is_refused_unless_within_tolerance():
    g = FrameGraph(tolerance_s=0.02)
    for t in (1.0, 1.1):
        g.set_transform("tracker", "marker", marker_pose(t), t)
    with pytest.raises(FrameError, match=r"'tracker' <- 'marker': no transform at 1\.500000 s: 0\.400 s after the "
                                         r"newest sample"):
        g.lookup("tracker", "marker", 1.5)
    with pytest.raises(FrameError, match="before the first sample"):
        g.lookup("tracker", "marker", 0.5)
    np.testing.assert_allclose(g.lookup("tracker", "marker", 1.11), marker_pose(1.1), atol=1e-12)
    np.testing.assert_allclose(g.lookup("tracker", "marker", None), marker_pose(1.1), atol=1e-12)


def test_old_samples_are_forgotten():
    g = FrameGraph(cache_s=1.0)
    for t in np.arange(0.0, 5.01, 0.5):
        g.set_transform("tracker", "marker", marker_pose(t), float(t))
    assert not g.can_transform("tracker", "marker", 3.5)
    assert g.can_transform("tracker", "marker", 4.25)


def test_bad_transforms_and_unknown_frames_are_refused():
    g = FrameGraph()
    g.set_transform("world", "tracker", np.eye(4), 0.0, static=True)
    g.set_transform("tracker", "marker", np.eye(4), 0.0, static=True)
    with pytest.raises(FrameError, match="'marker' <- 'world': 'world' is already an ancestor of 'marker' "
                                         "\\(a loop\\)"):
        g.set_transform("marker", "world", np.eye(4), 0.0)
    with pytest.raises(FrameError, match="own parent"):
        g.set_transform("a", "a", np.eye(4), 0.0)
    scaled = np.diag([2.0, 1.0, 1.0, 1.0])
    with pytest.raises(FrameError, match="not a rigid transform"):
        g.set_transform("world", "b", scaled, 0.0)
    with pytest.raises(FrameError, match="frame\\(s\\) 'nowhere' unknown"):
        g.lookup("world", "nowhere")
    g.set_transform("other_root", "c", np.eye(4), 0.0, static=True)
    with pytest.raises(FrameError, match="unconnected trees"):
        g.lookup("world", "c")
    # a child that gets a new parent drops the old link
    g.set_transform("other_root", "marker", np.eye(4), 0.0, static=True)
    assert not g.can_transform("world", "marker") and g.can_transform("other_root", "marker")


@pytest.mark.parametrize("q,ok", [((0, 0, 0, 2.0), False), ((0, 0, 0, 1.3), False), ((0, 0, 0, 0), False),
                                  ((0, 0, 0, 1 + 1e-7), True), ((0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)), True)])
def test_quaternion_norm_is_checked(q, ok):
    if ok:
        R = quaternion_to_rotation(*q)
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    else:
        with pytest.raises(FrameError, match="not a (unit quaternion|rotation)"):
            quaternion_to_rotation(*q)


def test_quaternion_roundtrip_and_slerp():
    rng = np.random.default_rng(3)
    for R in [np.eye(3), rotation_x(np.pi), rotation_y(np.pi), rotation_z(np.pi),
              look_at([1, 2, 3], [0, 0, 0], [0, 0, 1])[:3, :3]] + \
             [quaternion_to_rotation(*rng.normal(size=4), norm_tol=None) for _ in range(20)]:
        q = rotation_to_quaternion(R)
        assert q[3] >= 0 and math.isclose(np.linalg.norm(q), 1.0, rel_tol=1e-12)
        np.testing.assert_allclose(quaternion_to_rotation(*q), R, atol=1e-9)
    q0, q1 = np.array([0, 0, 0, 1.0]), np.array(rotation_to_quaternion(rotation_z(1.0)))
    np.testing.assert_allclose(quaternion_to_rotation(*slerp(q0, q1, 0.3)), rotation_z(0.3), atol=1e-12)
    np.testing.assert_allclose(slerp(q0, -q1, 0.5), slerp(q0, q1, 0.5), atol=1e-12)  # the short way
