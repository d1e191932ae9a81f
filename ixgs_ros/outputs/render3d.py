"""3D renderings of a volume without OpenGL: a small orthographic ray marcher (torch, CPU or CUDA).

* maximum-intensity projection (MIP),
* DRR-style render: the line integral of mu along each ray (what an X-ray measures, before exp(-.)),
* shaded iso-surface: the first crossing of a threshold along each ray, refined linearly between samples and
  shaded (Blinn-Phong headlight) with the normal from the volume gradient.

Viewpoints are given by azimuth / elevation (degrees) around the volume centre in the RAS+ world:
azimuth 0, elevation 0 looks from the patient's front (anterior view: patient Right on the image left,
Superior at the top); azimuth +90 looks from the patient's Left; elevation +90 looks down from above.

Pixels and ray samples sit on a lattice anchored at the centre of voxel (0, 0, 0), so for a view along a grid
axis with ``pixel_mm`` equal to the spacing, rays run through voxel centres and the MIP equals the maximum
over that array axis exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.volume import Grid, VolumeError

__all__ = [
    "OrthoCamera",
    "view_axes",
    "viewpoint_name",
    "make_camera",
    "render_mip",
    "render_drr",
    "render_iso",
    "save_render_png",
    "write_renders",
]

_EPS = 1e-6


def view_axes(azimuth: float, elevation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(direction, right, down)`` world unit vectors of a camera at (azimuth, elevation) degrees.

    The eye sits at ``Rz(az) @ (0, cos el, sin el)`` from the centre (az 0: anterior, +90: patient left);
    ``direction`` points from the eye to the centre, ``down`` is minus the elevation tangent (so Superior is
    up for moderate elevations) and ``right = down x direction`` (screen x, y, z = right, down, direction).
    """
    a, e = np.deg2rad(azimuth), np.deg2rad(elevation)
    eye = np.array([-np.sin(a) * np.cos(e), np.cos(a) * np.cos(e), np.sin(e)])
    up = np.array([np.sin(a) * np.sin(e), -np.cos(a) * np.sin(e), np.cos(e)])
    d = -eye
    down = -up
    right = np.cross(down, d)
    return d, right, down


def viewpoint_name(azimuth: float, elevation: float) -> str:
    """``"anterior"``, ``"left"``, ``"posterior"``, ``"right"``, ``"superior"``, ``"inferior"`` for the
    canonical views, else ``"az45_el20"``."""
    if abs(elevation - 90) < 1e-6:
        return "superior"
    if abs(elevation + 90) < 1e-6:
        return "inferior"
    if abs(elevation) < 1e-6:
        names = {0: "anterior", 90: "left", 180: "posterior", 270: "right"}
        a = azimuth % 360
        for k, v in names.items():
            if abs(a - k) < 1e-6:
                return v
    fmt = lambda x: f"{x:g}".replace("-", "m").replace(".", "p")  # noqa: E731
    return f"az{fmt(azimuth)}_el{fmt(elevation)}"


@dataclass(frozen=True)
class OrthoCamera:
    """Orthographic camera: pixel ``(r, c)``, sample ``k`` is at
    ``origin + (c*right + r*down) * pixel_mm + (t0 + k*step) * direction``."""

    name: str
    azimuth: float
    elevation: float
    direction: np.ndarray
    right: np.ndarray
    down: np.ndarray
    origin: np.ndarray
    pixel_mm: float
    shape: tuple[int, int]
    t0: float
    step: float
    n_steps: int

    def pixel_to_world(self, rows, cols, t=0.0) -> np.ndarray:
        rows, cols, t = (np.asarray(x, dtype=np.float64) for x in (rows, cols, t))
        return (self.origin + (cols[..., None] * self.right + rows[..., None] * self.down) * self.pixel_mm
                + t[..., None] * self.direction)

    def world_to_pixel(self, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(row, col, t)`` of world points (``t``: mm along the viewing direction from the origin plane)."""
        d = np.asarray(points, dtype=np.float64) - self.origin
        return d @ self.down / self.pixel_mm, d @ self.right / self.pixel_mm, d @ self.direction


def make_camera(grid: Grid, azimuth: float = 0.0, elevation: float = 0.0, *, pixel_mm: float | None = None,
                max_size: int = 512, step_mm: float | None = None, name: str | None = None) -> OrthoCamera:
    """A camera covering the whole grid from (azimuth, elevation). ``pixel_mm`` defaults to the finest voxel
    spacing (coarsened to at most ``max_size`` pixels a side); ``step_mm`` (ray sampling) likewise."""
    d, right, down = view_axes(azimuth, elevation)
    centre = grid.center
    rel = grid.corners() - centre
    anchor = grid.index_to_world(np.zeros(3)) - centre
    u, v, t = rel @ right, rel @ down, rel @ d
    u0, v0, t0 = anchor @ right, anchor @ down, anchor @ d
    if pixel_mm is None:
        pixel_mm = float(grid.spacing.min())
    pixel_mm = float(max(pixel_mm, (u.max() - u.min()) / max_size, (v.max() - v.min()) / max_size))
    step = float(step_mm if step_mm is not None else grid.spacing.min())
    if pixel_mm <= 0 or step <= 0:
        raise VolumeError("pixel size and ray step must be positive")
    c_lo = int(np.ceil((u.min() - u0) / pixel_mm - _EPS))
    c_hi = int(np.floor((u.max() - u0) / pixel_mm + _EPS))
    r_lo = int(np.ceil((v.min() - v0) / pixel_mm - _EPS))
    r_hi = int(np.floor((v.max() - v0) / pixel_mm + _EPS))
    k_lo = int(np.ceil((t.min() - t0) / step - _EPS))
    k_hi = int(np.floor((t.max() - t0) / step + _EPS))
    origin = centre + (u0 + c_lo * pixel_mm) * right + (v0 + r_lo * pixel_mm) * down
    return OrthoCamera(name or viewpoint_name(azimuth, elevation), float(azimuth), float(elevation), d, right,
                       down, origin, pixel_mm, (r_hi - r_lo + 1, c_hi - c_lo + 1), t0 + k_lo * step, step,
                       k_hi - k_lo + 1)


# --------------------------------------------------------------------------------------------- marching
def _device(device):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _Sampler:
    """Trilinear sampling of a volume at voxel-index coordinates with torch.grid_sample (zeros outside)."""

    def __init__(self, volume, grid: Grid, device=None):
        import torch

        self.torch = torch
        self.device = _device(device)
        if isinstance(volume, torch.Tensor):
            vol = volume.detach().to(self.device, torch.float32)
        else:
            vol = torch.as_tensor(np.ascontiguousarray(volume, dtype=np.float32), device=self.device)
        if tuple(vol.shape) != grid.shape:
            raise VolumeError(f"volume shape {tuple(vol.shape)} does not match grid shape {grid.shape}")
        self.vol = vol[None, None]
        self.grid = grid
        self.Ainv = np.linalg.inv(grid.affine)
        size = np.array(grid.shape, dtype=np.float64)
        # normalised coordinate (align_corners=True): x_n = 2 * i / (n - 1) - 1, grid order (k, j, i)
        self.scale = torch.as_tensor(2.0 / np.maximum(size - 1, 1), dtype=torch.float32, device=self.device)

    def index_vectors(self, cam: OrthoCamera):
        """Index-space position of pixel (0, 0) at t = 0 and the index steps per column, row and t-step."""
        A = self.Ainv[:3, :3]
        o = A @ cam.origin + self.Ainv[:3, 3]
        return o, A @ (cam.right * cam.pixel_mm), A @ (cam.down * cam.pixel_mm), A @ (cam.direction * cam.step)

    def at_index(self, ijk):
        """Values at index coordinates ``ijk`` (torch, [..., 3])."""
        torch = self.torch
        g = (ijk * self.scale - 1.0).flip(-1)  # (i, j, k) -> (x=k, y=j, z=i)
        shp = g.shape[:-1]
        out = torch.nn.functional.grid_sample(self.vol, g.reshape(1, 1, 1, -1, 3), mode="bilinear",
                                              padding_mode="zeros", align_corners=True)
        return out.reshape(shp)

    def at_world(self, xyz):
        A = self.torch.as_tensor(self.Ainv, dtype=self.torch.float32, device=self.device)
        return self.at_index(xyz @ A[:3, :3].T + A[:3, 3])


def _sampler(volume, grid: Grid, device) -> _Sampler:
    return volume if isinstance(volume, _Sampler) else _Sampler(volume, grid, device)


def _march(sampler: _Sampler, cam: OrthoCamera, mode: str, level: float = 0.0, max_samples: int = 2 ** 23):
    torch = sampler.torch
    dev = sampler.device
    H, W = cam.shape
    o, dc, dr, dt = (torch.as_tensor(x, dtype=torch.float32, device=dev) for x in sampler.index_vectors(cam))
    rows = torch.arange(H, dtype=torch.float32, device=dev)
    cols = torch.arange(W, dtype=torch.float32, device=dev)
    base = o + rows[:, None, None] * dr + cols[None, :, None] * dc  # [H, W, 3] at t = 0
    base = base + (cam.t0 / cam.step) * dt
    chunk = max(1, min(cam.n_steps, max_samples // max(H * W, 1)))
    acc = torch.full((H, W), -torch.inf if mode == "mip" else 0.0, device=dev)
    hit_k = torch.full((H, W), -1, dtype=torch.long, device=dev)
    prev_last = torch.zeros((H, W), device=dev)
    v_prev = torch.zeros((H, W), device=dev)
    v_hit = torch.zeros((H, W), device=dev)
    for k0 in range(0, cam.n_steps, chunk):
        n = min(chunk, cam.n_steps - k0)
        ks = torch.arange(k0, k0 + n, dtype=torch.float32, device=dev)
        vals = sampler.at_index(base[None] + ks[:, None, None, None] * dt)  # [n, H, W]
        if mode == "mip":
            acc = torch.maximum(acc, vals.max(0).values)
        elif mode == "sum":
            acc = acc + vals.sum(0)
        else:
            above = vals >= level
            first = above.to(torch.uint8).argmax(0)
            new = above.any(0) & (hit_k < 0)
            if new.any():
                vh = vals.gather(0, first[None])[0]
                prev_in = vals.gather(0, (first - 1).clamp(min=0)[None])[0]
                vp = torch.where(first > 0, prev_in, prev_last)
                hit_k = torch.where(new, first + k0, hit_k)
                v_hit = torch.where(new, vh, v_hit)
                v_prev = torch.where(new, vp, v_prev)
            prev_last = vals[-1]
            if bool((hit_k >= 0).all()):
                break
    if mode == "mip":
        return acc
    if mode == "sum":
        return acc * cam.step
    return hit_k, v_prev, v_hit


def render_mip(volume, grid: Grid, camera: OrthoCamera, *, device=None) -> np.ndarray:
    """Maximum intensity along each ray, ``[H, W]`` float32 (0 where rays miss the volume)."""
    return _march(_sampler(volume, grid, device), camera, "mip").cpu().numpy().astype(np.float32)


def render_drr(volume, grid: Grid, camera: OrthoCamera, *, device=None) -> np.ndarray:
    """Line integral of the volume along each ray (sum of samples x step in mm), ``[H, W]`` float32."""
    return _march(_sampler(volume, grid, device), camera, "sum").cpu().numpy().astype(np.float32)


def render_iso(volume, grid: Grid, camera: OrthoCamera, level: float, *, device=None,
               color=(0.93, 0.87, 0.76), ambient: float = 0.18, diffuse: float = 0.75, specular: float = 0.25,
               shininess: float = 24.0, depth_cue: float = 0.35) -> dict:
    """Shaded iso-surface at ``level`` (the first crossing along each ray).

    Returns ``{"image": [H, W, 3] float 0..1, "hit": [H, W] bool, "depth": [H, W] (mm along the ray from the
    camera's origin plane, NaN where missed), "points": [H, W, 3] world hit points (NaN), "normals": ...}``.
    """
    torch = __import__("torch")
    s = _sampler(volume, grid, device)
    hit_k, v_prev, v_hit = _march(s, camera, "iso", level)
    H, W = camera.shape
    hit = hit_k >= 0
    denom = v_hit - v_prev
    frac = torch.where((hit_k > 0) & (denom.abs() > 1e-12), (level - v_prev) / denom, torch.ones_like(denom))
    frac = frac.clamp(0.0, 1.0)
    t = camera.t0 + (hit_k.to(torch.float32) - 1.0 + frac) * camera.step
    t = torch.where(hit_k == 0, torch.full_like(t, camera.t0), t)
    dev = s.device
    f32 = dict(dtype=torch.float32, device=dev)
    rows = torch.arange(H, **f32)[:, None, None]
    cols = torch.arange(W, **f32)[None, :, None]
    pts = (torch.as_tensor(camera.origin, **f32) + cols * torch.as_tensor(camera.right * camera.pixel_mm, **f32)
           + rows * torch.as_tensor(camera.down * camera.pixel_mm, **f32)
           + t[..., None] * torch.as_tensor(camera.direction, **f32))
    # gradient by central differences in world space (handles anisotropic / rotated grids)
    h = 0.5 * float(grid.spacing.min())
    grad = torch.zeros((H, W, 3), **f32)
    hp = pts[hit]
    for a in range(3):
        e = torch.zeros(3, **f32)
        e[a] = h
        grad_a = (s.at_world(hp + e) - s.at_world(hp - e)) / (2 * h)
        grad[..., a][hit] = grad_a
    n = -grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # outward: toward lower values
    view = -torch.as_tensor(camera.direction, **f32)
    light = view - 0.35 * torch.as_tensor(camera.right, **f32) - 0.45 * torch.as_tensor(camera.down, **f32)
    light = light / light.norm()
    half = (light + view) / (light + view).norm()
    ndl = (n @ light).abs()  # two-sided: noisy normals never go black
    ndh = (n @ half).abs()
    shade = ambient + diffuse * ndl
    spec = specular * ndh ** shininess
    if depth_cue > 0 and bool(hit.any()):
        tn = (t - t[hit].min()) / max(float(t[hit].max() - t[hit].min()), 1e-6)
        shade = shade * (1.0 - depth_cue * tn.clamp(0, 1))
    col = torch.as_tensor(color, **f32)
    img = (shade[..., None] * col + spec[..., None]).clamp(0, 1)
    img = torch.where(hit[..., None], img, torch.zeros_like(img))
    nan = torch.full_like(t, float("nan"))
    return {
        "image": img.cpu().numpy(),
        "hit": hit.cpu().numpy(),
        "depth": torch.where(hit, t, nan).cpu().numpy(),
        "points": torch.where(hit[..., None], pts, nan[..., None]).cpu().numpy(),
        "normals": torch.where(hit[..., None], n, nan[..., None]).cpu().numpy(),
    }


# --------------------------------------------------------------------------------------------- output
def save_render_png(image, camera: OrthoCamera, path, *, title: str | None = None, vmin=None, vmax=None,
                    cmap: str = "gray", dpi: int = 100) -> Path:
    """Write a rendering (gray [H, W] with vmin/vmax, or RGB [H, W, 3]) with orientation letters and a
    scale bar (valid: the projection is orthographic)."""
    from .mpr import annotate, new_figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.asarray(image)
    fig, ax = new_figure(camera.shape, dpi=dpi, title=title)
    if img.ndim == 2:
        if vmax is None:
            vmax = float(np.percentile(img, 99.8)) if img.size else 1.0
        if vmin is None:
            vmin = float(min(img.min(), 0.0)) if img.size else 0.0
        if vmax <= vmin:
            vmax = vmin + 1e-6
        ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="bilinear", origin="upper")
    else:
        ax.imshow(np.clip(img, 0, 1), interpolation="bilinear", origin="upper")
    ax.set_xlim(-0.5, camera.shape[1] - 0.5)
    ax.set_ylim(camera.shape[0] - 0.5, -0.5)
    annotate(ax, camera.right, camera.down, camera.pixel_mm, camera.shape)
    fig.savefig(str(path), dpi=dpi, facecolor="black")
    return path


def write_renders(volume, grid: Grid, out_dir, *, viewpoints=((0.0, 0.0), (90.0, 0.0), (45.0, 20.0)),
                  level: float, kinds=("mip", "drr", "iso"), max_size: int = 512, device=None,
                  prefix: str = "render_") -> dict[str, Path]:
    """Render each kind from each viewpoint (azimuth, elevation in degrees) into ``out_dir``.

    Files are ``render_<kind>_<viewpoint>.png``; returns ``{"<kind>_<viewpoint>": path}``.
    """
    out_dir = Path(out_dir)
    unknown = set(kinds) - {"mip", "drr", "iso"}
    if unknown:
        raise ValueError(f"unknown render kinds {sorted(unknown)}; use mip, drr, iso")
    sampler_vol = _Sampler(volume, grid, device)
    paths = {}
    for az, el in viewpoints:
        cam = make_camera(grid, az, el, max_size=max_size)
        for kind in kinds:
            key = f"{kind}_{cam.name}"
            title = f"{kind.upper()}  {cam.name} (az {az:g}\u00b0, el {el:g}\u00b0)"
            if kind == "mip":
                img = render_mip(sampler_vol, grid, cam, device=device)
                p = save_render_png(img, cam, out_dir / f"{prefix}{key}.png", title=title, vmin=0.0)
            elif kind == "drr":
                img = render_drr(sampler_vol, grid, cam, device=device)
                p = save_render_png(img, cam, out_dir / f"{prefix}{key}.png", title=title + "  line integral",
                                    vmin=0.0)
            else:
                res = render_iso(sampler_vol, grid, cam, level, device=device)
                p = save_render_png(res["image"], cam, out_dir / f"{prefix}{key}.png",
                                    title=f"surface {cam.name} (az {az:g}\u00b0, el {el:g}\u00b0)")
            paths[key] = p
    return paths
