// CPU (OpenMP) per-Gaussian projection into one pinhole view, forward and backward: the maths of the torch
// reference `project_gaussians` (ixgs_ros/engine/render.py, module docstring) per Gaussian in one pass, instead of
// about a hundred whole-array tensor operations and their autograd graph.
//
// Per Gaussian (p, s, q, rho), with W = Rws^T and camera constants fx, sk, cx, fy, cy:
//   t = W (p - src); visible = tz > near (else tz is evaluated at max(near, 1) + 1 and the weight is 0)
//   u = (fx tx + sk ty) / tz + cx,  v = fy ty / tz + cy
//   J2 (rows 1-2 of the pinhole Jacobian), G_r = (J2 W)_r R(q/|q|), Sigma_hat = sum_j s_j^2 G_rj G_r'j (+ eps2d I)
//   conic = Sigma_hat^-1 as (c, -b, a) / det,  weight = rho sqrt(2 pi) fx fy |t| / tz^3 |s0 s1 s2| / sqrt(det)
//   radius = 3 sqrt(lambda_max(Sigma_hat)) + slack, 0 when culled (behind, non-finite, off the detector)
// The backward is the chain rule of the same expressions, written out; the reference's branch choices are kept
// (no gradient into tz when culled, none through a clamped determinant or a zero-length quaternion's norm).
#include "project.h"
#include "cpu_common.h"

#include <ATen/ops/zeros.h>

#include <cmath>

namespace ixgs {

namespace {

template <typename T>
struct Camera {
  T R[3][3];  // Rws: R[m][k], world axis m of camera axis k
  T src[3];
  T fx, sk, cx, fy, cy;
  explicit Camera(const double* c) {
    for (int m = 0; m < 3; ++m)
      for (int k = 0; k < 3; ++k) R[m][k] = static_cast<T>(c[3 * m + k]);
    for (int k = 0; k < 3; ++k) src[k] = static_cast<T>(c[9 + k]);
    fx = static_cast<T>(c[12]);
    sk = static_cast<T>(c[13]);
    cx = static_cast<T>(c[14]);
    fy = static_cast<T>(c[15]);
    cy = static_cast<T>(c[16]);
  }
};

// The forward intermediates of one Gaussian (recomputed by the backward).
template <typename T>
struct Fwd {
  T tx, ty, tz, tz_raw, iz;
  bool visible;
  T qn[4], qnorm;
  T Rq[3][3];
  T JW0[3], JW1[3];
  T G0[3], G1[3], sq[3];
  T a, b, c, det_raw, det;
  T tnorm, detJ, svol;
};

template <typename T>
inline void forward_one(const Camera<T>& cam, const T* p, const T* s, const T* q, T eps2d, T near, Fwd<T>& f) {
  const T px = p[0] - cam.src[0], py = p[1] - cam.src[1], pz = p[2] - cam.src[2];
  f.tx = px * cam.R[0][0] + py * cam.R[1][0] + pz * cam.R[2][0];
  f.ty = px * cam.R[0][1] + py * cam.R[1][1] + pz * cam.R[2][1];
  f.tz_raw = px * cam.R[0][2] + py * cam.R[1][2] + pz * cam.R[2][2];
  f.visible = f.tz_raw > near;
  f.tz = f.visible ? f.tz_raw : std::max(near, T(1)) + T(1);
  f.iz = T(1) / f.tz;
  const T iz = f.iz, iz2 = iz * iz;
  const T j00 = cam.fx * iz, j01 = cam.sk * iz, j02 = -(cam.fx * f.tx + cam.sk * f.ty) * iz2;
  const T j11 = cam.fy * iz, j12 = -cam.fy * f.ty * iz2;
  for (int m = 0; m < 3; ++m) {
    f.JW0[m] = j00 * cam.R[m][0] + j01 * cam.R[m][1] + j02 * cam.R[m][2];
    f.JW1[m] = j11 * cam.R[m][1] + j12 * cam.R[m][2];
  }
  const T nq = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  f.qnorm = nq;
  const T nqc = std::max(nq, T(1e-12));
  for (int k = 0; k < 4; ++k) f.qn[k] = q[k] / nqc;
  const T w = f.qn[0], x = f.qn[1], y = f.qn[2], z = f.qn[3];
  f.Rq[0][0] = 1 - 2 * (y * y + z * z);
  f.Rq[0][1] = 2 * (x * y - w * z);
  f.Rq[0][2] = 2 * (x * z + w * y);
  f.Rq[1][0] = 2 * (x * y + w * z);
  f.Rq[1][1] = 1 - 2 * (x * x + z * z);
  f.Rq[1][2] = 2 * (y * z - w * x);
  f.Rq[2][0] = 2 * (x * z - w * y);
  f.Rq[2][1] = 2 * (y * z + w * x);
  f.Rq[2][2] = 1 - 2 * (x * x + y * y);
  for (int j = 0; j < 3; ++j) {
    f.G0[j] = f.JW0[0] * f.Rq[0][j] + f.JW0[1] * f.Rq[1][j] + f.JW0[2] * f.Rq[2][j];
    f.G1[j] = f.JW1[0] * f.Rq[0][j] + f.JW1[1] * f.Rq[1][j] + f.JW1[2] * f.Rq[2][j];
    f.sq[j] = s[j] * s[j];
  }
  f.a = f.sq[0] * f.G0[0] * f.G0[0] + f.sq[1] * f.G0[1] * f.G0[1] + f.sq[2] * f.G0[2] * f.G0[2] + eps2d;
  f.b = f.sq[0] * f.G0[0] * f.G1[0] + f.sq[1] * f.G0[1] * f.G1[1] + f.sq[2] * f.G0[2] * f.G1[2];
  f.c = f.sq[0] * f.G1[0] * f.G1[0] + f.sq[1] * f.G1[1] * f.G1[1] + f.sq[2] * f.G1[2] * f.G1[2] + eps2d;
  f.det_raw = f.a * f.c - f.b * f.b;
  f.det = std::max(f.det_raw, std::numeric_limits<T>::min());
  f.tnorm = std::sqrt(f.tx * f.tx + f.ty * f.ty + f.tz * f.tz);
  f.detJ = cam.fx * cam.fy * f.tnorm * iz * iz * iz;
  f.svol = std::abs(s[0] * s[1] * s[2]);
}

constexpr double kSqrt2Pi = 2.5066282746310002;
constexpr double kRadiusSlack = 1e-3;  // as the reference's _RADIUS_SLACK

template <typename T>
void project_forward_loop(const T* means, const T* scales, const T* quats, const T* density, const Camera<T>& cam,
                          int64_t n, T eps2d, T near, T cutoff, int64_t width, int64_t height, T* mean2d, T* conic,
                          T* weight, T* radius, T* depth) {
  const int threads = n >= 4096 ? num_threads() : 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) {
    Fwd<T> f;
    forward_one(cam, &means[3 * i], &scales[3 * i], &quats[4 * i], eps2d, near, f);
    const T u = (cam.fx * f.tx + cam.sk * f.ty) * f.iz + cam.cx;
    const T v = cam.fy * f.ty * f.iz + cam.cy;
    mean2d[2 * i] = u;
    mean2d[2 * i + 1] = v;
    const T inv_det = T(1) / f.det;
    conic[3 * i] = f.c * inv_det;
    conic[3 * i + 1] = -f.b * inv_det;
    conic[3 * i + 2] = f.a * inv_det;
    const T wgt = density[i] * (static_cast<T>(kSqrt2Pi) * f.detJ * f.svol * (T(1) / std::sqrt(f.det)));
    weight[i] = f.visible ? wgt : T(0);
    depth[i] = f.tz_raw;
    const T half_tr = T(0.5) * (f.a + f.c), hd = T(0.5) * (f.a - f.c);
    const T lam_max = half_tr + std::sqrt(hd * hd + f.b * f.b);
    T r = cutoff * std::sqrt(lam_max) + static_cast<T>(kRadiusSlack);
    const bool on_image = (u + r >= 0) && (u - r <= T(width - 1)) && (v + r >= 0) && (v - r <= T(height - 1));
    const bool keep = f.visible && on_image && std::isfinite(r) && std::isfinite(u) && std::isfinite(v);
    radius[i] = keep ? r : T(0);
  }
}

template <typename T>
void project_backward_loop(const T* means, const T* scales, const T* quats, const T* density, const Camera<T>& cam,
                           int64_t n, T eps2d, T near, const T* g_mean2d, const T* g_conic, const T* g_weight,
                           T* g_means, T* g_scales, T* g_quats, T* g_density) {
  const int threads = n >= 4096 ? num_threads() : 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) {
    Fwd<T> f;
    const T* s = &scales[3 * i];
    forward_one(cam, &means[3 * i], s, &quats[4 * i], eps2d, near, f);
    const T gu = g_mean2d[2 * i], gv = g_mean2d[2 * i + 1];
    const T gA = g_conic[3 * i], gB = g_conic[3 * i + 1], gC = g_conic[3 * i + 2];
    const T gw = f.visible ? g_weight[i] : T(0);
    const T iz = f.iz, iz2 = iz * iz;
    const T rs = T(1) / std::sqrt(f.det);
    const T k0 = static_cast<T>(kSqrt2Pi);
    // weight = rho k0 detJ svol det^-1/2
    g_density[i] = gw * (k0 * f.detJ * f.svol * rs);
    const T g_detJ = gw * density[i] * k0 * f.svol * rs;
    const T g_svol = gw * density[i] * k0 * f.detJ * rs;
    T g_det = gw * density[i] * k0 * f.detJ * f.svol * (T(-0.5) * rs / f.det);
    // conic = (c, -b, a) / det
    const T inv_det = T(1) / f.det;
    g_det += -(gA * f.c - gB * f.b + gC * f.a) * inv_det * inv_det;
    T ga = gC * inv_det, gb = -gB * inv_det, gc = gA * inv_det;
    if (f.det_raw >= std::numeric_limits<T>::min()) {  // det = a c - b^2 (no gradient where clamped)
      ga += g_det * f.c;
      gc += g_det * f.a;
      gb += T(-2) * f.b * g_det;
    }
    // a, b, c from sq and G0, G1
    T gG0[3], gG1[3], gsq[3];
    for (int j = 0; j < 3; ++j) {
      gsq[j] = ga * f.G0[j] * f.G0[j] + gb * f.G0[j] * f.G1[j] + gc * f.G1[j] * f.G1[j];
      gG0[j] = T(2) * ga * f.sq[j] * f.G0[j] + gb * f.sq[j] * f.G1[j];
      gG1[j] = T(2) * gc * f.sq[j] * f.G1[j] + gb * f.sq[j] * f.G0[j];
    }
    const T prod = s[0] * s[1] * s[2];
    const T sgn = prod > 0 ? T(1) : (prod < 0 ? T(-1) : T(0));
    g_scales[3 * i] = T(2) * s[0] * gsq[0] + g_svol * sgn * s[1] * s[2];
    g_scales[3 * i + 1] = T(2) * s[1] * gsq[1] + g_svol * sgn * s[0] * s[2];
    g_scales[3 * i + 2] = T(2) * s[2] * gsq[2] + g_svol * sgn * s[0] * s[1];
    // G_r[j] = sum_m JW_r[m] Rq[m][j]
    T gJW0[3], gJW1[3], gRq[3][3];
    for (int m = 0; m < 3; ++m) {
      gJW0[m] = gG0[0] * f.Rq[m][0] + gG0[1] * f.Rq[m][1] + gG0[2] * f.Rq[m][2];
      gJW1[m] = gG1[0] * f.Rq[m][0] + gG1[1] * f.Rq[m][1] + gG1[2] * f.Rq[m][2];
      for (int j = 0; j < 3; ++j) gRq[m][j] = gG0[j] * f.JW0[m] + gG1[j] * f.JW1[m];
    }
    // Rq from the normalised quaternion (w, x, y, z)
    const T w = f.qn[0], x = f.qn[1], y = f.qn[2], z = f.qn[3];
    const T gw_q = T(2) * (-z * gRq[0][1] + y * gRq[0][2] + z * gRq[1][0] - x * gRq[1][2] - y * gRq[2][0] +
                           x * gRq[2][1]);
    const T gx_q = T(2) * (y * gRq[0][1] + z * gRq[0][2] + y * gRq[1][0] - T(2) * x * gRq[1][1] - w * gRq[1][2] +
                           z * gRq[2][0] + w * gRq[2][1] - T(2) * x * gRq[2][2]);
    const T gy_q = T(2) * (T(-2) * y * gRq[0][0] + x * gRq[0][1] + w * gRq[0][2] + x * gRq[1][0] + z * gRq[1][2] -
                           w * gRq[2][0] + z * gRq[2][1] - T(2) * y * gRq[2][2]);
    const T gz_q = T(2) * (T(-2) * z * gRq[0][0] - w * gRq[0][1] + x * gRq[0][2] + w * gRq[1][0] -
                           T(2) * z * gRq[1][1] + y * gRq[1][2] + x * gRq[2][0] + y * gRq[2][1]);
    const T gqn[4] = {gw_q, gx_q, gy_q, gz_q};
    if (f.qnorm >= T(1e-12)) {  // qn = q / |q|
      const T dot = gqn[0] * f.qn[0] + gqn[1] * f.qn[1] + gqn[2] * f.qn[2] + gqn[3] * f.qn[3];
      for (int k = 0; k < 4; ++k) g_quats[4 * i + k] = (gqn[k] - f.qn[k] * dot) / f.qnorm;
    } else {
      for (int k = 0; k < 4; ++k) g_quats[4 * i + k] = gqn[k] / T(1e-12);
    }
    // JW from j00 .. j12, then those from t
    T gj00 = 0, gj01 = 0, gj02 = 0, gj11 = 0, gj12 = 0;
    for (int m = 0; m < 3; ++m) {
      gj00 += gJW0[m] * cam.R[m][0];
      gj01 += gJW0[m] * cam.R[m][1];
      gj02 += gJW0[m] * cam.R[m][2];
      gj11 += gJW1[m] * cam.R[m][1];
      gj12 += gJW1[m] * cam.R[m][2];
    }
    const T numu = cam.fx * f.tx + cam.sk * f.ty;
    T gtx = gj02 * (-cam.fx * iz2) + gu * cam.fx * iz;
    T gty = gj02 * (-cam.sk * iz2) + gj12 * (-cam.fy * iz2) + gu * cam.sk * iz + gv * cam.fy * iz;
    T giz = gj00 * cam.fx + gj01 * cam.sk + gj02 * (T(-2) * numu * iz) + gj11 * cam.fy +
            gj12 * (T(-2) * cam.fy * f.ty * iz) + gu * numu + gv * cam.fy * f.ty;
    // detJ = fx fy |t| iz^3
    const T g_tnorm = g_detJ * cam.fx * cam.fy * iz2 * iz;
    giz += g_detJ * cam.fx * cam.fy * f.tnorm * T(3) * iz2;
    T gtz = 0;
    if (f.tnorm > 0) {
      gtx += g_tnorm * f.tx / f.tnorm;
      gty += g_tnorm * f.ty / f.tnorm;
      gtz += g_tnorm * f.tz / f.tnorm;
    }
    gtz += -giz * iz2;
    if (!f.visible) gtz = 0;  // tz was a constant there
    // t = W (p - src): dp = R dt
    for (int k = 0; k < 3; ++k) g_means[3 * i + k] = cam.R[k][0] * gtx + cam.R[k][1] * gty + cam.R[k][2] * gtz;
  }
}

void check_project_inputs(const at::Tensor& means, const at::Tensor& scales, const at::Tensor& quats,
                          const at::Tensor& density, const at::Tensor& camera) {
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be [N, 3], got ", means.sizes());
  const int64_t n = means.size(0);
  const auto dtype = means.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "Gaussian tensors must be float32 or float64");
  IXGS_CHECK_INPUT(means, dtype);
  IXGS_CHECK_INPUT(scales, dtype);
  IXGS_CHECK_INPUT(quats, dtype);
  IXGS_CHECK_INPUT(density, dtype);
  IXGS_CHECK_INPUT(camera, at::kDouble);
  IXGS_CHECK_SHAPE(scales, n, 3);
  IXGS_CHECK_SHAPE(quats, n, 4);
  IXGS_CHECK_SHAPE(density, n);
  IXGS_CHECK_SHAPE(camera, 17);
}

}  // namespace

std::vector<at::Tensor> project_forward(const at::Tensor& means, const at::Tensor& scales, const at::Tensor& quats,
                                        const at::Tensor& density, const at::Tensor& camera, double eps2d,
                                        double near, double sigma_cutoff, int64_t width, int64_t height) {
  check_project_inputs(means, scales, quats, density, camera);
  const int64_t n = means.size(0);
  auto opts = means.options();
  at::Tensor mean2d = new_output({n, 2}, opts), conic = new_output({n, 3}, opts), weight = new_output({n}, opts),
             radius = new_output({n}, opts), depth = new_output({n}, opts);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
    const Camera<scalar_t> cam(camera.data_ptr<double>());
    project_forward_loop<scalar_t>(means.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
                                   quats.data_ptr<scalar_t>(), density.data_ptr<scalar_t>(), cam, n,
                                   static_cast<scalar_t>(eps2d), static_cast<scalar_t>(near),
                                   static_cast<scalar_t>(sigma_cutoff), width, height, mean2d.data_ptr<scalar_t>(),
                                   conic.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                                   radius.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>());
  });
  return {mean2d, conic, weight, radius, depth};
}

std::vector<at::Tensor> project_backward(const at::Tensor& means, const at::Tensor& scales, const at::Tensor& quats,
                                         const at::Tensor& density, const at::Tensor& camera, double eps2d,
                                         double near, const at::Tensor& grad_mean2d, const at::Tensor& grad_conic,
                                         const at::Tensor& grad_weight) {
  check_project_inputs(means, scales, quats, density, camera);
  const int64_t n = means.size(0);
  const auto dtype = means.scalar_type();
  IXGS_CHECK_INPUT(grad_mean2d, dtype);
  IXGS_CHECK_INPUT(grad_conic, dtype);
  IXGS_CHECK_INPUT(grad_weight, dtype);
  IXGS_CHECK_SHAPE(grad_mean2d, n, 2);
  IXGS_CHECK_SHAPE(grad_conic, n, 3);
  IXGS_CHECK_SHAPE(grad_weight, n);
  auto opts = means.options();
  at::Tensor g_means = new_output({n, 3}, opts), g_scales = new_output({n, 3}, opts),
             g_quats = new_output({n, 4}, opts), g_density = new_output({n}, opts);
  AT_DISPATCH_FLOATING_TYPES(dtype, "project_backward", [&] {
    const Camera<scalar_t> cam(camera.data_ptr<double>());
    project_backward_loop<scalar_t>(
        means.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(),
        density.data_ptr<scalar_t>(), cam, n, static_cast<scalar_t>(eps2d), static_cast<scalar_t>(near),
        grad_mean2d.data_ptr<scalar_t>(), grad_conic.data_ptr<scalar_t>(), grad_weight.data_ptr<scalar_t>(),
        g_means.data_ptr<scalar_t>(), g_scales.data_ptr<scalar_t>(), g_quats.data_ptr<scalar_t>(),
        g_density.data_ptr<scalar_t>());
  });
  return {g_means, g_scales, g_quats, g_density};
}

}  // namespace ixgs
