"""Per-material path lengths through a CT, rendered once per view on the CT's own grid and cached on disk.

Every styled image (:mod:`ixgs_ros.simulation.styles`) is computed from three channels per view, in mm:

* ``soft``  = integral of ``rho * [HU <= bone_hu]`` along the ray,
* ``bone``  = integral of ``rho * [HU >  bone_hu]`` along the ray,
* ``vertebrae`` = geometric length of the ray inside the vertebra labels (TotalSegmentator 25..50),

with ``rho = max(0, 1 + HU / 1000)`` the attenuation relative to water at the CT's effective energy. Bone is,
everywhere in this product, CT voxels above 200 HU with their mu. Hence the ideal line integral is
``mu_water * (soft + bone)`` (what ``ixgs simulate`` renders from ``hu_to_mu``, up to float round-off) and the
ideal bone-only projection ``mu_water * bone``.

The rays are traced with DiffDRR's exact Siddon renderer (or its trilinear one) through
:class:`ixgs_ros.simulation.drr.DrrRenderer`: one pass renders ``soft`` and ``bone`` together (DiffDRR's
``mask_to_channels`` splits each ray's voxel contributions by a bone/soft class volume), a second pass over
the vertebrae's bounding box renders the label length. ``z_range`` first empties every voxel whose centre
lies outside a world-z interval (e.g. training on z >= 80 mm, evaluating on z < 80 mm), so no anatomy there
contributes to any channel.

Siddon costs seconds per view, so results are cached in ``cache_dir`` as ``<key>.npz``, the key a hash of the
CT (HU and labels), the crop, the bone threshold, the renderer and every view's K, pose and size.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ixgs_ros.simulation.ct import CT, VERTEBRA_LABELS, label_bbox, label_centroid, label_name
from ixgs_ros.core.volume import MU_WATER, Grid

__all__ = ["BONE_HU", "PathLengths", "render_path_lengths", "crop_ct_z", "path_length_key", "ct_digest"]

#: HU above which a voxel is bone (its whole mu goes to the bone channel).
BONE_HU = 200.0
#: Bumped when the channel definitions change (old cache files then no longer match).
_CACHE_VERSION = "pathlengths-v1"
_VERTEBRA_SET = np.array(sorted(VERTEBRA_LABELS.values()), dtype=np.int16)


@dataclass
class PathLengths:
    """Per-view material path lengths (float32 ``[N, H, W]``, mm) and what they were rendered from.

    ``meta`` holds ``key``, ``z_range``, ``bone_hu``, ``renderer``, ``ct_path`` and ``anchors`` (the vertebrae
    left after the crop: name, label, world centroid and bounding box in mm, used to place screws)."""

    soft: np.ndarray
    bone: np.ndarray
    vertebrae: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        shapes = {np.shape(self.soft), np.shape(self.bone), np.shape(self.vertebrae)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ValueError(f"path-length channels must share one [N, H, W] shape, got {sorted(shapes)}")
        self.soft = np.asarray(self.soft, dtype=np.float32)
        self.bone = np.asarray(self.bone, dtype=np.float32)
        self.vertebrae = np.asarray(self.vertebrae, dtype=np.float32)

    def __len__(self) -> int:
        return int(self.soft.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.soft.shape)

    @property
    def anchors(self) -> list[dict]:
        return list(self.meta.get("anchors", []))

    def line_integrals(self, mu_water: float = MU_WATER) -> np.ndarray:
        """The ideal line integral ``mu_water * (soft + bone)`` (1/mm * mm), float32."""
        return (np.float32(mu_water) * (self.soft + self.bone)).astype(np.float32)

    def bone_projection(self, mu_water: float = MU_WATER) -> np.ndarray:
        """The ideal bone-only projection ``mu_water * bone`` (float32)."""
        return (np.float32(mu_water) * self.bone).astype(np.float32)

    def subset(self, indices) -> "PathLengths":
        idx = np.atleast_1d(np.arange(len(self))[indices])
        return replace(self, soft=self.soft[idx], bone=self.bone[idx], vertebrae=self.vertebrae[idx],
                       meta=json.loads(json.dumps(self.meta)))

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, soft=self.soft, bone=self.bone, vertebrae=self.vertebrae,
                 meta=np.array(json.dumps(self.meta)))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "PathLengths":
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(z["soft"], z["bone"], z["vertebrae"], json.loads(str(z["meta"])))


# ================================================================================================ CT crop
def _world_z(grid: Grid) -> np.ndarray:
    """World z of every voxel centre, broadcastable to ``grid.shape`` (1D along k when the grid is axial)."""
    A = np.asarray(grid.affine, dtype=np.float64)
    I, J, K = grid.shape
    if abs(A[2, 0]) < 1e-12 and abs(A[2, 1]) < 1e-12:
        return (A[2, 2] * np.arange(K) + A[2, 3])[None, None, :]
    return (A[2, 0] * np.arange(I)[:, None, None] + A[2, 1] * np.arange(J)[None, :, None]
            + A[2, 2] * np.arange(K)[None, None, :] + A[2, 3])


def _check_z_range(z_range) -> tuple[float | None, float | None] | None:
    if z_range is None:
        return None
    lo, hi = z_range
    lo = None if lo is None or (isinstance(lo, float) and math.isinf(lo) and lo < 0) else float(lo)
    hi = None if hi is None or (isinstance(hi, float) and math.isinf(hi) and hi > 0) else float(hi)
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"z_range: the lower bound {lo} mm must be below the upper bound {hi} mm")
    if lo is None and hi is None:
        return None
    return lo, hi


def crop_ct_z(ct: CT, z_range) -> CT:
    """A copy of ``ct`` in which every voxel whose centre has world z outside ``z_range = (lo, hi)`` (mm,
    ``lo <= z < hi``; None for an open end) is air (-1000 HU, rho 0) and unlabelled. The grid is unchanged,
    so world coordinates stay those of the CT. The cut follows voxel centres (the slice spacing is the
    resolution of the boundary)."""
    zr = _check_z_range(z_range)
    if zr is None:
        return ct
    lo, hi = zr
    z = _world_z(ct.grid)
    keep = np.ones(z.shape, dtype=bool)
    if lo is not None:
        keep &= z >= lo
    if hi is not None:
        keep &= z < hi
    keep = np.broadcast_to(keep, ct.grid.shape)
    hu = np.where(keep, ct.hu, np.float32(-1000.0)).astype(np.float32)
    labels = np.where(keep, ct.labels, 0).astype(np.int16) if ct.labels is not None else None
    return CT(hu, ct.grid, labels, ct.path, ct.labels_path)


# ================================================================================================ cache key
def ct_digest(ct: CT) -> str:
    """Hash of a CT's HU, labels and affine (memoised on the object: hashing 140 MB takes a fraction of a s)."""
    cache = ct.__dict__.setdefault("_cache", {})
    if "digest" not in cache:
        h = hashlib.blake2b(digest_size=16)
        h.update(np.ascontiguousarray(ct.hu, dtype=np.float32).tobytes())
        h.update(np.asarray(ct.grid.affine, dtype=np.float64).tobytes())
        h.update(str(ct.grid.shape).encode())
        if ct.labels is not None:
            h.update(np.ascontiguousarray(ct.labels, dtype=np.int16).tobytes())
        cache["digest"] = h.hexdigest()
    return cache["digest"]


def path_length_key(ct: CT, views: Sequence, z_range=None, renderer: str = "siddon",
                    bone_hu: float = BONE_HU) -> str:
    """Cache key of a path-length rendering: CT, crop, bone threshold, renderer and the exact views."""
    h = hashlib.blake2b(digest_size=16)
    zr = _check_z_range(z_range)
    h.update(json.dumps([_CACHE_VERSION, ct_digest(ct), zr, float(bone_hu), renderer]).encode())
    for v in views:
        h.update(np.asarray(v.K, dtype=np.float64).tobytes())
        h.update(np.asarray(v.T_world_source, dtype=np.float64).tobytes())
        h.update(f"{v.width}x{v.height}".encode())
    return h.hexdigest()


# ================================================================================================ rendering
def _box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding slices of the True voxels of ``mask`` (None when empty)."""
    sl = []
    for ax in range(3):
        nz = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != ax)))
        if nz.size == 0:
            return None
        sl.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(sl)


def _sub_grid(grid: Grid, sl: tuple[slice, ...]) -> Grid:
    A = np.array(grid.affine, dtype=np.float64)
    A[:3, 3] = grid.index_to_world(np.array([s.start for s in sl], dtype=np.float64))
    return Grid(tuple(s.stop - s.start for s in sl), A)


def _render_channels(r, view, index: int, channels: bool) -> np.ndarray:
    """Render one view with a ``DrrRenderer``; ``channels``: split by its DRR's class volume (``mask``).
    Returns ``[C, H, W]``. The batching follows ``DrrRenderer.render_view`` (rays from the source to beyond
    the farthest corner of the volume, in chunks)."""
    torch = r.torch
    r.check_in_front(view, index)
    dirs = view.ray_directions().reshape(-1, 3)
    src = view.source
    L = float(np.max(np.linalg.norm(r.corners - src, axis=1))) + 10.0
    kwargs = {"mask_to_channels": True} if channels else {}
    if r.renderer == "trilinear":
        kwargs["n_points"] = r._n_points()
    n = dirs.shape[0]
    chunk = r.chunk
    if r.compiled:
        n_chunks = -(-n // chunk)
        chunk = -(-n // n_chunks)
        pad = n_chunks * chunk - n
        if pad:
            dirs = np.concatenate([dirs, np.repeat(dirs[-1:], pad, axis=0)])
    source = torch.as_tensor(src, dtype=torch.float32).view(1, 1, 3)
    parts = []
    with torch.no_grad():
        for start in range(0, dirs.shape[0], chunk):
            tgt = torch.as_tensor(src + L * dirs[start:start + chunk], dtype=torch.float32)[None]
            parts.append(r._render(source, tgt, kwargs)[0].numpy())
    out = np.concatenate(parts, axis=-1)[:, :n]
    return out.reshape(out.shape[0], view.height, view.width).astype(np.float32)


def _anchors(ct: CT) -> list[dict]:
    """The vertebrae present in ``ct`` (after a crop): name, label, world centroid and bbox (mm)."""
    out = []
    if ct.labels is None:
        return out
    for lab in ct.present_labels():
        if lab not in set(_VERTEBRA_SET.tolist()):
            continue
        c = label_centroid(ct, lab)
        lo, hi = label_bbox(ct, lab)
        out.append({"name": label_name(lab), "label": int(lab), "centroid": [float(x) for x in c],
                    "bbox": [[float(x) for x in lo], [float(x) for x in hi]]})
    return out


def render_path_lengths(ct: CT, views: Sequence, z_range=None, renderer: str = "siddon", cache_dir=None,
                        bone_hu: float = BONE_HU, chunk_mb: float = 256.0, compile: bool | str = "auto",
                        progress: Callable[[str], None] | None = None) -> PathLengths:
    """Soft-tissue, bone and vertebra path lengths (:class:`PathLengths`) of ``ct`` along every pixel ray of
    ``views`` (world = the CT's NIfTI frame, mm), after emptying everything outside ``z_range`` (world mm,
    ``(lo, hi)``, None ends open; see :func:`crop_ct_z`).

    ``cache_dir``: a folder for ``<key>.npz`` (read when present, written after rendering), None for no
    cache. ``compile``: as :func:`ixgs_ros.simulation.drr.render_line_integrals`. ``progress(message)``."""
    from ixgs_ros.simulation.drr import COMPILE_MIN_SAMPLES, RENDERERS, DrrRenderer

    views = list(views)
    if not views:
        raise ValueError("no views to render")
    if len({v.shape for v in views}) > 1:
        raise ValueError("all views must share the detector size")
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}: choose one of {', '.join(RENDERERS)}")
    say = progress or (lambda msg: None)
    zr = _check_z_range(z_range)
    key = path_length_key(ct, views, zr, renderer, bone_hu)
    path = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            pl = PathLengths.load(path)
            if pl.shape == (len(views),) + views[0].shape and pl.meta.get("key") == key:
                say(f"path lengths: cached {path.name}")
                return pl
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache file is re-rendered and overwritten

    work = crop_ct_z(ct, zr)
    rho = np.maximum(np.float32(0.0), np.float32(1.0) + work.hu / np.float32(1000.0)).astype(np.float32)
    box = _box(rho > 0)
    N, (H, W) = len(views), views[0].shape
    soft = np.zeros((N, H, W), np.float32)
    bone = np.zeros((N, H, W), np.float32)
    vert = np.zeros((N, H, W), np.float32)
    if compile == "auto":
        compile = N * H * W * (sum(ct.grid.shape) + 3) > COMPILE_MIN_SAMPLES
    t0 = time.perf_counter()
    if box is not None:
        sub = rho[box]
        grid = _sub_grid(ct.grid, box)
        is_bone = work.hu[box] > bone_hu
        if renderer == "siddon":
            import torch

            # one pass, split by class: DiffDRR's Siddon scatters each ray-voxel term into channel mask[voxel]
            r = DrrRenderer(sub, grid, renderer, 0.6 * chunk_mb, crop=False, compile=bool(compile), log=say)
            r.drr.mask = torch.from_numpy(np.ascontiguousarray(is_bone, dtype=np.float32))
            for i, v in enumerate(views):
                ch = _render_channels(r, v, i, channels=True)
                soft[i] = ch[0]
                if ch.shape[0] > 1:
                    bone[i] = ch[1]
                say(f"  path lengths view {i + 1}/{N}: {time.perf_counter() - t0:.1f} s")
        else:  # the trilinear renderer interpolates a class volume: render the two densities separately
            for out, dens in ((soft, np.where(is_bone, 0, sub)), (bone, np.where(is_bone, sub, 0))):
                if not np.any(dens):
                    continue
                r = DrrRenderer(dens.astype(np.float32), grid, renderer, chunk_mb, crop=True,
                              compile=bool(compile), log=say)
                for i, v in enumerate(views):
                    out[i] = _render_channels(r, v, i, channels=False)[0]
        del sub, is_bone
    if work.labels is not None:
        ind = np.isin(work.labels, _VERTEBRA_SET)
        vbox = _box(ind)
        if vbox is not None:
            r = DrrRenderer(ind[vbox].astype(np.float32), _sub_grid(ct.grid, vbox), renderer, chunk_mb,
                          crop=False, compile=False, log=say)
            for i, v in enumerate(views):
                vert[i] = _render_channels(r, v, i, channels=False)[0]
    say(f"path lengths: {N} views of {W}x{H} px in {time.perf_counter() - t0:.1f} s")
    meta = {"key": key, "z_range": list(zr) if zr is not None else None, "bone_hu": float(bone_hu),
            "renderer": renderer, "ct_path": ct.path, "ct_digest": ct_digest(ct),
            "channels": {"soft": "integral of rho [HU <= bone_hu] dl (mm)",
                         "bone": "integral of rho [HU > bone_hu] dl (mm)",
                         "vertebrae": "length inside vertebra labels 25..50 (mm)",
                         "rho": "max(0, 1 + HU / 1000)"},
            "anchors": _anchors(work)}
    pl = PathLengths(soft, bone, vert, meta)
    if path is not None:
        pl.save(path)
    return pl
