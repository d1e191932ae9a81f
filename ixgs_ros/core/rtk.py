"""RTK (itk-rtk, CPU) access for the whole product: views and grids in RTK's terms, the Joseph projectors and
one SART sweep.

Conventions (checked by ``test/test_rtk.py``):

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

All RTK filters are built fresh for every call (RTK filters may run in place on their inputs).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .geometry import GeometryError, View, check_view_list
from .volume import Grid, VolumeError

__all__ = ["RTKUnavailableError", "import_rtk", "preload", "set_threads", "CanonicalFrame", "canonical_frame",
           "RTKGeometry", "check_views", "check_projections", "to_rtk_geometry", "forward_project", "back_project", "sart_filter",
           "np_to_image", "image_to_np", "constant_image", "image_type"]

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


def image_type():
    itk, _ = import_rtk()
    return itk.Image[itk.F, 3]


def set_threads(n: int | None) -> None:
    """Set ITK's global number of worker threads (None leaves ITK's default: all cores)."""
    if n is None:
        return
    itk, _ = import_rtk()
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(n))


def np_to_image(arr_xyz: np.ndarray, spacing, origin=(0.0, 0.0, 0.0)):
    """numpy ``[X, Y, Z]`` (x fastest in ITK) -> a new itk float image with identity direction."""
    itk, _ = import_rtk()
    a = np.ascontiguousarray(np.asarray(arr_xyz, dtype=np.float32).transpose(2, 1, 0))
    img = itk.image_from_array(a)  # copies
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    return img


def image_to_np(img) -> np.ndarray:
    """itk image -> numpy ``[X, Y, Z]`` float32 copy."""
    itk, _ = import_rtk()
    return np.ascontiguousarray(itk.array_from_image(img).transpose(2, 1, 0)).astype(np.float32, copy=False)


def constant_image(size_xyz, spacing, origin=(0.0, 0.0, 0.0), value: float = 0.0):
    itk, rtk = import_rtk()
    src = rtk.ConstantImageSource[image_type()].New()
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
            return constant_image((W, H, self.n), (self.pitch[0], self.pitch[1], 1.0))
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


def check_views(views: Sequence[View]) -> list[View]:
    """``views`` when one RTK projection stack can hold them (one detector size, no skew)."""
    views = check_view_list(views)
    W, H = views[0].width, views[0].height
    for i, v in enumerate(views):
        if (v.width, v.height) != (W, H):
            raise GeometryError(f"views[{i}] has a {v.width}x{v.height} detector, views[0] {W}x{H}: an RTK "
                                "projection stack needs one detector size")
        if abs(v.K[0, 1]) > 1e-9 * v.K[0, 0]:
            raise GeometryError(f"views[{i}] has a skewed K (K[0][1] = {v.K[0, 1]}); RTK needs orthogonal "
                                "detector axes")
    return views


def check_projections(views: Sequence[View], projections) -> tuple[list[View], np.ndarray]:
    """``(views, projections as float32 [N, H, W])`` when they fit one RTK stack and are finite, else an error
    naming the problem."""
    views = check_views(views)
    projections = np.asarray(projections, dtype=np.float32)
    if projections.shape != (len(views), views[0].height, views[0].width):
        raise ValueError(f"projections have shape {projections.shape}, expected "
                         f"{(len(views), views[0].height, views[0].width)}")
    if not np.all(np.isfinite(projections)):
        raise ValueError("projections contain NaN or inf")
    return views, projections


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
    views = check_views(views)
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
    IT = image_type()
    volume = np.asarray(volume, dtype=np.float32)
    if volume.shape != tuple(grid.shape):
        raise VolumeError(f"volume shape {volume.shape} does not match grid shape {tuple(grid.shape)}")
    if pad:
        volume = np.pad(volume, int(pad))
        grid = grid.padded(pad)
    frame = canonical_frame(grid)
    vol_img = np_to_image(frame.to_frame_array(volume), frame.spacing)
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
    IT = image_type()
    pgrid = grid.padded(pad) if pad else grid
    frame = canonical_frame(pgrid)
    g = to_rtk_geometry(views, frame.T_frame_world)
    bp = rtk.JosephBackProjectionImageFilter[IT, IT].New()
    bp.SetInput(0, constant_image(frame.shape, frame.spacing))
    bp.SetInput(1, g.stack_image(projections))
    bp.SetGeometry(g.geometry)
    bp.Update()
    out = frame.from_frame_array(image_to_np(bp.GetOutput()))
    if pad:
        out = out[pad:-pad, pad:-pad, pad:-pad]
    return np.ascontiguousarray(out)


def sart_filter(g: RTKGeometry, proj, vol0, iterations: int, subset_size: int, lam: float, positivity: bool):
    """RTK's SART filter from ``vol0`` (``subset_size`` views per subset; ``g.n`` = SIRT), displaced-detector
    weighting off (it assumes a circular scan)."""
    _, rtk = import_rtk()
    IT = image_type()
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
