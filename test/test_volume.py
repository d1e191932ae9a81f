"""Grid geometry helpers."""
import numpy as np

from ixgs_ros.core.volume import Grid


def test_contains_uses_voxel_edges_on_rotated_anisotropic_grids():
    c, s = np.cos(0.3), np.sin(0.3)
    A = np.eye(4)
    A[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([2.0, 1.0, 3.0])
    A[:3, 3] = (10.0, -5.0, 7.0)
    grid = Grid((4, 6, 2), A)
    ijk = np.array([[-0.49, 0, 0], [3.49, 5.49, 1.49], [-0.51, 0, 0], [0, 6.0, 0], [1.5, 2.5, 0.5]])
    pts = grid.index_to_world(ijk)
    assert grid.contains(pts).tolist() == [True, True, False, False, True]
    # a margin of one voxel shrinks the box, a negative one grows it
    assert grid.contains(pts, margin_vox=1.0).tolist() == [False, False, False, False, True]
    assert grid.contains(pts, margin_vox=-1.0).tolist() == [True, True, True, True, True]
    # any leading shape
    assert grid.contains(grid.world_coords()).shape == grid.shape and grid.contains(grid.world_coords()).all()


def test_grid_beyond_mm_is_the_largest_overshoot_of_its_box():
    import pytest

    outer = Grid.centered(100, 1.0)                      # box -50 .. 50 mm on every axis
    assert Grid.centered(20, 1.0, (10.0, 0.0, 0.0)).beyond_mm(outer) == 0.0
    assert Grid.centered(20, 1.0, (45.0, 0.0, 0.0)).beyond_mm(outer) == pytest.approx(5.0)
    assert Grid.centered(20, 2.0, (0.0, 0.0, -35.0)).beyond_mm(outer) == pytest.approx(5.0)
    assert outer.beyond_mm(Grid.centered(20, 1.0)) == pytest.approx(40.0)
