"""Classical baselines on RTK (itk-rtk, CPU): forward projection, FDK, SART/OS-SART, SIRT and CG.

This module converts :class:`~ixgs_ros.core.geometry.View` objects to RTK's
``ThreeDCircularProjectionGeometry`` and volumes on a :class:`~ixgs_ros.core.volume.Grid` to RTK images, so
the field's standard reconstructions can be run on exactly the same arbitrarily posed scans as ixgs.

RTK conventions (checked by ``test/test_rtk_baseline.py``)
-----------------------------------------------------------
* ``AddProjection(source, detector_origin, row_dir, col_dir)``: ``detector_origin`` is the world position of
  the projection image's physical point ``(0, 0)``. Projection images are built with origin 0, identity
  direction and spacing = the pixel pitch, so ``detector_origin`` is the centre of the first pixel and
  ``row_dir`` / ``col_dir`` are the *unit* directions of increasing column / row index.
* RTK decomposes that into its circular parameters with the detector normal ``row_dir x col_dir``; with the
  pinhole convention of ``geometry.py`` (x = columns, y = rows, z toward the detector) that normal points away
  from the source and RTK's source-to-detector distance comes out negative. The Joseph projector copes with
  that, but FDK's weights assume the usual sign, so every view is handed to RTK with its rows mirrored
  (``col_dir = -v``, origin at the last row) and the projection arrays are flipped accordingly. Both
  descriptions are the same rays.
* RTK's projectors ignore image direction cosines. Volumes are therefore always given identity directions:
  a grid whose affine is rotated (or mirrored) is handled *exactly* by expressing the views in the grid's own
  axis-aligned frame (a rigid change of world frame) and flipping mirrored axes of the array; sheared affines
  are refused.
* One projection stack has one pixel pitch, but the detector distance of a pinhole view is arbitrary: each view
  is placed at ``sdd_i = pitch * fx_i`` so all views share the pitch. Views must share the detector size, the
  ``fx / fy`` aspect ratio and have no skew (RTK needs orthogonal detector axes).

Reconstruction
--------------
* ``fdk``: RTK's Feldkamp filter (ramp filter with a Hann window, cut frequency :data:`DEFAULT_HANN`). FDK is
  a filtered backprojection (a voxel's value does not depend on the grid extent), so it runs directly on a box
  aligned with the requested grid. FDK is derived for a circular orbit about RTK's ``y`` axis: the views are first expressed in a frame
  whose ``y`` is the trajectory's rotation axis and whose origin is the isocentre (:func:`trajectory_frame`),
  because RTK derives each view's angular weight from its source angle in that frame; for an arc shorter
  than 360 degrees those weights are corrected (:func:`_fdk_angular_weights`). With arbitrary per-view poses
  (tilt, roll, isocentre jitter, off-centre principal points) RTK's cosine and distance weights are still
  applied per view, so FDK is only *approximately* valid here: limited or non-planar arcs give shading,
  scaling and streak errors. It is nevertheless the field's baseline (and R2-Gaussian's initialisation).
  No short-scan (Parker) weights are applied: they need a circular arc of at least 180 degrees plus the fan.
* ``sart`` (OS-SART with ``subset_size`` views per subset, 1 = classical SART), ``sirt`` (SART with all views
  in one subset) and ``cg`` (conjugate gradient on the least-squares problem, RTK's
  ``ConjugateGradientConeBeamReconstructionFilter``) are iterative and need a volume that contains *all*
  material the rays cross; otherwise that mass is forced onto the border voxels and the solution blows up
  there. They run on a *solve grid* (by default :func:`default_solve_grid`: the ROI itself when the
  projections show that all material lies inside it, as in an ROI-only scan; else a box covering the part of
  the body the views cross, at the ROI's resolution when small enough and coarser, 2 mm or more, when large)
  and the solution is resampled (trilinear) onto the requested grid. These baselines stop there: re-solving
  the ROI at fine resolution under the coarse exterior is the engine's two-level init (:func:`refine_inner`,
  whose rays are normalised by their length through the whole solve grid; RTK's SART on the fine box alone
  diverges at the box's edges, where grazing rays carry the exterior's residual).
* Negative attenuation is kept in the returned volume (no clipping), except that SART/SIRT enforce positivity
  during the iterations by default (RTK's ``EnforcePositivity``); pass ``clip_negative=True`` to clip the
  returned copy.

All RTK filters here are built fresh for every call (RTK filters may run in place on their inputs).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .ct import resample as resample_volume
from .geometry import GeometryError, View, views_bounding_sphere
from .volume import Grid, VolumeError

__all__ = [
    "RTKUnavailableError",
    "solved_coarser",
    "import_rtk",
    "METHODS",
    "RTKGeometry",
    "to_rtk_geometry",
    "forward_project",
    "back_project",
    "reconstruct",
    "sart_tv",
    "refine_inner",
    "tv_schedule",
    "default_solve_grid",
    "pad_grid",
    "material_inside",
    "fdk",
    "trajectory_frame",
    "resample_volume",
    "canonical_frame",
]

METHODS = ("fdk", "sart", "sirt", "cg")

#: Default numbers of iterations (SART/SIRT count passes over all views). With the defaults below they were
#: chosen on the 25-view 256^2 T12 scans of ``benchmarks/bench_rtk.py`` (3D PSNR, dB, ROI-only / full-body):
#: CG 10: 27.7 / 24.7, 20: 28.5 / 24.6, 30: 28.6 / 23.8 (CG semi-converges on full-body data);
#: SART x3 with lambda 0.3: 27.2 / 23.1, 0.6: 28.4 / 24.7; SART x6 (lambda 0.3): - / 24.4. On the ``ixgs bench``
#: T12 scans (28 views, 25 trained) SART x8 (lambda 0.6) beats x3: 29.07 vs 28.61 / 23.99 vs 22.76, and x20
#: beats x8 in PSNR: 29.21 / 24.40 dB (SSIM 0.824 / 0.714 against 0.823 / 0.735; PSNR still rises by < 0.01 dB
#: per pass at 20). A later sweep of passes x relaxation on the same scans (3D PSNR ROI-only / full-body;
#: passes, lambda): (20, 0.6) 29.21 / 24.40, (20, 1.0) 29.21 / 24.32, (20, 1.3) 29.17 / 24.13, (14, 1.3)
#: 29.24 / 24.44, (12, 1.0) 29.25 / 24.50, (10, 1.3) 29.27 / 24.58, (10, 1.6) 29.18 / -, (8, 1.0) 29.22 /
#: 24.44, (8, 1.6) 29.19 / 24.64, (6, 1.3) 29.25 / 24.54: full-body data are inconsistent with any voxel
#: model, so SART semi-converges and a larger relaxation reaches its best PSNR in fewer passes. Hence 10
#: passes at 1.3: the baseline ixgs is compared with is the best RTK SART we found (within 0.06 dB).
DEFAULT_ITERATIONS = {"fdk": 1, "sart": 10, "sirt": 30, "cg": 20}
#: Default SART / SIRT relaxation (RTK's own default is 0.3; see above).
DEFAULT_LAMBDA = {"sart": 1.3, "sirt": 0.9}
#: Default Hann cut frequency of FDK's ramp filter (0 = plain ramp). Same scans: plain ramp 19.1 / 21.2 dB,
#: SSIM 0.57 / 0.48; Hann 0.5: 19.3 / 22.7 dB, SSIM 0.67 / 0.66; Hann 0.8: - / 22.3 dB.
DEFAULT_HANN = 0.5


class RTKUnavailableError(ImportError):
    """itk-rtk is not installed (``pip install itk-rtk``)."""


# ---------------------------------------------------------------------------------------------- ITK access
_ITK = None
_ITK_LOCK = threading.Lock()


def import_rtk():
    """Import itk and RTK once and load the ITK template instances the engine uses (SART, Joseph forward and
    back projectors, the float image and its numpy bridges). Returns ``(itk, rtk)``.

    ITK loads its wrappers lazily, on first attribute access, which takes 10-20 s on 2 cores; two threads that
    trigger it at the same time can see a half-loaded module (``AttributeError: ... has no attribute
    'Image'``, as a live node's start-up preload beside an initialisation from restored views did). So the first
    call loads everything under a lock and every other thread waits for it."""
    global _ITK
    if _ITK is not None:
        return _ITK
    with _ITK_LOCK:
        if _ITK is None:
            try:
                import itk  # noqa: F401
                from itk import RTK as rtk
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise RTKUnavailableError(
                    f"the RTK baselines need itk-rtk (pip install itk-rtk): {exc}") from exc
            IT = itk.Image[itk.F, 3]
            for cls in (rtk.SARTConeBeamReconstructionFilter, rtk.JosephForwardProjectionImageFilter,
                        rtk.JosephBackProjectionImageFilter):
                cls[IT, IT].New()
            rtk.ThreeDCircularProjectionGeometry.New()
            for name in ("MultiThreaderBase", "image_from_array", "array_from_image"):
                getattr(itk, name)
            _ITK = (itk, rtk)
    return _ITK


def preload() -> float:
    """Load RTK and the ITK template instances the engine's initialisation uses (:func:`import_rtk`) and return
    the seconds it took; a live node calls this at start-up, in a thread, so that its first initialisation does
    not wait for ITK's lazy loading (10-20 s on 2 cores) inside the first SART pass."""
    t0 = time.perf_counter()
    import_rtk()
    return time.perf_counter() - t0


def _image_type():
    itk, _ = import_rtk()
    return itk.Image[itk.F, 3]


def set_threads(n: int | None) -> None:
    """Set ITK's global number of worker threads (None leaves ITK's default: all cores)."""
    if n is None:
        return
    itk, _ = import_rtk()
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(n))


def _np_to_image(arr_xyz: np.ndarray, spacing, origin=(0.0, 0.0, 0.0)):
    """numpy ``[X, Y, Z]`` (x fastest in ITK) -> a new itk float image with identity direction."""
    itk, _ = import_rtk()
    a = np.ascontiguousarray(np.asarray(arr_xyz, dtype=np.float32).transpose(2, 1, 0))
    img = itk.image_from_array(a)  # copies
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    return img


def _image_to_np(img) -> np.ndarray:
    """itk image -> numpy ``[X, Y, Z]`` float32 copy."""
    itk, _ = import_rtk()
    return np.ascontiguousarray(itk.array_from_image(img).transpose(2, 1, 0)).astype(np.float32, copy=False)


def _constant_image(size_xyz, spacing, origin=(0.0, 0.0, 0.0), value: float = 0.0):
    itk, rtk = import_rtk()
    src = rtk.ConstantImageSource[_image_type()].New()
    src.SetOrigin([float(o) for o in origin])
    src.SetSpacing([float(s) for s in spacing])
    src.SetSize([int(s) for s in size_xyz])
    src.SetConstant(float(value))
    src.Update()
    out = src.GetOutput()
    out.DisconnectPipeline()
    return out


# ---------------------------------------------------------------------------------------------- frames
@dataclass(frozen=True)
class CanonicalFrame:
    """An axis-aligned description of a grid for RTK.

    ``T_frame_world`` maps world mm to a frame in which voxel ``(i, j, k)`` of the (possibly flipped) array sits
    at ``spacing * (i, j, k)``; ``flip`` tells which array axes were reversed to make the frame right-handed.
    """

    T_frame_world: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def to_frame_array(self, volume: np.ndarray) -> np.ndarray:
        sl = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        return volume[sl]

    from_frame_array = to_frame_array  # flipping is an involution


def canonical_frame(grid: Grid) -> CanonicalFrame:
    """Describe ``grid`` as an axis-aligned RTK volume (identity direction) in a rigidly moved world frame.

    Raises :class:`VolumeError` for sheared affines (non-orthogonal axes), which RTK cannot represent.
    """
    A = np.asarray(grid.affine, dtype=np.float64)
    M, t = A[:3, :3].copy(), A[:3, 3].copy()
    s = np.linalg.norm(M, axis=0)
    R = M / s
    gram = R.T @ R
    if np.abs(gram - np.eye(3)).max() > 1e-6:
        raise VolumeError("grid affine has non-orthogonal (sheared) axes; RTK needs an orthogonal grid - "
                          "resample the volume onto an orthogonal grid first")
    flip = [False, False, False]
    if np.linalg.det(R) < 0:  # mirrored grid: reverse the first axis to make it a rotation
        flip[0] = True
        t = t + (grid.shape[0] - 1) * M[:, 0]
        R[:, 0] = -R[:, 0]
    T = np.eye(4)
    T[:3, :3] = R.T
    T[:3, 3] = -R.T @ t
    return CanonicalFrame(T, s, tuple(grid.shape), tuple(flip))


def trajectory_frame(views: Sequence[View], grid: Grid | None = None, snap_deg: float = 10.0) -> np.ndarray:
    """A rigid world-to-frame transform in which the views look like an RTK circular scan.

    RTK's FDK assumes the rotation axis is ``y`` and the isocentre is at the origin: it derives each view's
    angular weight from the source angle in the ``xz`` plane. The frame's origin is the least-squares
    intersection of the principal rays, ``y`` the direction most orthogonal to all of them (the rotation axis
    of an arc), ``z`` points toward the mean source. When ``grid`` is given and its axes are within
    ``snap_deg`` of the frame's (up to order and sign), the frame is snapped onto them so that a grid-aligned
    volume in the frame has exactly the grid's voxel centres.
    """
    views = list(views)
    c, _ = views_bounding_sphere(views)
    D = np.array([v.principal_axis for v in views])
    _, V = np.linalg.eigh(D.T @ D)
    y = V[:, 0]  # eigenvector of the smallest eigenvalue
    S = np.array([v.source for v in views]) - c
    S = S - np.outer(S @ y, y)
    z = S.mean(axis=0)
    if np.linalg.norm(z) < 1e-3 * np.linalg.norm(S, axis=1).max():  # full circle: any perpendicular axis
        z = S[0]
    z = z / np.linalg.norm(z)
    x = np.cross(y, z)
    R = np.stack([x, y, z])  # rows: frame axes in world
    if grid is not None:
        G = np.asarray(grid.affine, dtype=np.float64)[:3, :3]
        G = G / np.linalg.norm(G, axis=0)
        M = R @ G  # frame axis k vs grid axis j
        perm = np.argmax(np.abs(M), axis=1)
        if len(set(perm.tolist())) == 3:
            cosines = np.abs(M[np.arange(3), perm])
            if np.all(cosines >= np.cos(np.deg2rad(snap_deg))):
                Rs = np.stack([np.sign(M[k, perm[k]]) * G[:, perm[k]] for k in range(3)])
                if np.linalg.det(Rs) < 0:  # mirrored grid: flip x, keeping y (the axis) and z
                    Rs[0] = -Rs[0]
                R = Rs
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ c
    return T


def _fdk_angular_weights(geometry) -> np.ndarray:
    """Per-view factors turning RTK's angular weights into ones valid for arcs shorter than 360 degrees.

    RTK weights view ``i`` by half the angular distance between its neighbours, wrapping around the circle; for
    an arc that gives the two end views half of the empty part of the circle. When the largest gap is more than
    three times the median (and over 45 degrees), the views are treated as an arc of ``A`` degrees: end views get
    their neighbour's gap, and all weights are scaled so that singly measured directions are weighted right
    (x2 for ``A <= 180``, ``360 / A`` beyond: the average redundancy of an arc without short-scan weights).
    """
    ang = np.asarray(geometry.GetSourceAngles(), dtype=np.float64)
    rtk_w = np.asarray(geometry.GetAngularGaps(geometry.GetSourceAngles()), dtype=np.float64)
    n = len(ang)
    if n < 3:
        return np.ones(n)
    order = np.argsort(ang)
    a = ang[order]
    gaps = np.diff(np.concatenate([a, [a[0] + 2 * np.pi]]))  # gaps[i]: from a[i] to the next
    big = int(np.argmax(gaps))
    if not (gaps[big] > 3 * np.median(gaps) and gaps[big] > np.pi / 4):
        return np.ones(n)
    # unwrap so that the arc starts after the big gap
    start = (big + 1) % n
    idx = np.roll(order, -start)
    arc = np.unwrap(ang[idx])  # increasing, without the 2 pi jump
    g = np.empty(n)
    g[1:-1] = 0.5 * (arc[2:] - arc[:-2])
    g[0] = arc[1] - arc[0]
    g[-1] = arc[-1] - arc[-2]
    A = float(g.sum())
    c = 2.0 if A <= np.pi else 2.0 * np.pi / A
    want = np.empty(n)
    want[idx] = c * g
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(rtk_w > 0, want / rtk_w, 0.0)
    return f


# ---------------------------------------------------------------------------------------------- geometry
@dataclass
class RTKGeometry:
    """RTK geometry for a list of views plus what is needed to build matching projection stacks."""

    geometry: object  # rtk.ThreeDCircularProjectionGeometry
    pitch: tuple[float, float]  # (u, v) pixel pitch of the stack (mm)
    size: tuple[int, int]  # (width, height)
    n: int

    def stack_image(self, projections: np.ndarray | None = None):
        """A fresh RTK projection stack image (zeros, or ``projections`` [N, H, W] with rows mirrored)."""
        W, H = self.size
        if projections is None:
            return _constant_image((W, H, self.n), (self.pitch[0], self.pitch[1], 1.0))
        p = np.asarray(projections, dtype=np.float32)
        if p.shape != (self.n, H, W):
            raise ValueError(f"projections have shape {p.shape}, expected {(self.n, H, W)} for these views")
        itk, _ = import_rtk()
        img = itk.image_from_array(np.ascontiguousarray(p[:, ::-1, :]))
        img.SetSpacing([self.pitch[0], self.pitch[1], 1.0])
        img.SetOrigin([0.0, 0.0, 0.0])
        return img

    def stack_to_numpy(self, img) -> np.ndarray:
        itk, _ = import_rtk()
        return np.ascontiguousarray(itk.array_from_image(img)[:, ::-1, :]).astype(np.float32, copy=False)


def _check_views(views: Sequence[View]) -> list[View]:
    views = list(views)
    if not views:
        raise GeometryError("no views given")
    for i, v in enumerate(views):
        if not isinstance(v, View):
            raise GeometryError(f"views[{i}] is not a View ({type(v).__name__})")
    W, H = views[0].width, views[0].height
    for i, v in enumerate(views):
        if (v.width, v.height) != (W, H):
            raise GeometryError(f"views[{i}] has a {v.width}x{v.height} detector, views[0] {W}x{H}: an RTK "
                                "projection stack needs one detector size")
        if abs(v.K[0, 1]) > 1e-9 * v.K[0, 0]:
            raise GeometryError(f"views[{i}] has a skewed K (K[0][1] = {v.K[0, 1]}); RTK needs orthogonal "
                                "detector axes")
    return views


FALLBACK_SDD_MM = 10000.0


def to_rtk_geometry(views: Sequence[View], T_frame_world: np.ndarray | None = None) -> RTKGeometry:
    """Convert views (optionally re-expressed in another rigid frame) to an RTK geometry.

    Uses :meth:`View.detector_vectors` for the detector description (never re-derived here). All views share
    one pixel pitch: ``pitch_u`` is that of the first view at its nominal ``sdd`` and every view is placed at
    ``sdd_i = pitch_u * fx_i`` (a pinhole's detector distance is arbitrary). Without ``meta['sdd']`` the nominal
    distance is ``FALLBACK_SDD_MM``: RTK's projectors only integrate between the source and the detector, so the
    detector must lie beyond the patient (``fx`` in mm, the old fallback, put it inside small test scenes).
    """
    _, rtk = import_rtk()
    views = _check_views(views)
    if T_frame_world is not None:
        views = [v.transformed(T_frame_world) for v in views]
    v0 = views[0]
    sdd0 = float(v0.meta.get("sdd", FALLBACK_SDD_MM))
    pitch_u = sdd0 / v0.K[0, 0]
    pitch_v = sdd0 / v0.K[1, 1]
    geom = rtk.ThreeDCircularProjectionGeometry.New()
    for i, v in enumerate(views):
        sdd = pitch_u * v.K[0, 0]
        pv = sdd / v.K[1, 1]
        if abs(pv - pitch_v) > 1e-6 * pitch_v:
            raise GeometryError(f"views[{i}] has a pixel aspect ratio fx/fy = {v.K[0, 0] / v.K[1, 1]:.6g} "
                                f"different from views[0] ({v0.K[0, 0] / v0.K[1, 1]:.6g}); one RTK stack cannot "
                                "hold both")
        src, origin, u, vv = v.detector_vectors(sdd)
        # mirror the rows (see module docstring): origin at the last row, column direction -v
        origin = origin + (v.height - 1) * vv
        r = u / np.linalg.norm(u)
        c = -vv / np.linalg.norm(vv)
        ok = geom.AddProjection([float(a) for a in src], [float(a) for a in origin],
                                [float(a) for a in r], [float(a) for a in c])
        if not ok:
            raise GeometryError(f"RTK refused views[{i}] (AddProjection returned false)")
    return RTKGeometry(geom, (float(pitch_u), float(pitch_v)), (v0.width, v0.height), len(views))


# ---------------------------------------------------------------------------------------------- projectors
def coarse_binning(views: Sequence[View], solve_grid: Grid, min_pixels: int = 32) -> int:
    """The largest integer detector binning whose pixels, back-projected to the solve grid's centre, are still
    no larger than its voxels (1 when the detector is not finer than the grid), keeping at least
    ``min_pixels`` pixels per detector side. A SART solve on a grid coarser than the detector sampling loses
    nothing by binning the projections to it and forward-projects fewer rays. Measured on the full-body T12
    scan (25 views, 256^2, 0.96 mm pixels at the centre, 2.75 mm solve grid; 20 TV-SART passes, then the
    engine's fine re-solve on the unbinned views): binning 1 / 2 / 3 / 4: coarse solve 150 / 129 / 110 / 100 s,
    27.21 / 27.23 / 27.00 / 26.67 dB; after the fine re-solve 28.86 / 28.96 / 28.82 / 28.67 dB (this rule: 2)."""
    c = solve_grid.index_to_world((np.asarray(solve_grid.shape, dtype=np.float64) - 1.0) / 2.0)
    pitch = 0.0
    for v in views:
        depth = float(v.world_to_camera(c[None])[0, 2])
        pitch = max(pitch, depth / float(v.K[0, 0]), depth / float(v.K[1, 1]))
    b = int(np.floor(float(solve_grid.spacing.min()) / pitch + 1e-9)) if pitch > 0 else 1
    b = min(b, min(min(v.width, v.height) for v in views) // int(min_pixels))
    return max(1, b)


def pad_grid(grid: Grid, pad: int) -> Grid:
    """``grid`` grown by ``pad`` voxels on every side (same axes and spacing)."""
    A = np.array(grid.affine, dtype=np.float64)
    A[:3, 3] = grid.index_to_world(np.full(3, -float(pad)))
    return Grid(tuple(int(s) + 2 * int(pad) for s in grid.shape), A)


def coarsen_grid(grid: Grid, factor: int) -> Grid:
    """A grid over (at least) the same box as ``grid`` with voxels ``factor`` times larger along each axis
    (same axes and centre; ceil(n / factor) voxels per axis)."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"coarsening factor must be >= 1, got {factor}")
    shape = tuple(-(-int(n) // factor) for n in grid.shape)
    A = np.array(grid.affine, dtype=np.float64)
    A[:3, :3] *= factor
    A[:3, 3] = grid.center - A[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1.0) / 2.0)
    return Grid(shape, A)


def forward_project(volume: np.ndarray, grid: Grid, views: Sequence[View], threads: int | None = None,
                    pad: int = 1) -> np.ndarray:
    """Line integrals ``[N, H, W]`` (float32) of ``volume`` (mu, 1/mm, on ``grid``) with RTK's Joseph projector.

    Rays run from each view's source through its pixel centres; outside the grid the volume is zero. Joseph's
    projector only integrates between the outermost voxel centres, which drops half a voxel of a non-zero
    border per ray end (about 3 % on a 32-voxel box); ``pad`` voxels of zeros around the volume restore it
    (the linear ramp to the zero voxel integrates to the half voxel a voxel-cube model has).
    """
    _, rtk = import_rtk()
    set_threads(threads)
    IT = _image_type()
    volume = np.asarray(volume, dtype=np.float32)
    if volume.shape != tuple(grid.shape):
        raise VolumeError(f"volume shape {volume.shape} does not match grid shape {tuple(grid.shape)}")
    if pad:
        volume = np.pad(volume, int(pad))
        grid = pad_grid(grid, pad)
    frame = canonical_frame(grid)
    vol_img = _np_to_image(frame.to_frame_array(volume), frame.spacing)
    g = to_rtk_geometry(views, frame.T_frame_world)
    fp = rtk.JosephForwardProjectionImageFilter[IT, IT].New()
    fp.SetInput(0, g.stack_image())
    fp.SetInput(1, vol_img)
    fp.SetGeometry(g.geometry)
    fp.Update()
    return g.stack_to_numpy(fp.GetOutput())


def back_project(projections: np.ndarray, views: Sequence[View], grid: Grid, threads: int | None = None,
                 pad: int = 1) -> np.ndarray:
    """Adjoint of :func:`forward_project` (RTK's Joseph backprojector; same ``pad``) onto ``grid``."""
    _, rtk = import_rtk()
    set_threads(threads)
    IT = _image_type()
    pgrid = pad_grid(grid, pad) if pad else grid
    frame = canonical_frame(pgrid)
    g = to_rtk_geometry(views, frame.T_frame_world)
    bp = rtk.JosephBackProjectionImageFilter[IT, IT].New()
    bp.SetInput(0, _constant_image(frame.shape, frame.spacing))
    bp.SetInput(1, g.stack_image(projections))
    bp.SetGeometry(g.geometry)
    bp.Update()
    out = frame.from_frame_array(_image_to_np(bp.GetOutput()))
    if pad:
        out = out[pad:-pad, pad:-pad, pad:-pad]
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------------------------- solve grid
def _truncated(p: np.ndarray, thr: float, border: int = 2, frac: float = 0.01) -> bool:
    """Whether a projection has material on its border (the object sticks out of that view's frustum)."""
    edge = np.concatenate([p[:border].ravel(), p[-border:].ravel(), p[:, :border].ravel(), p[:, -border:].ravel()])
    return bool(np.mean(edge > thr) > frac)


def material_inside(views: Sequence[View], projections: np.ndarray, grid: Grid, air_threshold: float = 1e-3,
                    tolerance: float = 1e-3) -> bool:
    """Whether the projections are consistent with all material lying inside ``grid``'s box.

    True when no view is truncated and, in every view, at most ``tolerance`` of the material pixels (above
    ``air_threshold`` times the maximum) fall outside the box's shadow (the convex hull of its projected
    corners, one pixel of slack).
    """
    from scipy.ndimage import binary_dilation
    from scipy.spatial import ConvexHull
    from skimage.draw import polygon

    proj = np.asarray(projections, dtype=np.float32)
    thr = air_threshold * float(proj.max())
    corners = grid.corners()
    for v, p in zip(views, proj):
        if _truncated(p, thr):
            return False
        uv, z = v.project(corners)
        if np.any(~(z > 0)):
            return False
        hull = uv[ConvexHull(uv).vertices]
        shadow = np.zeros(p.shape, dtype=bool)
        rr, cc = polygon(hull[:, 1], hull[:, 0], shape=p.shape)
        shadow[rr, cc] = True
        shadow = binary_dilation(shadow, iterations=1)
        material = p > thr
        n = int(material.sum())
        if n and np.count_nonzero(material & ~shadow) > tolerance * n:
            return False
    return True


def solved_coarser(solve_spacing_mm: float, out_spacing_mm: float) -> bool:
    """Whether an RTK solve grid of voxel size ``solve_spacing_mm`` is coarser than the output grid's
    ``out_spacing_mm`` (beyond rounding): the baseline is then weaker than RTK on a finer grid can be (on the
    full-body scans, BENCHMARKS.md session 21), which ``ixgs bench``'s margins and ``ixgs demo`` say."""
    return float(solve_spacing_mm) > float(out_spacing_mm) * (1 + 1e-6)


def default_solve_grid(views: Sequence[View], roi_grid: Grid, body_extent=None, projections=None, *,
                       spacing: float | None = None, max_voxels: int = 160 ** 3, radius: float = 250.0,
                       air_threshold: float = 1e-3, margin_mm: float = 6.0) -> Grid:
    """An axis-aligned world grid holding all material the rays can cross, for the iterative RTK solvers.

    Candidate points lie within ``radius`` mm of the ROI centre (capped at 0.8 times the smallest
    source distance) and are seen by at least one view. They are then restricted to

    * ``body_extent`` when given: a :class:`Grid` (its bounds) or a ``(lo, hi)`` pair of world corners of a box
      holding the patient;
    * with ``projections`` ([N, H, W] line integrals): when they show that all material lies inside the ROI
      (:func:`material_inside`, e.g. an ROI-only scan), the ROI grid grown by one voxel is returned: the
      tightest support, with the ROI's voxels. (Joseph's projector integrates only between the outermost
      voxel centres; without that voxel of slack the model misses half a border voxel per ray and SART
      diverges at the border: -1.6 dB instead of 27.2 dB on the T12 ROI-only scan, 2 voxels give 25.7 dB.)
      Otherwise the visual hull of the material. A point that projects
      onto an air pixel (below ``air_threshold`` times the projections' maximum) is dropped; a point outside
      the frustum of a view whose projection has air all around its border (not truncated: the object lies
      inside that frustum) is dropped too. For an ROI-only scan this leaves about the ROI; for a full-body
      scan (truncated views) the part of the body the views cross.

    The grid is the bounding box of the remaining points and of the ROI, padded by ``margin_mm``. Its spacing
    is the ROI's finest when the box fits in ``max_voxels`` voxels, else the smallest (at least 2 mm) that
    does; ``spacing`` forces one.
    """
    views = _check_views(views)
    if projections is not None and body_extent is None and spacing is None and \
            material_inside(views, projections, roi_grid, air_threshold):
        return pad_grid(roi_grid, 1)
    center = roi_grid.center
    lo_roi, hi_roi = roi_grid.bounds()
    d = min(float(np.linalg.norm(v.source - center)) for v in views)
    radius = min(float(radius), 0.8 * d)
    step = max(5.0, 2 * radius / 90.0)  # candidate lattice: about 5-6 mm
    ax = np.arange(-radius, radius + 1e-6, step)
    P = (np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1) + center).reshape(-1, 3)
    P = P[np.linalg.norm(P - center, axis=-1) <= radius]
    if body_extent is not None:
        if isinstance(body_extent, Grid):
            blo, bhi = body_extent.bounds()
        else:
            blo, bhi = (np.asarray(b, dtype=np.float64).reshape(3) for b in body_extent)
        P = P[np.all((P >= blo) & (P <= bhi), axis=-1)]
    proj = None
    if projections is not None:
        from scipy.ndimage import maximum_filter

        proj = np.asarray(projections, dtype=np.float32)
        if proj.shape != (len(views), views[0].height, views[0].width):
            raise ValueError(f"projections have shape {proj.shape}, expected "
                             f"{(len(views), views[0].height, views[0].width)}")
        thr = air_threshold * float(proj.max())
    seen = np.zeros(len(P), dtype=bool)
    for i, v in enumerate(views):
        inside, u, r = _detector_pixels(v, P)
        seen |= inside
        if proj is not None:  # carve: drop points on air pixels, and outside untruncated views
            material = maximum_filter(proj[i] > thr, size=3)  # a pixel of slack for voxel-sized objects
            ok = np.zeros(len(P), dtype=bool)
            ok[inside] = material[r[inside].astype(int), u[inside].astype(int)]
            if _truncated(proj[i], thr):
                ok[~inside] = True
            P, seen = P[ok], seen[ok]
    P = P[seen]
    if len(P):
        lo = np.minimum(P.min(0) - step / 2, lo_roi)
        hi = np.maximum(P.max(0) + step / 2, hi_roi)
    else:
        lo, hi = lo_roi, hi_roi
    lo, hi = lo - margin_mm, hi + margin_mm
    ext = hi - lo
    if spacing is None:
        sp = float(np.min(roi_grid.spacing))
        if np.prod(np.ceil(ext / sp)) > max_voxels:
            sp = max(2.0, float((np.prod(ext) / max_voxels) ** (1 / 3)))
            sp = math.ceil(sp * 4) / 4  # round up to 0.25 mm
    else:
        sp = float(spacing)
    size = np.maximum(np.ceil(ext / sp).astype(int), 1)
    return Grid.centered(size, sp, (lo + hi) / 2)


def _roi_is_covered(roi: Grid, solve: Grid) -> bool:
    lo, hi = solve.bounds()
    rlo, rhi = roi.bounds()
    return bool(np.all(rlo >= lo - 1e-6) and np.all(rhi <= hi + 1e-6))


# ---------------------------------------------------------------------------------------------- solvers
def _run_fdk(g: RTKGeometry, projections, size, spacing, origin, hann: float = 0.0,
             truncation_correction: float = 0.0) -> np.ndarray:
    _, rtk = import_rtk()
    IT = _image_type()
    fdk = rtk.FDKConeBeamReconstructionFilter[IT].New()
    fdk.SetInput(0, _constant_image(size, spacing, origin))
    fdk.SetInput(1, g.stack_image(projections))
    fdk.SetGeometry(g.geometry)
    fdk.GetRampFilter().SetTruncationCorrection(float(truncation_correction))
    fdk.GetRampFilter().SetHannCutFrequency(float(hann))
    fdk.Update()
    return _image_to_np(fdk.GetOutput())


def fdk(views: Sequence[View], projections: np.ndarray, grid: Grid, hann: float = DEFAULT_HANN,
        truncation_correction: float = 0.0, arc_weights: bool = True) -> tuple[np.ndarray, dict]:
    """RTK FDK of ``projections`` onto ``grid`` (see the module docstring for its validity).

    The views are expressed in :func:`trajectory_frame`; FDK runs on a grid-aligned box of that frame (the
    grid's own voxel centres when the frame snaps to the grid, else a box covering it at the grid's finest
    spacing) and the result is resampled onto ``grid``. ``arc_weights`` applies
    :func:`_fdk_angular_weights`. ``hann`` is RTK's Hann cut frequency (0: plain ramp; default :data:`DEFAULT_HANN`);
    ``truncation_correction`` RTK's ramp-filter extrapolation of truncated projections (fraction of the width).
    """
    T = trajectory_frame(views, grid)
    R = T[:3, :3]
    n = np.array(grid.shape) - 1
    corners = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])], dtype=np.float64)
    pf = grid.index_to_world(corners) @ R.T + T[:3, 3]
    lo, hi = pf.min(axis=0), pf.max(axis=0)
    G = np.asarray(grid.affine, dtype=np.float64)[:3, :3]
    M = R @ (G / np.linalg.norm(G, axis=0))
    best = np.argmax(np.abs(M), axis=1)
    aligned = len(set(best.tolist())) == 3 and np.allclose(np.abs(M[np.arange(3), best]), 1.0, atol=1e-9)
    sp = grid.spacing[best] if aligned else np.full(3, float(np.min(grid.spacing)))
    size = np.maximum(np.rint((hi - lo) / sp).astype(int) + 1, 1)
    A = np.eye(4)
    A[:3, :3] = np.diag(sp)
    A[:3, 3] = lo
    fgrid = Grid(tuple(int(x) for x in size), np.linalg.inv(T) @ A)
    g = to_rtk_geometry(views, T)
    p = np.asarray(projections, dtype=np.float32)
    f = _fdk_angular_weights(g.geometry) if arc_weights else np.ones(len(p))
    p = p * f[:, None, None].astype(np.float32)
    vol = _run_fdk(g, p, size, sp, lo, hann=hann, truncation_correction=truncation_correction)
    out = resample_volume(vol, fgrid, grid)
    return out, {"fdk_grid": fgrid.to_dict(), "frame_aligned": bool(aligned),
                 "arc_weighting": bool(arc_weights and not np.allclose(f, 1.0))}


def _sart_filter(g: RTKGeometry, proj, vol0, iterations: int, subset_size: int, lam: float, positivity: bool):
    """RTK's SART filter from ``vol0`` (``subset_size`` views per subset; ``g.n`` = SIRT), displaced-detector
    weighting off (it assumes a circular scan)."""
    _, rtk = import_rtk()
    IT = _image_type()
    f = rtk.SARTConeBeamReconstructionFilter[IT, IT].New()
    f.SetInput(0, vol0)
    f.SetInput(1, proj)
    f.SetGeometry(g.geometry)
    f.SetNumberOfIterations(int(iterations))
    f.SetNumberOfProjectionsPerSubset(max(1, min(int(subset_size), g.n)))
    f.SetLambda(float(lam))
    f.SetEnforcePositivity(bool(positivity))
    f.SetDisableDisplacedDetectorFilter(True)
    return f


def _run_iterative(method: str, g: RTKGeometry, projections, frame: CanonicalFrame, iterations: int,
                   lam: float | None = None, subset_size: int | None = None, positivity: bool = True):
    """SART/SIRT/CG from a zero volume on ``frame`` (fresh inputs; the displaced-detector weighting, which
    assumes a circular scan, is disabled)."""
    _, rtk = import_rtk()
    IT = _image_type()
    vol0 = _constant_image(frame.shape, frame.spacing)
    proj = g.stack_image(projections)
    if method in ("sart", "sirt"):
        n_sub = g.n if method == "sirt" else int(subset_size or 1)
        f = _sart_filter(g, proj, vol0, iterations, n_sub, lam if lam is not None else DEFAULT_LAMBDA[method],
                         positivity)
    elif method == "cg":
        f = rtk.ConjugateGradientConeBeamReconstructionFilter[IT].New()
        f.SetInput(0, vol0)
        f.SetInput(1, proj)
        f.SetInput(2, g.stack_image(np.ones((g.n, g.size[1], g.size[0]), np.float32)))  # uniform weights
        f.SetGeometry(g.geometry)
        f.SetNumberOfIterations(int(iterations))
        f.SetDisableDisplacedDetectorFilter(True)
    else:  # pragma: no cover - guarded by reconstruct()
        raise ValueError(method)
    f.Update()
    return _image_to_np(f.GetOutput())


def tv_schedule(passes: int, tv_weight: float, tv_weight_final: float | None = None) -> list[float]:
    """The TV weight of each of :func:`sart_tv`'s ``passes``: constant ``tv_weight``, or decaying geometrically
    from it to ``tv_weight_final``. ValueError for a negative weight, or one that is zero at one end only."""
    final = tv_weight if tv_weight_final is None else tv_weight_final
    if tv_weight < 0 or final < 0 or (tv_weight == 0) != (final == 0):
        raise ValueError(f"TV weights must be >= 0, and zero at both ends or at neither "
                         f"(tv_weight={tv_weight}, tv_weight_final={tv_weight_final})")
    passes = int(passes)
    if final == tv_weight or passes < 2:
        return [float(tv_weight)] * passes
    return [float(w) for w in np.geomspace(tv_weight, final, passes)]


def tv_denoise(x: np.ndarray, weight: float, iterations: int = 20, *,
               weight_map: np.ndarray | None = None) -> np.ndarray:
    """3D total-variation denoising of ``x`` scaled to its maximum: ``iterations`` steps of the primal-dual
    algorithm of Chambolle & Pock (2011, ROF model ``min_u 1/2 |u - f|^2 + weight * TV(u)``, isotropic TV with
    forward differences and Neumann boundary, step sizes tau = 1/4, sigma = 1/3 so that tau * sigma * 12 = 1),
    from ``u = f``; the result is scaled back. ``weight = 0`` returns ``x`` unchanged. ``weight_map`` (>= 0,
    the shape of ``x``) makes the TV weighted: voxel i's term is ``weight * weight_map[i] * |grad u|_i``
    (e.g. smaller at edges, as in iteratively reweighted TV; ``benchmarks/fine_prior_sweep.py``).

    Replaced scikit-image's Chambolle (2004) projection algorithm in :func:`sart_tv` and :func:`refine_inner`:
    with the same weights and 20 iterations the engine's TV-SART init scored 34.27 dB instead of 33.69
    (ROI-only T12, 25 views) and 27.36 instead of 26.79 (full-body, coarse 2.75 mm solve); 10 / 40 iterations:
    34.13 / 34.29 dB. Runs in torch (float32, the threads torch uses)."""
    if weight < 0:
        raise ValueError(f"TV weight must be >= 0, got {weight}")
    if weight == 0:
        return x
    import torch

    scale = max(float(np.max(x)), 1e-12)
    f = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) / scale
    tau, sigma, w = 0.25, 1.0 / 3.0, float(weight)
    if weight_map is not None:
        weight_map = np.asarray(weight_map, dtype=np.float32)
        if weight_map.shape != x.shape or not (weight_map >= 0).all():
            raise ValueError(f"weight_map must be >= 0 with the shape of x {x.shape}, got shape {weight_map.shape}")
        # a zero bound would divide by zero below; 1e-12 holds the dual variable at zero there just as well
        w = torch.from_numpy(np.maximum(weight_map, 1e-12 / w)) * w
    u, ub = f.clone(), f.clone()
    p = torch.zeros((x.ndim,) + tuple(x.shape), dtype=torch.float32)
    for _ in range(int(iterations)):
        for a in range(x.ndim):  # p += sigma * grad(ub)
            n = ub.shape[a]
            p[a].narrow(a, 0, n - 1).add_(ub.narrow(a, 1, n - 1) - ub.narrow(a, 0, n - 1), alpha=sigma)
        p.div_(p.square().sum(0).sqrt_().div_(w).clamp_(min=1.0))  # project onto |p| <= weight
        d = torch.zeros_like(f)  # div p = -grad^T p
        for a in range(x.ndim):
            n = d.shape[a]
            pa = p[a].narrow(a, 0, n - 1)
            d.narrow(a, 0, n - 1).add_(pa)
            d.narrow(a, 1, n - 1).sub_(pa)
        u_new = (u + tau * d + tau * f) / (1.0 + tau)
        ub = 2.0 * u_new - u
        u = u_new
    return (u * scale).numpy().astype(np.float32)


def _detector_pixels(view: View, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(on_detector, column, row)`` of world ``points`` [N, 3] in ``view``: the nearest pixel centre (rounded,
    float) and whether the point lies in front of the source and that pixel on the detector."""
    uv, z = view.project(points)
    with np.errstate(invalid="ignore"):
        u, r = np.rint(uv[:, 0]), np.rint(uv[:, 1])
        inside = (z > 0) & (u >= 0) & (u < view.width) & (r >= 0) & (r < view.height)
    return inside, u, r


def view_counts(views: Sequence[View], grid: Grid) -> np.ndarray:
    """For each voxel of ``grid``, how many of ``views`` see it: its centre lies in front of the source and
    its nearest pixel centre on the detector (as :func:`default_solve_grid` decides it). float32,
    ``grid.shape``. Voxels few views see are those a truncated scan leaves to the prior (see :func:`sart_tv`'s
    ``tv_weight_map``)."""
    views = _check_views(views)
    X = grid.world_coords().reshape(-1, 3)
    counts = np.zeros(len(X), dtype=np.float32)
    for v in views:
        counts += _detector_pixels(v, X)[0]
    return counts.reshape(grid.shape)


def sart_tv(views: Sequence[View], projections: np.ndarray, solve_grid: Grid, passes: int, tv_weight: float, *,
            tv_weight_final: float | None = None, support: Grid | None = None, lam: float | None = None,
            tv_iterations: int = 20, tv_weight_map: np.ndarray | None = None, x0: np.ndarray | None = None,
            threads: int | None = None, on_pass: Callable[[int, int], None] | None = None) -> np.ndarray:
    """RTK SART passes alternated with 3D total-variation denoising (the ASD-POCS idea of Sidky & Pan 2008,
    simplified): each pass is one SART sweep over all views (positivity on, relaxation ``lam``) from the
    current volume, then TV denoising (:func:`tv_denoise`) of the volume scaled to its maximum with
    ``tv_weight``. With ``tv_weight_final`` the weight decays geometrically from ``tv_weight`` (first pass) to
    it (last pass), so the early passes suppress streaks and the late ones return towards the data, as the
    adaptive TV step of ASD-POCS does. ``support`` (a :class:`Grid`) is a box known to hold all the material
    (e.g. when :func:`material_inside` says so): after every pass the voxels whose centres lie outside it are
    set to zero. On an ROI-only scan the solve grid is the ROI grown by one voxel, and without that constraint
    SART puts the ROI faces' material partly into the extra voxel layer (faces 0.04-0.08 x max too low).
    Returns the volume on ``solve_grid`` (float32, 1/mm). ``tv_weight=0`` is plain SART. ``on_pass(k, passes)``
    is called after pass ``k`` (1-based); an exception it raises ends the solve (e.g. a shutdown).
    ``tv_weight_map`` (>= 0, ``solve_grid.shape``, world layout) scales the TV weight voxel by voxel
    (:func:`tv_denoise`'s ``weight_map``), e.g. stronger where few views look (:func:`view_counts`).
    ``x0`` (``solve_grid.shape``, world layout, clipped at 0) is the start volume instead of zeros, e.g. a
    solution on a coarser grid resampled to this one (the engine's two-level full-body init).

    Not one of RTK's methods (so not a baseline of :func:`reconstruct`): the reconstruction engine starts from
    it. Measured on the ``ixgs bench`` T12 scans (25 views, 3D PSNR over the ROI): ROI-only SART-8 29.07 dB,
    SART-20 29.21, this with weight 0.01 and 16 passes 30.39, with 24 passes and weight 0.03 -> 0.003 30.94,
    and with the ROI as ``support`` 32.97; full-body 23.99 / 24.40 / 25.21 / 26.16 dB (no support: material
    lies outside the ROI). Those are at relaxation 0.6 with scikit-image's TV denoiser; at 1.3 (the engine's
    ``init_sart_lambda``) the last ones read 33.69 / 26.79 dB, and with :func:`tv_denoise` 34.27 / 27.36 dB.
    """
    views = _check_views(views)
    set_threads(threads)
    frame = canonical_frame(solve_grid)
    g = to_rtk_geometry(views, frame.T_frame_world)
    proj = g.stack_image(projections)
    lam = lam if lam is not None else DEFAULT_LAMBDA["sart"]
    weights = tv_schedule(passes, tv_weight, tv_weight_final)
    outside = None if support is None else frame.to_frame_array(~support.contains(solve_grid.world_coords()))
    if tv_weight_map is not None:
        tv_weight_map = np.asarray(tv_weight_map, dtype=np.float32)
        if tv_weight_map.shape != tuple(solve_grid.shape) or not (tv_weight_map >= 0).all():
            raise ValueError(f"tv_weight_map must be >= 0 with the solve grid's shape {tuple(solve_grid.shape)}, "
                             f"got shape {tv_weight_map.shape}")
        tv_weight_map = np.ascontiguousarray(frame.to_frame_array(tv_weight_map))
    if x0 is None:
        x = np.zeros(frame.shape, dtype=np.float32)  # frame array
    else:
        x0 = np.asarray(x0, dtype=np.float32)
        if x0.shape != tuple(solve_grid.shape):
            raise ValueError(f"x0 must have the solve grid's shape {tuple(solve_grid.shape)}, got {x0.shape}")
        x = np.ascontiguousarray(frame.to_frame_array(np.maximum(x0, 0.0)), dtype=np.float32)
    for k, w in enumerate(weights):
        f = _sart_filter(g, proj, _np_to_image(x, frame.spacing), 1, 1, lam, True)
        f.Update()
        x = tv_denoise(_image_to_np(f.GetOutput()), w, tv_iterations, weight_map=tv_weight_map)
        if outside is not None:
            x[outside] = 0.0
        if on_pass is not None:
            on_pass(k + 1, len(weights))
    return np.ascontiguousarray(frame.from_frame_array(x), dtype=np.float32)


def refine_inner(views: Sequence[View], projections: np.ndarray, solve_grid: Grid, solve_volume: np.ndarray,
                 fine_grid: Grid, passes: int, *, lam: float = 1.3, tv_weight: float = 0.003,
                 tv_weight_final: float | None = None, tv_iterations: int = 20,
                 threads: int | None = None,
                 on_pass: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-solve the part of a coarse solution that ``fine_grid`` covers at the fine grid's resolution, the rest
    of the solution fixed (a two-level SART).

    ``solve_volume`` (mu, 1/mm, on ``solve_grid``, e.g. from :func:`sart_tv`) is split in two: the exterior,
    its voxels whose centres lie outside ``fine_grid``'s box, stays as it is; the inside starts from the coarse
    solution resampled onto ``fine_grid``. Each pass is one SART sweep over the views (one view per update,
    positivity, then TV denoising with ``tv_weight``, or with weights decaying geometrically from it to
    ``tv_weight_final`` over the passes, as in :func:`sart_tv`) on the residual
    ``p - P_exterior - P_fine x``, where each ray's residual is divided by the ray's length through the
    *whole* solve grid's box, not through the fine box as a SART on the fine grid alone would: rays that
    graze the fine box carry residual of the exterior, and dividing it by their short chord made SART diverge
    at the box's edges and corners (measured on the full-body T12 scan: 10 dB). The fine box must lie inside
    the solve grid's box.

    Returns ``(fine volume on fine_grid, exterior on solve_grid with zeros inside the fine box)``, float32.
    ``on_pass(k, passes)`` is called after pass ``k`` (1-based), as in :func:`sart_tv`.
    Holds one fine-grid normaliser per view (25 views on a 148^3 box: 0.3 GB).
    Measured on the full-body T12 scan (25 views, 3D PSNR over the 128^3 ROI at 1 mm): the 24-pass TV-SART at
    2.75 mm scores 26.79 dB; from it, 6 passes at relaxation 1.3 on the ROI grown by 5 / 8 / 12 mm: 27.39 /
    27.58 / 27.66 dB (about 4.7 s per pass on 2 cores; ``benchmarks/refine_inner_sweep.py``), all with
    scikit-image's TV denoiser; with :func:`tv_denoise`, from 27.36 dB, 6 passes on the ROI grown by 10 mm:
    28.25 dB (TV 0.001 / 0.005 / 0.01: 28.09 / 28.28 / 28.19); from the coarse solve with twice the TV
    (27.27 dB), 12 passes with TV decaying from 0.02 to 0.004: 28.92 dB.
    """
    views, projections = _unpack_scan((views, projections))
    passes = int(passes)
    if passes < 0:
        raise ValueError(f"passes must be >= 0, got {passes}")
    solve_volume = np.asarray(solve_volume, dtype=np.float32)
    if solve_volume.shape != tuple(solve_grid.shape):
        raise VolumeError(f"solve volume shape {solve_volume.shape} does not match its grid {tuple(solve_grid.shape)}")
    if not solve_grid.contains(fine_grid.corners(), margin_vox=-1e-3).all():
        raise ValueError("the fine grid's box must lie inside the solve grid's box")
    weights = tv_schedule(passes, tv_weight, tv_weight_final)
    inside = fine_grid.contains(solve_grid.world_coords())
    exterior = np.where(inside, 0.0, solve_volume).astype(np.float32)
    x = np.maximum(resample_volume(solve_volume, solve_grid, fine_grid, order=1), 0).astype(np.float32)
    if passes == 0:
        return x, exterior
    # per view, fixed over the passes: the rays' lengths through the solve grid's box, the residual the exterior
    # leaves, and the backprojected ray weights on the fine grid
    lengths = np.maximum(forward_project(np.ones(solve_grid.shape, np.float32), solve_grid, views, threads),
                         float(fine_grid.spacing.min()))
    residuals0 = projections - forward_project(exterior, solve_grid, views, threads)
    norms = [np.maximum(back_project(np.ones_like(lengths[:1]), [v], fine_grid, threads), 1e-6) for v in views]
    for k, w in enumerate(weights):
        for i, v in enumerate(views):
            r = (residuals0[i:i + 1] - forward_project(x, fine_grid, [v], threads)) / lengths[i:i + 1]
            x = np.maximum(x + float(lam) * back_project(r, [v], fine_grid, threads) / norms[i], 0.0)
        x = tv_denoise(x, w, tv_iterations)
        if on_pass is not None:
            on_pass(k + 1, passes)
    return np.ascontiguousarray(x, dtype=np.float32), exterior


def _unpack_scan(scan_or_pair):
    if isinstance(scan_or_pair, tuple) and len(scan_or_pair) == 2:
        views, projections = scan_or_pair
    else:
        kind = getattr(scan_or_pair, "image_kind", "line_integral")
        if kind != "line_integral":
            raise ValueError(f"RTK reconstructs line integrals; this scan holds image_kind={kind!r}")
        views, projections = scan_or_pair.views, scan_or_pair.projections
    views = _check_views(views)
    projections = np.asarray(projections, dtype=np.float32)
    if projections.shape != (len(views), views[0].height, views[0].width):
        raise ValueError(f"projections have shape {projections.shape}, expected "
                         f"{(len(views), views[0].height, views[0].width)}")
    if not np.all(np.isfinite(projections)):
        raise ValueError("projections contain NaN or inf")
    return views, projections


def reconstruct(scan, grid: Grid, method: str = "cg", iterations: int | None = None, *,
                solve_grid: Grid | None = None, body_extent=None,
                lam: float | None = None, subset_size: int | None = None, positivity: bool = True,
                hann: float = DEFAULT_HANN, truncation_correction: float = 0.0, clip_negative: bool = False,
                threads: int | None = None) -> tuple[np.ndarray, dict]:
    """Reconstruct ``scan`` (a Scan, or a ``(views, projections)`` pair) onto ``grid`` with RTK.

    ``method`` is one of :data:`METHODS`; ``iterations`` defaults to :data:`DEFAULT_ITERATIONS`.
    FDK runs directly on ``grid`` (:func:`fdk`; ``hann``, ``truncation_correction``). The iterative methods
    solve on ``solve_grid`` (default: :func:`default_solve_grid` from ``body_extent`` and the projections) and
    the solution is resampled (trilinear) onto ``grid``. ``lam`` is SART/SIRT's relaxation (default
    :data:`DEFAULT_LAMBDA`),
    ``subset_size`` OS-SART's views per subset (default 1), ``positivity`` SART/SIRT's positivity constraint.

    Returns ``(volume [I, J, K] float32 on grid, info)``; ``info`` holds ``wall_s`` (the whole call, RTK
    geometry and resampling included), the solve grid and the parameters used.
    """
    method = str(method).lower()
    if method not in METHODS:
        raise ValueError(f"unknown RTK method {method!r}; choose one of {', '.join(METHODS)}")
    iterations = int(DEFAULT_ITERATIONS[method] if iterations is None else iterations)
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    views, projections = _unpack_scan(scan)
    set_threads(threads)
    t0 = time.perf_counter()
    info: dict = {"method": method, "iterations": iterations, "n_views": len(views)}
    if method == "fdk":
        vol, finfo = fdk(views, projections, grid, hann=hann, truncation_correction=truncation_correction)
        info.update(finfo)
        info.update({"hann": hann, "truncation_correction": truncation_correction,
                     "solve_shape": list(grid.shape), "solve_spacing_mm": float(np.max(grid.spacing))})
    else:
        if solve_grid is None:
            solve_grid = default_solve_grid(views, grid, body_extent=body_extent, projections=projections)
        if not _roi_is_covered(grid, solve_grid):
            info["warning"] = "the scoring grid is not inside the solve grid: the part outside reads 0"
        frame = canonical_frame(solve_grid)
        g = to_rtk_geometry(views, frame.T_frame_world)
        sol = _run_iterative(method, g, projections, frame, iterations, lam=lam, subset_size=subset_size,
                             positivity=positivity)
        info["solve_s"] = time.perf_counter() - t0
        vol = resample_volume(frame.from_frame_array(sol), solve_grid, grid)
        info.update({"solve_grid": solve_grid.to_dict(), "solve_shape": list(solve_grid.shape),
                     "solve_spacing_mm": float(np.max(solve_grid.spacing)), "positivity": bool(positivity)})
        if method in DEFAULT_LAMBDA:
            info["lambda"] = float(lam if lam is not None else DEFAULT_LAMBDA[method])
            info["subset_size"] = len(views) if method == "sirt" else int(subset_size or 1)
    if clip_negative:
        vol = np.maximum(vol, 0.0)
    info["clip_negative"] = bool(clip_negative)
    info["wall_s"] = time.perf_counter() - t0
    return vol.astype(np.float32, copy=False), info
