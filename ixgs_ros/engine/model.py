"""The 3D Gaussian model of R²-Gaussian: positions, densities, scales and rotations.

Parameters are stored unconstrained and mapped through activations:

* density ``rho = softplus(raw_density)`` (>= 0),
* scales ``log s = log s_min + (log s_max - log s_min) * sigmoid(raw_scales)`` (bounded, per axis; behaves
  like the usual log-scale parameter in the middle of the range),
* rotations ``q = normalize(raw_quats)`` (w, x, y, z),
* positions are free.

Each Gaussian also carries a ``group`` id (0 = fine, region of interest; 1 = coarse context that explains the
tissue outside the ROI crossed by full-body rays). All quantities live in the engine's *normalised frame*
(see :class:`NormalizedFrame`): positions in units of the ROI half-size, densities in units of ``mu_ref``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.volume import Grid

__all__ = ["NormalizedFrame", "GaussianModel", "inverse_softplus", "inverse_sigmoid"]


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp_min(1e-12)
    return x + torch.log(-torch.expm1(-x))


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(1e-6, 1 - 1e-6)
    return torch.log(x / (1 - x))


@dataclass(frozen=True)
class NormalizedFrame:
    """World mm <-> normalised coordinates: ``x_n = (x - center) / scale``; ``mu_n = mu / mu_ref``.

    A line integral in world units equals ``mu_ref * scale`` times the same integral in normalised units.
    """

    center: tuple[float, float, float]
    scale: float
    mu_ref: float

    @property
    def projection_scale(self) -> float:
        return self.mu_ref * self.scale

    def to_normalized_points(self, x):
        return (np.asarray(x, dtype=np.float64) - np.asarray(self.center)) / self.scale

    def to_world_points(self, xn):
        return np.asarray(xn, dtype=np.float64) * self.scale + np.asarray(self.center)

    def pose_to_normalized(self, T_world_source) -> np.ndarray:
        T = np.array(T_world_source, dtype=np.float64)
        T[:3, 3] = (T[:3, 3] - np.asarray(self.center)) / self.scale
        return T

    def affine_to_normalized(self, affine) -> np.ndarray:
        N = np.eye(4)
        N[:3, :3] /= self.scale
        N[:3, 3] = -np.asarray(self.center) / self.scale
        return N @ np.asarray(affine, dtype=np.float64)

    def grid_to_normalized(self, grid: Grid) -> Grid:
        """The same voxels as ``grid`` with its affine mapping to the normalised frame."""
        return Grid(grid.shape, self.affine_to_normalized(grid.affine))

    def to_dict(self) -> dict:
        return {"center": list(map(float, self.center)), "scale": float(self.scale), "mu_ref": float(self.mu_ref)}

    @classmethod
    def from_dict(cls, d) -> "NormalizedFrame":
        return cls(tuple(float(c) for c in d["center"]), float(d["scale"]), float(d["mu_ref"]))


class GaussianModel:
    """A set of 3D Gaussians with unconstrained, optimisable parameters."""

    PARAMS = ("means", "raw_scales", "raw_quats", "raw_density")

    def __init__(self, means, scales, density, quats=None, group=None, *, scale_min=1e-3, scale_max=1.0,
                 dtype=torch.float32, device="cpu"):
        means = torch.as_tensor(means, dtype=dtype, device=device)
        n = means.shape[0]
        if means.ndim != 2 or means.shape[1] != 3:
            raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
        if not 0 < scale_min < scale_max:
            raise ValueError(f"need 0 < scale_min < scale_max, got {scale_min}, {scale_max}")
        self.scale_min, self.scale_max = float(scale_min), float(scale_max)
        scales = torch.as_tensor(scales, dtype=dtype, device=device).expand(n, 3)
        density = torch.as_tensor(density, dtype=dtype, device=device).expand(n)
        if quats is None:
            quats = torch.zeros(n, 4, dtype=dtype, device=device)
            quats[:, 0] = 1
        quats = torch.as_tensor(quats, dtype=dtype, device=device)
        self.means = means.clone().requires_grad_(True)
        lo, hi = np.log(self.scale_min), np.log(self.scale_max)
        frac = (torch.log(scales.clamp(self.scale_min, self.scale_max)) - lo) / (hi - lo)
        self.raw_scales = inverse_sigmoid(frac).clone().requires_grad_(True)
        self.raw_quats = quats.clone().requires_grad_(True)
        self.raw_density = inverse_softplus(density).clone().requires_grad_(True)
        g = torch.zeros(n, dtype=torch.uint8) if group is None else torch.as_tensor(group, dtype=torch.uint8)
        self.group = g.to(device).expand(n).clone()

    # ----------------------------------------------------------------- activations
    @property
    def scales(self) -> torch.Tensor:
        lo, hi = np.log(self.scale_min), np.log(self.scale_max)
        return torch.exp(lo + (hi - lo) * torch.sigmoid(self.raw_scales))

    @property
    def quats(self) -> torch.Tensor:
        return F.normalize(self.raw_quats, dim=-1)

    @property
    def density(self) -> torch.Tensor:
        return F.softplus(self.raw_density)

    def __len__(self) -> int:
        return self.means.shape[0]

    def parameters(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.PARAMS}

    def set_parameters(self, params: dict[str, torch.Tensor], group: torch.Tensor):
        for k in self.PARAMS:
            setattr(self, k, params[k].detach().clone().requires_grad_(True))
        self.group = group.clone()

    def activated(self):
        """``(means, scales, quats, density)`` as the renderer and voxelizer take them."""
        return self.means, self.scales, self.quats, self.density

    # ----------------------------------------------------------------- persistence
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {k: getattr(self, k).detach().cpu().contiguous() for k in self.PARAMS}
        out["group"] = self.group.cpu().contiguous()
        return out

    def metadata(self) -> dict:
        return {"scale_min": self.scale_min, "scale_max": self.scale_max}

    @classmethod
    def from_state(cls, tensors: dict, meta: dict, device="cpu") -> "GaussianModel":
        m = cls.__new__(cls)
        m.scale_min, m.scale_max = float(meta["scale_min"]), float(meta["scale_max"])
        for k in cls.PARAMS:
            setattr(m, k, tensors[k].to(device).clone().requires_grad_(True))
        m.group = tensors["group"].to(device).clone()
        return m

    def save(self, path, frame: NormalizedFrame | None = None, extra: dict | None = None) -> Path:
        """Write a safetensors file: the raw parameters plus world-unit tensors for other tools
        (``world_means`` mm, ``world_scales`` mm, ``quats`` (w, x, y, z), ``world_density`` mu in 1/mm)."""
        from safetensors.torch import save_file

        tensors = self.state_tensors()
        meta = {"format": "ixgs-gaussians", "version": "1", "model": json.dumps(self.metadata())}
        if frame is not None:
            with torch.no_grad():
                c = torch.tensor(frame.center, dtype=self.means.dtype)
                tensors["world_means"] = (self.means.detach().cpu() * frame.scale + c).contiguous()
                tensors["world_scales"] = (self.scales.detach().cpu() * frame.scale).contiguous()
                tensors["quats"] = self.quats.detach().cpu().contiguous()
                tensors["world_density"] = (self.density.detach().cpu() * frame.mu_ref).contiguous()
            meta["frame"] = json.dumps(frame.to_dict())
        if extra:
            meta["extra"] = json.dumps(extra)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path, device="cpu") -> tuple["GaussianModel", NormalizedFrame | None]:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Gaussian file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") != "ixgs-gaussians":
                raise ValueError(f"{path}: not an ixgs-gaussians safetensors file (metadata format="
                                 f"{meta.get('format')!r})")
            tensors = load_file(str(path))
            model = cls.from_state(tensors, json.loads(meta["model"]), device=device)
            frame = NormalizedFrame.from_dict(json.loads(meta["frame"])) if "frame" in meta else None
        except ValueError:
            raise
        except Exception as exc:  # safetensors' errors on truncated or corrupt files, missing tensors or keys
            raise ValueError(f"{path}: not a readable Gaussian file ({type(exc).__name__}: {exc})") from None
        return model, frame
