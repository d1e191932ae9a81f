"""Training and held-out views inside the engine: the checks a view must pass, and its tensors in the
normalised frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.geometry import View
from ..core.scan import MAX_LINE_INTEGRAL
from ..core.volume import Grid
from .config import EngineError
from .model import NormalizedFrame

__all__ = ["ViewData", "check_view", "check_mask", "prepare_view"]

#: An image whose minimum is below this fraction of minus its maximum holds raw intensities, not line integrals.
NEGATIVE_TOLERANCE = 0.05


@dataclass
class ViewData:
    view: View                 # world frame
    image: torch.Tensor        # normalised line integrals [H, W]
    K: torch.Tensor
    T: torch.Tensor            # pose in the normalised frame
    holdout: bool = False
    background: torch.Tensor | None = None  # fixed line integrals of the material outside the ROI (normalised)
    mask: torch.Tensor | None = None        # per-pixel validity [H, W] (float 0/1), None = every pixel valid


def check_view(view: View, image, grid: Grid) -> np.ndarray:
    """``image`` as float32 [H, W] when (view, image) can be reconstructed on ``grid``, else :class:`EngineError`
    naming the problem: not a View, wrong shape, NaN/inf, raw intensities, or a viewing pyramid that misses
    the grid."""
    if not isinstance(view, View):
        raise EngineError("view must be an ixgs_ros.core.geometry.View")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise EngineError(f"image must be 2D [H, W], got shape {img.shape}")
    if img.shape != (view.height, view.width):
        raise EngineError(f"image shape {img.shape} does not match the view's detector "
                          f"(height={view.height}, width={view.width})")
    if not np.all(np.isfinite(img)):
        raise EngineError("image contains NaN or inf")
    if not np.any(img):
        raise EngineError("image is blank (all zero): no attenuation was measured (a shot without exposure?)")
    if img.max() > MAX_LINE_INTEGRAL:
        raise EngineError(f"image has line integrals up to {img.max():.4g}, above {MAX_LINE_INTEGRAL:g}: not "
                          "physical (raw detector counts labelled as line integrals?)")
    if img.min() < -NEGATIVE_TOLERANCE * max(float(img.max()), 1e-6):
        raise EngineError(f"image has strongly negative values (min {img.min():.3g}): expected line "
                          "integrals (-log(I/I0)), not raw intensities")
    lo, hi = grid.bounds()
    normals, offsets = view.frustum_planes()
    # plus the plane through the source facing the detector (the pyramid lies in front of it): the grid's
    # 8 corners all outside one of these planes means no ray of the view crosses the grid
    normals = np.vstack([normals, view.principal_axis])
    offsets = np.append(offsets, -float(view.principal_axis @ view.source))
    if ((grid.corners() @ normals.T + offsets) < 0).all(axis=0).any():
        raise EngineError(
            f"the view does not see the reconstruction grid (box {np.round(lo, 1).tolist()} .. "
            f"{np.round(hi, 1).tolist()} mm lies outside its viewing pyramid from the source at "
            f"{np.round(view.source, 1).tolist()} mm): check T_world_source (camera-to-world, mm) and K")
    return img


def check_mask(mask, image_shape) -> np.ndarray | None:
    """A validity mask (0/1 or bool ``[H, W]`` of the image's shape, 1 = the pixel carries information) as bool,
    None for None; :class:`EngineError` naming the problem otherwise (also when no pixel is valid)."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != tuple(image_shape):
        raise EngineError(f"mask shape {m.shape} does not match the image {tuple(image_shape)}")
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.number) or not np.isin(m, (0, 1)).all():
            raise EngineError("mask must hold only 0 and 1 (1 = valid pixel)")
        m = m.astype(bool)
    if not m.any():
        raise EngineError("mask marks every pixel invalid: the view carries no information")
    return m


def view_tensors(view: View, frame: NormalizedFrame, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, T)`` of ``view`` as float32 tensors, the pose in the normalised frame."""
    dt = torch.float32
    return (torch.tensor(view.K, dtype=dt, device=device),
            torch.tensor(frame.pose_to_normalized(view.T_world_source), dtype=dt, device=device))


def prepare_view(view: View, image: torch.Tensor, holdout: bool, frame: NormalizedFrame, device,
                 mask: torch.Tensor | None = None) -> ViewData:
    """The engine's record of a checked view: image in normalised units, K and pose as tensors, the validity
    mask (if any) as a float 0/1 tensor."""
    img = (image / frame.projection_scale).to(torch.float32).to(device)
    K, T = view_tensors(view, frame, device)
    m = None if mask is None else torch.as_tensor(mask).to(device=device, dtype=torch.float32)
    return ViewData(view, img, K, T, holdout, mask=m)
