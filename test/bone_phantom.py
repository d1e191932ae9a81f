"""A tiny spine-like phantom for the bone target's tests: three ellipsoid "vertebrae" along z and a "rib"
reaching out of the ROI, inside a soft-tissue body wider than the detector's field of view (truncated views),
with exact full and bone-only line integrals."""
import numpy as np

from ixgs_ros.core.volume import Grid
from ixgs_ros.simulation.phantom import Ellipsoid, project, voxelize
from ixgs_ros.simulation.trajectories import TrajectoryConfig, make_trajectory

SOFT = 0.020   # 1/mm, soft tissue (about +25 HU)
BONE = 0.036   # 1/mm, bone (about +850 HU; above the 200 HU bone level)
ROI = Grid.centered(32, 2.0, (0.0, 0.0, 0.0))   # 64 mm


def bone_ellipsoids(gap: float = 6.0, rib: bool = True, spread: float = 1.0):
    """Vertebrae: semi-axes 13 x 10 x 8 mm, centres ``2 * 8 + gap`` mm apart along z (they separate for
    ``gap > 0``); ``spread`` scales their x offsets (the middle one moves). A rib from x = 20 to 60 mm (past the
    ROI)."""
    dz = 16.0 + gap
    out = [Ellipsoid((0.0, 0.0, k * dz), (13.0, 10.0, 8.0), mu=BONE) for k in (-1, 0, 1)]
    if rib:
        out.append(Ellipsoid((40.0, 6.0, 0.0), (22.0, 3.5, 3.5), mu=BONE))
    return out


def body():
    return Ellipsoid((0.0, 0.0, 0.0), (140.0, 100.0, 160.0), mu=SOFT)


def full_ellipsoids(bones):
    """The full scene: the body plus each bone's excess over soft tissue (mu adds)."""
    return [body()] + [Ellipsoid(e.center, e.semi_axes, e.rotation, e.mu - SOFT) for e in bones]


def views(n: int = 16, arc: float = 160.0, width: int = 48, seed: int = 0, kind: str = "random-arc"):
    """C-arm views around the ROI centre, the ROI's bounding sphere filling the detector (the body is wider:
    truncated views)."""
    cfg = TrajectoryConfig(kind=kind, n_views=n, arc_deg=arc, width=width, seed=seed, sod_mm=500.0,
                           sdd_mm=900.0)
    return make_trajectory(cfg, (0.0, 0.0, 0.0), roi_radius_mm=0.5 * float(np.linalg.norm([64.0] * 3)))


def scene(n: int = 16, arc: float = 160.0, width: int = 48, gap: float = 6.0, rib: bool = True, seed: int = 0,
          kind: str = "random-arc"):
    """``(views, full line integrals, bone line integrals, bone volume on ROI, bones)``."""
    vs = views(n, arc, width, seed, kind)
    bones = bone_ellipsoids(gap, rib)
    full = project(full_ellipsoids(bones), vs)
    bone = project(bones, vs)
    truth = voxelize(bones, ROI, supersample=2)
    return vs, full, bone, truth, bones


def full_truth(bones, grid: Grid = ROI):
    return voxelize(full_ellipsoids(bones), grid, supersample=2)


def voxelize_bones(bones, grid: Grid = ROI):
    return voxelize(bones, grid, supersample=2)
