"""2D/3D registration of X-ray views against a volume: the maths of pose self-calibration.

A view's *correction* is a vector of :data:`NPARAMS` numbers relative to the pose it was given
(:func:`corrected_view`):

* ``omega`` (3, radians, world axes): a rotation of the view about its own source (the X-ray focal spot),
  ``R' = exp(omega) R``; a tracked C-arm's calibration errors are mostly of this kind (the marker-to-source
  transform tilts), and a rotation about the source moves every ray without moving the source;
* ``t`` (3, mm, world axes): a translation of the source, ``s' = s + t``;
* ``dc`` (2, pixels): a shift of the principal point, ``(cx, cy) += dc``.

These parameters are nearly degenerate (a small rotation about the source across the optical axis moves the
image almost exactly as a principal-point shift does, and a translation across it almost as well, apart from
parallax), so the principal point is optional and the solver is damped (Levenberg-Marquardt) with a weak prior.

:func:`register_view` fits one view's correction to its measured line integrals by Gauss-Newton /
Levenberg-Marquardt: the digitally reconstructed radiograph (DRR) of the volume is a sum of trilinear samples
along each pixel's ray, and its derivative with respect to the correction is the same sum of the volume's
gradient (sampled from a gradient volume in the same ``grid_sample`` call) times each sample's displacement
(:class:`DrrModel`). The *gauge* (a rigid motion and a scale of the whole scene leave every image unchanged) is
fixed by :func:`fix_gauge`: the corrected views are moved back, as a whole, by the similarity that best maps them
onto the views as given (in image space, at points of the ROI).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.geometry import View, rotvec_to_matrix
from ..core.volume import Grid

__all__ = ["NPARAMS", "rotvec_to_matrix", "matrix_to_rotvec", "corrected_view", "compose", "DrrModel",
           "RegistrationResult", "register_view", "similarity_matrix", "moved_view", "fit_similarity", "fix_gauge",
           "correction_sizes"]

#: omega (3, rad), t (3, mm), dc (2, px)
NPARAMS = 8


# ------------------------------------------------------------------------------------------ rotations
def matrix_to_rotvec(R) -> np.ndarray:
    """The rotation vector (radians) of a rotation matrix (angles below 180 degrees)."""
    R = np.asarray(R, dtype=np.float64)
    c = float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))
    th = math.acos(c)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if th < 1e-8:
        return 0.5 * v
    return th / (2.0 * math.sin(th)) * v


# ------------------------------------------------------------------------------------------ corrections
def corrected_view(view: View, p) -> View:
    """``view`` with the correction ``p`` (see the module docstring) applied; ``meta`` is kept."""
    p = np.asarray(p, dtype=np.float64).reshape(NPARAMS)
    T = np.array(view.T_world_source, dtype=np.float64)
    T[:3, :3] = rotvec_to_matrix(p[:3]) @ T[:3, :3]
    u, _, vt = np.linalg.svd(T[:3, :3])  # round-off only
    T[:3, :3] = u @ vt
    T[:3, 3] = T[:3, 3] + p[3:6]
    K = np.array(view.K, dtype=np.float64)
    K[0, 2] += p[6]
    K[1, 2] += p[7]
    return View(K, T, view.width, view.height, dict(view.meta))


def compose(p, dp) -> np.ndarray:
    """The correction of applying ``dp`` after ``p`` (both relative to the pose before them, see
    :func:`corrected_view`): ``corrected_view(corrected_view(v, p), dp) == corrected_view(v, compose(p, dp))``."""
    p, dp = np.asarray(p, dtype=np.float64), np.asarray(dp, dtype=np.float64)
    out = p + dp
    out[:3] = matrix_to_rotvec(rotvec_to_matrix(dp[:3]) @ rotvec_to_matrix(p[:3]))
    return out


def correction_sizes(view: View, p, point) -> dict:
    """How large a correction is: its rotation (degrees), source translation (mm), principal-point shift (px),
    and the displacement it causes at the world ``point`` (e.g. the ROI centre) as seen in the view, in
    detector pixels and in mm at that point's depth."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(point, dtype=np.float64).reshape(1, 3)
    uv0, z0 = view.project(q)
    uv1, _ = corrected_view(view, p).project(q)
    px = float(np.linalg.norm(uv1 - uv0))
    f = 0.5 * float(view.K[0, 0] + view.K[1, 1])
    return {"rotation_deg": float(np.degrees(np.linalg.norm(p[:3]))), "translation_mm": float(np.linalg.norm(p[3:6])),
            "principal_point_px": float(np.linalg.norm(p[6:8])), "shift_px": px,
            "shift_mm": px * float(z0[0]) / f}


# ------------------------------------------------------------------------------------------ the gauge
def similarity_matrix(x, center) -> np.ndarray:
    """4x4 world map ``y = s R (x - c) + c + t`` of ``x = [rotvec (3, rad), t (3, mm), log s]`` about ``center``."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(center, dtype=np.float64)
    M = np.eye(4)
    M[:3, :3] = math.exp(x[6]) * rotvec_to_matrix(x[:3])
    M[:3, 3] = c + x[3:6] - M[:3, :3] @ c
    return M


def moved_view(view: View, M) -> View:
    """``view`` carried along by the world similarity ``M`` (4x4, rotation times a scale): it sees ``M x`` where
    ``view`` saw ``x`` (the pinhole image of a scaled scene from a scaled distance is unchanged)."""
    M = np.asarray(M, dtype=np.float64)
    s = float(np.cbrt(np.linalg.det(M[:3, :3])))
    T = np.array(view.T_world_source, dtype=np.float64)
    T[:3, :3] = (M[:3, :3] / s) @ T[:3, :3]
    T[:3, 3] = M[:3, :3] @ T[:3, 3] + M[:3, 3]
    return View(view.K, T, view.width, view.height, dict(view.meta))


def fit_similarity(est, ref, points) -> np.ndarray:
    """``x`` (see :func:`similarity_matrix`, about the points' centroid) minimising the squared pixel distance
    between ``est_i``'s image of ``M x`` and ``ref_i``'s image of ``x`` over the views and world ``points``: the
    global motion (rigid plus scale) by which the ``est`` views as a whole differ from the ``ref`` views."""
    from scipy.optimize import least_squares

    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    center = points.mean(0)
    ref_uv = [v.project(points)[0] for v in ref]
    est = list(est)

    def residuals(x):
        y = (np.c_[points, np.ones(len(points))] @ similarity_matrix(x, center).T)[:, :3]
        return np.concatenate([(v.project(y)[0] - uv).ravel() for v, uv in zip(est, ref_uv)])

    return least_squares(residuals, np.zeros(7), method="lm").x


def fix_gauge(corrections, views, points, trusted=None) -> np.ndarray:
    """``corrections`` ``[N, NPARAMS]`` of ``views`` (the poses as given) with the global motion removed that
    the ``trusted`` corrected views (all by default; e.g. without the flagged ones) make as a whole: a rigid
    motion and a scaling of the whole scene change no image, so the registrations leave them free; here the
    corrected views are moved back by the similarity that best maps them, in image space at the world
    ``points`` (e.g. the ROI), onto the views as given, and the volume stays where the given poses put it."""
    x = np.asarray(corrections, dtype=np.float64).reshape(len(views), NPARAMS)
    trusted = np.ones(len(views), bool) if trusted is None else np.asarray(trusted, bool)
    if trusted.sum() < 2:
        return x.copy()
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cur = [corrected_view(v, p) for v, p in zip(views, x)]
    g = fit_similarity([cur[i] for i in np.nonzero(trusted)[0]], [views[i] for i in np.nonzero(trusted)[0]], points)
    Minv = np.linalg.inv(similarity_matrix(g, points.mean(0)))
    out = x.copy()
    for i, (v, c) in enumerate(zip(views, cur)):
        m = moved_view(c, Minv)
        out[i, :3] = matrix_to_rotvec(m.R @ v.R.T)
        out[i, 3:6] = m.source - v.source
    return out


# ------------------------------------------------------------------------------------------ DRR model
class DrrModel:
    """A volume on a world grid and its gradient, sampled along the rays of pinhole views: DRRs and their
    derivatives with respect to a view's correction (:func:`register_view`).

    ``volume`` (mu, 1/mm, ``grid.shape``) is the trilinear interpolant of its voxels, zero beyond one voxel of
    zeros around them. ``step`` is the sample spacing along the rays in voxels (along the optical axis; the
    rays are sampled between the depths of the box holding the volume's material)."""

    def __init__(self, volume: np.ndarray, grid: Grid, *, step: float = 1.0, device="cpu"):
        vol = np.asarray(volume, dtype=np.float32)
        if vol.shape != tuple(grid.shape):
            raise ValueError(f"volume shape {vol.shape} does not match its grid {tuple(grid.shape)}")
        self.grid, self.device = grid, torch.device(device)
        v = np.pad(vol, 1)
        gi = np.stack(np.gradient(v), axis=0)                       # d/d index, [3, I, J, K]
        Ainv = np.linalg.inv(np.asarray(grid.affine, dtype=np.float64)[:3, :3])
        gw = np.einsum("ai,a...->i...", Ainv, gi)                    # world gradient: A^-T grad_index
        self.field = torch.from_numpy(np.concatenate([v[None], gw], 0).astype(np.float32))[None].to(self.device)
        self.padded_shape = np.array(v.shape)
        # world -> padded index coordinates
        A = np.asarray(grid.affine, dtype=np.float64)
        self._Ainv = np.linalg.inv(A)
        self.h = float(step) * float(np.min(grid.spacing))
        # the rays are sampled only across the box of the material (voxels above 1 % of the maximum)
        nz = np.argwhere(v > 0.01 * max(float(v.max()), 1e-30))
        lo, hi = (nz.min(0), nz.max(0)) if len(nz) else (np.zeros(3), self.padded_shape - 1.0)
        c = np.array([[x, y, z] for x in (lo[0] - 1, hi[0] + 1) for y in (lo[1] - 1, hi[1] + 1)
                      for z in (lo[2] - 1, hi[2] + 1)], dtype=np.float64) - 1.0  # padded -> grid index
        self._material_corners = grid.index_to_world(c)

    def _depth_range(self, view: View) -> tuple[float, float]:
        z = view.world_to_camera(self._material_corners)[:, 2]
        return max(float(z.min()), 1e-3), max(float(z.max()), 2e-3)

    def sample(self, view: View, with_jacobian: bool = True):
        """``(drr [H, W], J [H, W, NPARAMS] or None)`` of ``view`` (its full detector): the line integrals along
        its pixel rays, and their derivatives with respect to a correction applied to ``view`` (at zero)."""
        dev, f32 = self.device, torch.float32
        z0, z1 = self._depth_range(view)
        K, R, s = view.K, view.R, view.source
        H, W = view.height, view.width
        vv, uu = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
        dw = np.stack([uu, vv, np.ones_like(uu)], -1) @ (R @ np.linalg.inv(K)).T  # world, per unit camera depth
        norm = np.linalg.norm(dw, axis=-1)
        # samples at equal camera-depth steps z (the step along each ray is dz * |dw|); a sample is s + z dw
        n = max(2, int(math.ceil((z1 - z0) * float(norm.max()) / self.h)))
        dz = (z1 - z0) / n
        zs = z0 + dz * (np.arange(n) + 0.5)
        # grid_sample coordinates are affine in z: c = c_source + z c_dir, (x, y, z) = (k, j, i), align_corners
        A = self._Ainv
        sc = 2.0 / (self.padded_shape - 1.0)
        c_src = ((A[:3, :3] @ s + A[:3, 3] + 1.0) * sc - 1.0)[::-1]
        c_dir = ((dw @ A[:3, :3].T) * sc)[..., ::-1]
        zt = torch.as_tensor(zs, dtype=f32, device=dev)
        g = (torch.as_tensor(c_src.copy(), dtype=f32, device=dev)
             + zt[None, None, :, None] * torch.as_tensor(c_dir.copy(), dtype=f32, device=dev)[:, :, None, :])
        fld = self.field if with_jacobian else self.field[:, :1]
        val = F.grid_sample(fld, g.reshape(1, 1, H * W, n, 3), mode="bilinear", padding_mode="zeros",
                            align_corners=True)[0, :, 0]             # [C, H*W, n]
        wz = torch.stack([torch.ones_like(zt), zt], -1)              # sums over the samples of f and z f
        sums = (val @ wz).double().cpu().numpy().reshape(-1, H, W, 2)
        dl = dz * norm                                               # [H, W] step length along each ray (mm)
        drr = (sums[0, ..., 0] * dl).astype(np.float32)
        if not with_jacobian:
            return drr, None
        g0 = np.moveaxis(sums[1:, ..., 0], 0, -1) * dl[..., None]   # sum_s g dl        [H, W, 3]
        g1 = np.moveaxis(sums[1:, ..., 1], 0, -1) * dl[..., None]   # sum_s z g dl
        J = np.empty((H, W, NPARAMS))
        J[..., 0:3] = np.cross(dw, g1)        # d/d omega: sum (r x g), r = z dw
        J[..., 3:6] = g0                      # d/d t
        # d/d cx: each sample moves by -z / fx along the camera x axis (world R[:, 0]); likewise cy
        J[..., 6] = -(g1 @ R[:, 0]) / K[0, 0]
        J[..., 7] = -(g1 @ R[:, 1]) / K[1, 1]
        return drr, J


# ------------------------------------------------------------------------------------------ registration
@dataclass
class RegistrationResult:
    correction: np.ndarray     # [NPARAMS], relative to the view passed in
    cost_before: float         # robust mean squared residual (line-integral units squared)
    cost_after: float
    iterations: int
    ncc: float                 # normalised cross-correlation of DRR and image after registration


def _robust_weights(r: np.ndarray, c: float = 2.0) -> np.ndarray:
    """Huber weights at ``c`` robust standard deviations (from the median absolute deviation, at least a quarter
    of the RMS: images with mostly air would otherwise have a scale of zero)."""
    s = max(1.4826 * float(np.median(np.abs(r))), 0.25 * float(np.sqrt(np.mean(r * r)))) + 1e-12
    a = np.abs(r) / (c * s)
    return np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-12))


def register_view(model: DrrModel, view: View, image, *, iterations: int = 8, free=None,
                  prior=None, offset=None, mask=None) -> RegistrationResult:
    """The correction (see the module docstring) that best aligns ``model``'s DRR of ``view`` with ``image``
    (line integrals on ``view``'s detector): Levenberg-Marquardt on the Huber-weighted squared residual
    (divided by its value at the start), the parameters scaled by their Jacobian columns. ``free``
    (``[NPARAMS]`` bool) selects the parameters that move (default: all but the principal point); ``prior``
    (``[NPARAMS]``, >= 0, e.g. ``1 / sigma**2``) adds ``sum(prior * (offset + p)**2)``: a weak pull toward the
    pose as given, which lies ``offset`` (``[NPARAMS]``, default 0) before ``view``, in the directions the data
    leave open; ``mask`` (``[H, W]`` bool) selects the pixels used."""
    img = np.asarray(image, dtype=np.float64)
    free = np.array([True] * 6 + [False] * 2) if free is None else np.asarray(free, bool)
    prior = np.zeros(NPARAMS) if prior is None else np.asarray(prior, np.float64)
    off = np.zeros(NPARAMS) if offset is None else np.asarray(offset, np.float64)
    m = np.ones(img.shape, bool) if mask is None else np.asarray(mask, bool)
    fi = np.nonzero(free)[0]
    p = np.zeros(NPARAMS)
    drr, J = model.sample(view)
    npix = max(int(m.sum()), 1)
    r0 = (drr - img)[m]
    scale = max(float((_robust_weights(r0) * r0 ** 2).sum()) / npix, 1e-20)

    def cost_of(drr_, p_):
        r_ = (drr_ - img)[m]
        w_ = _robust_weights(r_)
        return float((w_ * r_ ** 2).sum() / npix / scale + (prior * (off + p_) ** 2).sum()), r_, w_

    cost, r, w = cost_of(drr, p)
    cost0 = cost
    lam = 1e-3
    it = 0
    for it in range(1, int(iterations) + 1):
        prev = cost
        Jm = J[m][:, fi]
        JW = Jm * w[:, None]
        A = JW.T @ Jm / npix / scale + np.diag(prior[fi])
        g = JW.T @ r / npix / scale + prior[fi] * (off[fi] + p[fi])
        d = np.sqrt(np.maximum(np.diag(A), 1e-30))
        As = A / np.outer(d, d)
        improved = False
        for _ in range(6):
            step = -np.linalg.solve(As + lam * np.eye(len(fi)), g / d) / d
            dp = np.zeros(NPARAMS)
            dp[fi] = step
            p_try = compose(p, dp)
            drr_t, J_t = model.sample(corrected_view(view, p_try))
            cost_t, r_t, w_t = cost_of(drr_t, p_try)
            if cost_t < cost:
                # the derivatives are now those at the corrected view: the next step is relative to it
                p, drr, J, cost, r, w = p_try, drr_t, J_t, cost_t, r_t, w_t
                lam = max(lam / 3.0, 1e-6)
                improved = True
                break
            lam *= 4.0
        if not improved or prev - cost < 1e-4 * prev:
            break
    a, b = drr[m] - drr[m].mean(), img[m] - img[m].mean()
    ncc = float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-30))
    return RegistrationResult(p, cost0 * scale, cost * scale, it, ncc)
