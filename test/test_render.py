"""The pure-torch R²-Gaussian X-ray renderer (reference backend): maths, geometry conventions, gradients."""
from __future__ import annotations

from functools import partial

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from gaussian_factory import random_gaussians
from ixgs_ros.engine import render as gr
from ixgs_ros.core.geometry import View, look_at, rotation_z

F64 = torch.float64


def _view(K, source=(40.0, -700.0, 120.0), target=(5.0, 3.0, -10.0), up=(0.0, 0.3, 1.0), roll=0.0, w=128, h=96):
    T = look_at(source, target, up)
    T[:3, :3] = T[:3, :3] @ rotation_z(roll)
    return View(np.asarray(K, dtype=np.float64), T, w, h)


K_PLAIN = [[1000.0, 0.0, 63.5], [0.0, 1000.0, 47.5], [0.0, 0.0, 1.0]]
K_SKEW = [[1100.0, 35.0, 81.0], [0.0, 950.0, 30.0], [0.0, 0.0, 1.0]]  # off-centre principal point + skew


def _line_integral(view: View, uv, mean, cov, rho, n=6001):
    """Exact line integral of rho exp(-1/2 x^T cov^-1 x) along the pixel's ray (dense trapezoid quadrature)."""
    d = view.ray_directions(np.asarray(uv, dtype=np.float64))
    s = view.source
    tc = float(np.dot(mean - s, d))
    half = 10.0 * math.sqrt(np.linalg.eigvalsh(cov).max())
    t = np.linspace(tc - half, tc + half, n)
    x = s + t[:, None] * d - mean
    f = rho * np.exp(-0.5 * np.einsum("ni,ij,nj->n", x, np.linalg.inv(cov), x))
    return float(np.trapezoid(f, t))


def _render(view, means, scales, quats, density, **kw):
    return gr.render(means, scales, quats, density, view.K, view.T_world_source, view.width, view.height,
                     backend="torch", **kw)


# (scales mm, quaternion, distance factor, Mahalanobis radius checked, relative tolerance). The local-affine
# model treats the rays through a Gaussian as parallel; the error is first order in the ray tilt across the
# Gaussian, i.e. ~ (offset in sigma) x (size / distance) x anisotropy: tiny for isotropic Gaussians, about 1 %
# at 1-2 sigma for 6:1 needles 700 mm from the source, and shrinking as 1 / distance.
LINE_CASES = {
    "isotropic": ([2.5, 2.5, 2.5], [1.0, 0.0, 0.0, 0.0], 1.0, 2.5, 3e-3),
    "anisotropic": ([2.0, 1.0, 3.0], [0.8, 0.3, -0.4, 0.2], 1.0, 1.2, 1e-2),
    "needle_far": ([4.0, 1.2, 7.0], [0.8, 0.3, -0.4, 0.2], 8.0, 2.0, 1e-2),
}


@pytest.mark.parametrize("K", [K_PLAIN, K_SKEW], ids=["plain", "skew_offcentre"])
@pytest.mark.parametrize("case", list(LINE_CASES))
def test_matches_exact_line_integral(K, case):
    scales, quat, dist, max_sigma, tol = LINE_CASES[case]
    K = np.array(K)
    K[:2, :2] *= dist  # keep the footprint in pixels while moving the source away
    target = np.array([5.0, 3.0, -10.0])
    view = _view(K, source=target + dist * (np.array([40.0, -700.0, 120.0]) - target), target=target, roll=0.4)
    mean = np.array([12.0, 25.0, -6.0])
    means = torch.tensor(mean[None], dtype=F64)
    sc = torch.tensor([scales], dtype=F64)
    q = torch.tensor([quat], dtype=F64)
    rho = torch.tensor([0.03], dtype=F64)
    img = _render(view, means, sc, q, rho)
    cov = gr.covariance_from_scale_rot(sc, q)[0].numpy()
    proj = gr.project_gaussians(means, sc, q, rho, view.K, view.T_world_source, view.width, view.height)
    u0, v0 = np.round(proj.mean2d[0].numpy()).astype(int)
    a, b, c = proj.conic[0].tolist()
    checked = 0
    for du in range(-7, 8):
        for dv in range(-7, 8):
            u, v = u0 + du, v0 + dv
            dx, dy = u - float(proj.mean2d[0, 0]), v - float(proj.mean2d[0, 1])
            if a * dx * dx + 2 * b * dx * dy + c * dy * dy > max_sigma ** 2:
                continue
            exact = _line_integral(view, [u, v], mean, cov, 0.03)
            assert float(img[v, u]) == pytest.approx(exact, rel=tol), (u, v)
            checked += 1
    assert checked >= 9


def test_affine_error_shrinks_with_distance():
    errs = []
    for dist in (1.0, 4.0):
        K = np.array(K_PLAIN)
        K[:2, :2] *= dist
        target = np.array([5.0, 3.0, -10.0])
        view = _view(K, source=target + dist * (np.array([40.0, -700.0, 120.0]) - target), target=target)
        mean = np.array([12.0, 25.0, -6.0])
        args = [torch.tensor(mean[None]), torch.tensor([[2.0, 1.0, 3.0]], dtype=F64),
                torch.tensor([[0.8, 0.3, -0.4, 0.2]], dtype=F64), torch.tensor([0.03], dtype=F64)]
        img = _render(view, *args)
        cov = gr.covariance_from_scale_rot(args[1], args[2])[0].numpy()
        u0, v0 = np.round(view.project(mean[None])[0][0]).astype(int)
        errs.append(max(abs(float(img[v0 + dv, u0 + du]) / _line_integral(view, [u0 + du, v0 + dv], mean, cov, 0.03)
                            - 1) for du, dv in [(2, 1), (-2, 2), (1, -2), (-1, -1)]))
    assert errs[1] < 0.4 * errs[0]


def test_peak_of_isotropic_gaussian_on_axis_is_exact():
    """On the optical axis an isotropic Gaussian integrates to rho sqrt(2 pi) sigma through its centre."""
    K = [[800.0, 0.0, 32.0], [0.0, 800.0, 32.0], [0.0, 0.0, 1.0]]
    view = View(np.array(K), look_at([0, 0, -500.0], [0, 0, 0], [0, 1, 0]), 65, 65)
    sigma, rho = 3.0, 0.02
    img = _render(view, torch.zeros(1, 3, dtype=F64), torch.full((1, 3), sigma, dtype=F64),
                  torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.tensor([rho], dtype=F64))
    assert float(img[32, 32]) == pytest.approx(rho * math.sqrt(2 * math.pi) * sigma, rel=1e-12)


def test_mean2d_matches_view_projection():
    view = _view(K_SKEW, roll=-0.7)
    g = torch.Generator().manual_seed(1)
    means = (torch.rand(50, 3, generator=g, dtype=F64) - 0.5) * 80
    ones = torch.ones(50, 3, dtype=F64)
    q = torch.tensor([[1.0, 0, 0, 0]], dtype=F64).expand(50, 4)
    proj = gr.project_gaussians(means, ones, q, ones[:, 0], view.K, view.T_world_source, view.width, view.height)
    uv, z = view.project(means.numpy())
    np.testing.assert_allclose(proj.mean2d.numpy(), uv, rtol=0, atol=1e-9)
    np.testing.assert_allclose(proj.depth.numpy(), z, rtol=1e-12)


_random_gaussians = partial(random_gaussians, spread=60.0)


def test_rigid_motion_of_scene_and_camera_leaves_image_unchanged():
    view = _view(K_SKEW, roll=0.3)
    means, scales, quats, density = _random_gaussians(300)
    img = _render(view, means, scales, quats, density)
    rot = Rotation.from_rotvec([0.4, -1.1, 0.7])
    G = np.eye(4)
    G[:3, :3] = rot.as_matrix()
    G[:3, 3] = [120.0, -35.0, 60.0]
    Rg = torch.tensor(G[:3, :3], dtype=F64)
    means2 = means @ Rg.T + torch.tensor(G[:3, 3], dtype=F64)
    # quaternion product q_G * q (w, x, y, z) so that R(q2) = R_G R(q)
    xyzw = rot.as_quat()
    qg = torch.tensor([xyzw[3], *xyzw[:3]], dtype=F64)
    w1, x1, y1, z1 = qg
    w2, x2, y2, z2 = quats.unbind(-1)
    quats2 = torch.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                          w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], dim=-1)
    torch.testing.assert_close(gr.quat_to_rotmat(quats2), Rg @ gr.quat_to_rotmat(quats))
    img2 = _render(view.transformed(G), means2, scales, quats2, density)
    assert img.abs().max() > 0.1
    torch.testing.assert_close(img2, img, rtol=1e-9, atol=1e-11)


def test_eps2d_keeps_the_splat_integral():
    view = View(np.array([[900.0, 0, 60.0], [0, 900.0, 60.0], [0, 0, 1.0]]), look_at([0, 0, -600.0], [0, 0, 0],
                [0, 1, 0]), 121, 121)
    args = [torch.tensor([[1.0, -2.0, 3.0]], dtype=F64), torch.tensor([[2.0, 1.0, 3.0]], dtype=F64),
            torch.tensor([[0.9, 0.1, 0.3, -0.2]], dtype=F64), torch.tensor([0.05], dtype=F64)]
    a = _render(view, *args)
    b = _render(view, *args, eps2d=0.3)
    assert float(b.max()) < float(a.max())  # blurred
    # the same fraction (1 - exp(-4.5)) of both splats lies inside their 3-sigma ellipses
    assert float(b.sum()) == pytest.approx(float(a.sum()), rel=2e-3)


def test_gaussians_behind_the_source_are_culled_with_finite_zero_gradients():
    view = _view(K_PLAIN)
    src = torch.tensor(view.source, dtype=F64)
    axis = torch.tensor(view.principal_axis, dtype=F64)
    means = torch.stack([src - 50 * axis, src + 0.5 * axis, src + 700 * axis]).requires_grad_()
    scales = torch.full((3, 3), 2.0, dtype=F64, requires_grad=True)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=F64, requires_grad=True)
    density = torch.full((3,), 0.05, dtype=F64, requires_grad=True)
    proj = gr.project_gaussians(means, scales, quats, density, view.K, view.T_world_source, view.width, view.height)
    assert proj.radius[:2].eq(0).all() and proj.radius[2] > 0
    img = _render(view, means, scales, quats, density)
    img.sum().backward()
    for t in (means, scales, quats, density):
        assert torch.isfinite(t.grad).all()
    assert means.grad[:2].eq(0).all() and density.grad[:2].eq(0).all()
    assert density.grad[2] > 0


def test_nothing_visible_gives_zeros_that_still_backpropagate():
    view = _view(K_PLAIN)
    means = torch.tensor([[5000.0, 0, 0]], dtype=F64, requires_grad=True)
    args = [torch.ones(1, 3, dtype=F64), torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.ones(1, dtype=F64)]
    img = _render(view, means, *args)
    assert img.shape == (view.height, view.width) and img.eq(0).all()
    img.sum().backward()
    assert means.grad.eq(0).all()


def test_gradcheck_reference_end_to_end():
    view = _view(K_SKEW, source=(30.0, -300.0, 50.0), w=12, h=10)
    view = View(np.array([[60.0, 2.0, 5.5], [0.0, 55.0, 4.0], [0.0, 0.0, 1.0]]), view.T_world_source, 12, 10)
    means, scales, quats, density = _random_gaussians(4, seed=3, spread=20.0, scale=6.0)
    inputs = [t.clone().requires_grad_() for t in (means, scales, quats, density)]
    assert _render(view, *inputs).abs().sum() > 0

    def f(m, s, q, d):
        return _render(view, m, s, q, d, eps2d=0.1)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-4)


def test_render_batch_and_views():
    views = [_view(K_PLAIN, roll=0.1), _view(K_SKEW, source=(-500.0, 200.0, 90.0))]
    means, scales, quats, density = _random_gaussians(100, seed=5)
    Ks = np.stack([v.K for v in views])
    Ts = torch.tensor(np.stack([v.T_world_source for v in views]))
    batch = gr.render_batch(means, scales, quats, density, Ks, Ts, 128, 96, backend="torch")
    assert batch.shape == (2, 96, 128) and batch.dtype == F64
    for b, v in zip(batch, views):
        torch.testing.assert_close(b, gr.render_view(means, scales, quats, density, v, backend="torch"))


def test_float32_follows_means_dtype():
    view = _view(K_PLAIN)
    args = [t.float() for t in _random_gaussians(50)]
    img = gr.render(*args, view.K, view.T_world_source, 128, 96, backend="torch")
    assert img.dtype == torch.float32
    ref = _render(view, *[t.double() for t in args])
    assert float((img.double() - ref).norm() / ref.norm()) < 1e-5


def test_backend_errors_are_clear():
    view = _view(K_PLAIN)
    args = _random_gaussians(3)
    with pytest.raises(ValueError, match="unknown backend"):
        gr.render(*args, view.K, view.T_world_source, 8, 8, backend="opencl")
    with pytest.raises(RuntimeError, match="cuda"):
        gr.render(*args, view.K, view.T_world_source, 8, 8, backend="cuda")
    with pytest.raises(ValueError, match="scales"):
        gr.render(args[0], args[1][:2], args[2], args[3], view.K, view.T_world_source, 8, 8, backend="torch")
    with pytest.raises(ValueError, match="K"):
        gr.render(*args, np.eye(4), view.T_world_source, 8, 8, backend="torch")


def test_covariance_from_scale_rot():
    scales = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)
    quats = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=F64)  # not normalised: normalised inside
    torch.testing.assert_close(gr.covariance_from_scale_rot(scales, quats)[0], torch.diag(scales[0] ** 2))
    rot = Rotation.from_rotvec([0.3, 0.2, -0.5])
    xyzw = rot.as_quat()
    q = torch.tensor([[xyzw[3], *xyzw[:3]]], dtype=F64)
    R = torch.tensor(rot.as_matrix())
    torch.testing.assert_close(gr.covariance_from_scale_rot(scales, q)[0], R @ torch.diag(scales[0] ** 2) @ R.T)
