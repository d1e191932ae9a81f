"""The CUDA kernels (cuda_ext/*.cu, ixgs_ros.engine.kernels_cuda) against the torch reference and the C++ kernels.

Three layers:

* GPU tests: skipped unless torch sees a CUDA device (run them with scripts/gpu_check.sh on a GPU machine). They
  build the real extension and check values and gradients against the pure-torch reference on the GPU, float32
  relative error < 1e-4, on fresh random inputs (seed from ``IXGS_TEST_SEED`` or random, printed on failure),
  plus poisoned (NaN-filled) outputs and scratch buffers, determinism and input validation.
* Emulation tests (``slow``, any machine with g++): the same kernel sources compiled as C++ against
  cuda_ext/cuda_emu.cuh run on CPU threads; they prove the kernels' logic (binning, batching, barriers, warp
  reductions, slot bookkeeping), not their GPU behaviour.
* Two cheap checks that the CUDA code stays out of the default CPU build.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ixgs_ros.engine import render as gr
from ixgs_ros.engine import kernels as native
from ixgs_ros.engine import kernels_cuda as native_cuda
from ixgs_ros.engine import voxelize as vx
from ixgs_ros.core.geometry import look_at, rotation_x, rotation_z
from ixgs_ros.core.volume import Grid

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device: the CUDA kernels are built and tested only on "
                               "a GPU machine (scripts/gpu_check.sh); their logic is tested by the slow "
                               "emulation tests here")
SEED = int(os.environ.get("IXGS_TEST_SEED", random.SystemRandom().randrange(1 << 31)))


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _scene(n, dtype, device, seed, spread=120.0, scale=2.5):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * spread
    scales = scale * torch.exp(0.35 * torch.randn(n, 3, generator=g, dtype=torch.float64))
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    density = 0.03 * torch.rand(n, generator=g, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (means, scales, quats, density)]


def _camera(size, seed):
    rng = np.random.default_rng(seed)
    f = 1.6 * size * 2.2
    K = np.array([[f, rng.uniform(-8, 8), size / 2 + rng.uniform(-10, 10)],
                  [0.0, 0.93 * f, size / 2 + rng.uniform(-10, 10)], [0.0, 0.0, 1.0]])
    T = look_at(rng.uniform(-200, 200, 3) + np.array([0.0, -520.0, 0.0]), rng.uniform(-5, 5, 3), [0.1, 0.2, 1.0])
    return K, T


def _rotated_grid(shape, seed):
    rng = np.random.default_rng(seed)
    A = np.eye(4)
    spacing = np.array([1.0, 0.9, 1.2])
    A[:3, :3] = rotation_z(rng.uniform(-1, 1)) @ rotation_x(rng.uniform(-0.5, 0.5)) @ np.diag(spacing)
    A[:3, 3] = -A[:3, :3] @ ((np.array(shape) - 1) / 2)
    return Grid(tuple(shape), A)


def _render(params, K, T, w, h, how, eps2d=0.1):
    """Image and gradients of sum(image * weight) w.r.t. the four parameter tensors; how = "torch" or a module."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    if how == "torch":
        img = gr.render(*ps, K, T, w, h, backend="torch", eps2d=eps2d)
    else:
        proj = gr.project_gaussians(*ps, K, T, w, h, eps2d=eps2d)
        img = native_cuda.rasterize(proj.mean2d, proj.conic, proj.weight, proj.radius, w, h, module=how)
    weight = torch.rand(h, w, generator=torch.Generator().manual_seed(SEED + 1), dtype=img.dtype).to(img.device)
    (img * weight).sum().backward()
    return img.detach(), [p.grad for p in ps]


def _voxelize(params, grid, how):
    ps = [p.detach().clone().requires_grad_() for p in params]
    if how == "torch":
        vol = vx.voxelize(*ps, grid, backend="torch")
    else:
        icov, extent, bounds = vx.gaussian_voxel_params(ps[0], ps[1], ps[2], grid)
        vol = native_cuda.voxelize_kernel(ps[0], icov, ps[3], extent, bounds,
                                          torch.tensor(grid.affine[:3, :4], dtype=torch.float64), grid.shape,
                                          module=how)
    weight = torch.rand(grid.shape, generator=torch.Generator().manual_seed(SEED + 2), dtype=vol.dtype)
    (vol * weight.to(vol.device)).sum().backward()
    return vol.detach(), [p.grad for p in ps]


def _assert_close(a, b, grads_a, grads_b, tol, what):
    assert torch.isfinite(a).all(), f"{what}: non-finite values (seed {SEED})"
    assert rel(a, b) < tol, f"{what}: values differ by {rel(a, b):.2e} (seed {SEED})"
    for name, x, y in zip(("means", "scales", "quats", "density"), grads_a, grads_b):
        assert torch.isfinite(x).all(), f"{what}: non-finite gradient of {name} (seed {SEED})"
        assert rel(x, y) < tol, f"{what}: gradient of {name} differs by {rel(x, y):.2e} (seed {SEED})"


# ------------------------------------------------------------------------------------------ shared checks
def check_render_parity(mod, device, n, size, dtype, tol):
    params = _scene(n, dtype, device, SEED)
    K, T = _camera(size, SEED)
    w, h = size, size * 3 // 4 + 5  # not multiples of the tile size
    a, ga = _render(params, K, T, w, h, mod)
    b, gb = _render(params, K, T, w, h, "torch")
    assert float(b.abs().max()) > 0.1 and (b > 0).float().mean() > 0.2, "degenerate scene"
    _assert_close(a, b, ga, gb, tol, f"render {dtype} N={n} {w}x{h}")


def check_kernels_match_cpu(mod, device, n, size):
    """Same splats into both modules: identical tile lists, forward bit-identical (without FMA), close gradients."""
    cpu = native.load()
    params = _scene(n, torch.float32, "cpu", SEED + 3)
    K, T = _camera(size, SEED + 3)
    w, h = size + 3, size - 5
    proj = gr.project_gaussians(*params, K, T, w, h, eps2d=0.1)
    m, c, wt, r = (t.detach().contiguous() for t in proj[:4])
    img_c, off_c, ids_c = cpu.rasterize_forward(m, c, wt, r, w, h, 3.0)
    dev = [t.to(device) for t in (m, c, wt, r)]
    img_g, off_g, ids_g = mod.rasterize_forward(*dev, w, h, 3.0)
    assert torch.equal(off_g.cpu(), off_c) and torch.equal(ids_g.cpu(), ids_c)
    if mod.fmad:
        assert rel(img_g, img_c) < 1e-6
    else:
        assert torch.equal(img_g.cpu(), img_c), f"forward not bit-identical to the CPU kernel (seed {SEED})"
    g = torch.rand(h, w, generator=torch.Generator().manual_seed(SEED))
    grads_c = cpu.rasterize_backward(m, c, wt, r, off_c, ids_c, g, w, h, 3.0)
    grads_g = mod.rasterize_backward(*dev, off_g, ids_g, g.to(device), w, h, 3.0)
    for x, y in zip(grads_g, grads_c):
        assert rel(x, y) < 1e-5, f"kernel gradients differ from the CPU kernel by {rel(x, y):.2e} (seed {SEED})"


def check_voxelize_parity(mod, device, n, shape, spread, dtype, tol):
    params = _scene(n, dtype, device, SEED + 4, spread=spread, scale=0.9)
    grid = _rotated_grid(shape, SEED + 4)
    a, ga = _voxelize(params, grid, mod)
    b, gb = _voxelize(params, grid, "torch")
    assert (b > 0).float().mean() > 0.3, "degenerate scene"
    _assert_close(a, b, ga, gb, tol, f"voxelize {dtype} N={n} {shape}")
    # same brick lists as the CPU kernels
    cpu = native.load()
    p = [t.detach().cpu() for t in params]
    icov, extent, bounds = vx.gaussian_voxel_params(p[0], p[1], p[2], grid)
    A = torch.tensor(grid.affine[:3, :4], dtype=torch.float64)
    _, off_c, ids_c = cpu.voxelize_forward(p[0], icov, p[3], extent, bounds, A, *grid.shape)
    dev = [t.to(device) for t in (p[0], icov, p[3], extent, bounds, A)]
    _, off_g, ids_g = mod.voxelize_forward(*dev, *grid.shape)
    assert torch.equal(off_g.cpu(), off_c) and torch.equal(ids_g.cpu(), ids_c)


def check_crowded_cells(mod, device):
    """More splats per tile and Gaussians per brick than one shared-memory batch (256) holds."""
    params = _scene(1500, torch.float32, device, SEED + 8, spread=30.0)
    K, T = _camera(40, SEED + 8)
    a, ga = _render(params, K, T, 40, 30, mod)
    b, gb = _render(params, K, T, 40, 30, "torch")
    _assert_close(a, b, ga, gb, 1e-4, "render, crowded tiles")
    proj = gr.project_gaussians(*[p.detach() for p in params], K, T, 40, 30, eps2d=0.1)
    _, off, _ = mod.rasterize_forward(*(t.contiguous() for t in proj[:4]), 40, 30, 3.0)
    assert int((off[1:] - off[:-1]).max()) > 2 * 256, "the scene no longer crowds the tiles"
    params = _scene(1200, torch.float32, device, SEED + 8, spread=10.0, scale=0.9)
    grid = _rotated_grid((12, 13, 11), SEED + 8)
    a, ga = _voxelize(params, grid, mod)
    b, gb = _voxelize(params, grid, "torch")
    _assert_close(a, b, ga, gb, 1e-4, "voxelize, crowded bricks")
    icov, extent, bounds = vx.gaussian_voxel_params(params[0], params[1], params[2], grid)
    A = torch.tensor(grid.affine[:3, :4], dtype=torch.float64, device=device)
    _, off, _ = mod.voxelize_forward(params[0], icov, params[3], extent, bounds, A, *grid.shape)
    assert int((off[1:] - off[:-1]).max()) > 2 * 256, "the scene no longer crowds the bricks"


def check_poisoned_outputs(mod, device):
    """Outputs and scratch buffers start as NaN: every pixel, voxel, pair slot and gradient must be written."""
    params = _scene(150, torch.float32, device, SEED + 5, spread=40.0)  # covers the image centre only
    K, T = _camera(96, SEED + 5)
    mod.set_poison_outputs(True)
    try:
        assert mod.poison_outputs()
        img, grads = _render(params, K, T, 96, 70, mod)
        vol, vgrads = _voxelize(params, Grid.centered((26, 19, 33), 3.0), mod)
    finally:
        mod.set_poison_outputs(False)
    assert (img == 0).any() and (img > 0).any()  # empty tiles exist
    assert (vol == 0).any() and (vol > 0).any()  # empty bricks exist
    for t in [img, vol] + grads + vgrads:
        assert torch.isfinite(t).all(), f"unwritten (NaN) elements (seed {SEED})"


def check_deterministic(mod, device):
    params = _scene(800, torch.float32, device, SEED + 6)
    K, T = _camera(64, SEED + 6)
    a, ga = _render(params, K, T, 64, 50, mod)
    b, gb = _render(params, K, T, 64, 50, mod)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb))
    grid = _rotated_grid((14, 17, 12), SEED + 6)
    small = _scene(300, torch.float32, device, SEED + 6, spread=15.0, scale=0.9)
    va, vga = _voxelize(small, grid, mod)
    vb, vgb = _voxelize(small, grid, mod)
    assert torch.equal(va, vb) and all(torch.equal(x, y) for x, y in zip(vga, vgb))


def check_edge_cases(mod, device):
    z = torch.zeros
    # no splats at all, and only culled ones
    for n in (0, 5):
        m = torch.rand(n, 2, device=device) * 10
        c = torch.ones(n, 3, device=device) * torch.tensor([1.0, 0.0, 1.0], device=device)
        w, r = torch.ones(n, device=device), z(n, device=device)
        img, off, ids = mod.rasterize_forward(m, c, w, r, 17, 33, 3.0)
        assert img.shape == (33, 17) and torch.equal(img.cpu(), z(33, 17)) and ids.numel() == 0
        assert off.shape == (2 * 3 + 1,) and int(off.abs().sum()) == 0
        gm, gc, gw = mod.rasterize_backward(m, c, w, r, off, ids, torch.ones(33, 17, device=device), 17, 33, 3.0)
        assert gm.shape == (n, 2) and gc.shape == (n, 3) and gw.shape == (n,)
        assert int((gm != 0).sum() + (gc != 0).sum() + (gw != 0).sum()) == 0
    # a 1x1 image and a splat centred on it
    m, c = torch.zeros(1, 2, device=device), torch.tensor([[1.0, 0.0, 1.0]], device=device)
    w, r = torch.full((1,), 2.0, device=device), torch.full((1,), 3.0, device=device)
    img, off, ids = mod.rasterize_forward(m, c, w, r, 1, 1, 3.0)
    assert float(img) == 2.0 and ids.tolist() == [0]
    # a thin grid (one brick layer, partial bricks) with Gaussians partly outside
    params = _scene(60, torch.float64, device, SEED + 7, spread=12.0, scale=1.0)
    grid = _rotated_grid((9, 1, 17), SEED + 7)
    a, ga = _voxelize(params, grid, mod)
    b, gb = _voxelize(params, grid, "torch")
    if float(b.abs().max()) > 0:
        _assert_close(a, b, ga, gb, 1e-10, "voxelize thin grid")


def check_rejects_bad_inputs(mod, device, other_device):
    m = torch.zeros(3, 2, device=device)
    c, w, r = torch.ones(3, 3, device=device), torch.ones(3, device=device), torch.ones(3, device=device)
    with pytest.raises(RuntimeError, match="conic"):
        mod.rasterize_forward(m, torch.ones(3, 2, device=device), w, r, 8, 8, 3.0)
    with pytest.raises(RuntimeError, match="dtype"):
        mod.rasterize_forward(m, c.double(), w, r, 8, 8, 3.0)
    with pytest.raises(RuntimeError, match="contiguous"):
        mod.rasterize_forward(torch.zeros(2, 3, device=device).t(), c, w, r, 8, 8, 3.0)
    with pytest.raises(RuntimeError, match="mean2d must be a"):
        mod.rasterize_forward(m.to(other_device), c, w, r, 8, 8, 3.0)
    with pytest.raises(RuntimeError, match="image size"):
        mod.rasterize_forward(m, c, w, r, 0, 8, 3.0)
    img, off, ids = mod.rasterize_forward(m, c, w, r, 8, 8, 3.0)
    with pytest.raises(RuntimeError, match="do not match"):
        mod.rasterize_backward(m, c, w, r, off, ids[:-1].contiguous(), torch.ones(8, 8, device=device), 8, 8, 3.0)


def check_gradcheck_float64(mod, device):
    K = np.array([[60.0, 2.0, 5.5], [0.0, 55.0, 4.0], [0.0, 0.0, 1.0]])
    T = look_at([30.0, -300.0, 50.0], [0.0, 0.0, 0.0], [0, 0, 1])
    params = [p.requires_grad_() for p in _scene(5, torch.float64, device, 3, spread=20.0, scale=6.0)]

    def f(m, s, q, d):
        proj = gr.project_gaussians(m, s, q, d, K, T, 12, 10, eps2d=0.1)
        return native_cuda.rasterize(proj.mean2d, proj.conic, proj.weight, proj.radius, 12, 10, module=mod)

    assert f(*params).abs().sum() > 0
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-7, rtol=1e-4)


# ------------------------------------------------------------------------------------------ default-suite checks
def test_cuda_sources_stay_out_of_the_cpu_build():
    cpp, headers = native.sources("cpp")
    assert cpp and all(p.suffix == ".cpp" for p in cpp)
    assert not any(p.suffix in (".cu", ".cuh") for p in headers)  # editing CUDA code never rebuilds the CPU module
    cu, cu_headers = native.sources("cuda")
    assert {p.name for p in cu} >= {"ext_cuda.cu", "rasterize_cuda.cu", "voxelize_cuda.cu", "bin_cuda.cu"}


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour on machines without CUDA")
def test_without_gpu_nothing_is_built_and_load_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("IXGS_CUDA_BUILD", str(tmp_path))
    assert not native.available("cuda")
    assert native.unavailable_reason()
    with pytest.raises(RuntimeError, match="cannot be built here"):
        native_cuda.load()
    assert not any(tmp_path.iterdir())  # nothing was compiled or written


# ------------------------------------------------------------------------------------------ GPU
@pytest.fixture(scope="module")
def cuda_mod():
    if not HAS_CUDA:
        pytest.skip("no CUDA device")
    return native_cuda.load()


@needs_gpu
def test_gpu_build_is_cached_and_flags_reported(cuda_mod):
    assert native.library_path("cuda").exists()
    assert cuda_mod.emulated is False and cuda_mod.tile_size == 16 and cuda_mod.brick_size == 8


@needs_gpu
def test_gpu_render_float32_matches_torch(cuda_mod):
    check_render_parity(cuda_mod, "cuda", 2000, 128, torch.float32, 1e-4)


@needs_gpu
def test_gpu_render_float32_matches_torch_256(cuda_mod):
    check_render_parity(cuda_mod, "cuda", 20000, 256, torch.float32, 1e-4)


@needs_gpu
def test_gpu_render_float64_matches_torch(cuda_mod):
    check_render_parity(cuda_mod, "cuda", 400, 64, torch.float64, 1e-10)


@needs_gpu
def test_gpu_kernels_match_cpu_kernels(cuda_mod):
    check_kernels_match_cpu(cuda_mod, "cuda", 3000, 128)


@needs_gpu
def test_gpu_voxelize_float32_matches_torch(cuda_mod):
    check_voxelize_parity(cuda_mod, "cuda", 8000, (48, 40, 56), 52.0, torch.float32, 1e-4)


@needs_gpu
def test_gpu_voxelize_float64_matches_torch(cuda_mod):
    check_voxelize_parity(cuda_mod, "cuda", 1500, (24, 20, 28), 26.0, torch.float64, 1e-10)


@needs_gpu
def test_gpu_crowded_cells(cuda_mod):
    check_crowded_cells(cuda_mod, "cuda")


@needs_gpu
def test_gpu_poisoned_outputs_are_fully_written(cuda_mod):
    check_poisoned_outputs(cuda_mod, "cuda")


@needs_gpu
def test_gpu_deterministic(cuda_mod):
    check_deterministic(cuda_mod, "cuda")


@needs_gpu
def test_gpu_edge_cases(cuda_mod):
    check_edge_cases(cuda_mod, "cuda")


@needs_gpu
def test_gpu_rejects_bad_inputs(cuda_mod):
    check_rejects_bad_inputs(cuda_mod, "cuda", "cpu")


@needs_gpu
def test_gpu_gradcheck_float64(cuda_mod):
    check_gradcheck_float64(cuda_mod, "cuda")


# ------------------------------------------------------------------------------------------ CPU emulation
@pytest.fixture(scope="module")
def emu_mod():
    try:
        return native_cuda.load_emulated()
    except Exception as exc:  # pragma: no cover - needs a C++ compiler like the CPU kernels
        pytest.fail(f"the emulated CUDA kernels do not build: {exc}")


@pytest.mark.slow
def test_emulated_module_is_separate_from_the_cpu_module(emu_mod):
    cpu = native.load()
    emu_mod.set_poison_outputs(True)
    try:
        assert not cpu.poison_outputs()  # same C++ names, but no symbol interposition between the modules
    finally:
        emu_mod.set_poison_outputs(False)
    assert emu_mod.emulated is True


@pytest.mark.slow
def test_emulated_render_float32_matches_torch(emu_mod):
    check_render_parity(emu_mod, "cpu", 300, 48, torch.float32, 1e-4)


@pytest.mark.slow
def test_emulated_render_float64_matches_torch(emu_mod):
    check_render_parity(emu_mod, "cpu", 200, 40, torch.float64, 1e-10)


@pytest.mark.slow
def test_emulated_kernels_match_cpu_kernels(emu_mod):
    check_kernels_match_cpu(emu_mod, "cpu", 500, 48)


@pytest.mark.slow
def test_emulated_voxelize_matches_torch(emu_mod):
    check_voxelize_parity(emu_mod, "cpu", 600, (18, 14, 21), 22.0, torch.float32, 1e-4)


@pytest.mark.slow
def test_emulated_crowded_cells(emu_mod):
    check_crowded_cells(emu_mod, "cpu")


@pytest.mark.slow
def test_emulated_poisoned_outputs_are_fully_written(emu_mod):
    check_poisoned_outputs(emu_mod, "cpu")


@pytest.mark.slow
def test_emulated_deterministic(emu_mod):
    check_deterministic(emu_mod, "cpu")


@pytest.mark.slow
def test_emulated_edge_cases(emu_mod):
    check_edge_cases(emu_mod, "cpu")


@pytest.mark.slow
def test_emulated_rejects_bad_inputs(emu_mod):
    check_rejects_bad_inputs(emu_mod, "cpu", "meta")


@pytest.mark.slow
def test_emulated_gradcheck_float64(emu_mod):
    check_gradcheck_float64(emu_mod, "cpu")


WIRING = r"""
import os, sys, torch
os.environ["IXGS_CUDA_EMULATE"] = "1"
sys.path.insert(0, "test")
from test_cuda import _scene, _camera, _rotated_grid
from ixgs_ros.engine import render as gr, voxelize as vx
params = _scene(200, torch.float32, "cpu", 3)
K, T = _camera(40, 3)
a = gr.render(*params, K, T, 40, 32, backend="cuda")
b = gr.render(*params, K, T, 40, 32, backend="cpp")
grid = _rotated_grid((14, 12, 10), 3)
va = vx.voxelize(*params, grid, backend="cuda")
vb = vx.voxelize(*params, grid, backend="cpp")
assert gr.resolve_backend("auto", "cpu") == "cpp"
print("render", float((a - b).abs().max() / b.abs().max()), "voxelize", float((va - vb).abs().max() / vb.abs().max()))
"""


@pytest.mark.slow
def test_backend_cuda_routes_render_and_voxelize_to_the_cuda_kernels():
    """The product wiring of ``backend="cuda"`` (render and voxelize through engine.kernels_cuda), exercised here
    with the CPU emulation of the same kernels (IXGS_CUDA_EMULATE=1): the same images and volumes as the C++
    kernels; ``auto`` on CPU tensors stays ``cpp``."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", WIRING], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    words = out.stdout.split()
    assert float(words[1]) < 1e-5 and float(words[3]) < 1e-5, out.stdout


def test_backend_cuda_without_the_kernels_says_why():
    if HAS_CUDA:
        pytest.skip("checks the behaviour on machines without CUDA")
    params = _scene(20, torch.float32, "cpu", 0)
    K, T = _camera(16, 0)
    with pytest.raises(RuntimeError, match="backend='cuda' is not available here"):
        gr.render(*params, K, T, 16, 16, backend="cuda")
