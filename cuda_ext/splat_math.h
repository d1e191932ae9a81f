// Shared per-element maths of the ixgs splatting kernels (rasterizer and voxelizer).
//
// Everything here is header-only and usable from host C++ and (later) CUDA device code: functions are marked
// IXGS_HD, which expands to `__host__ __device__` under nvcc. The definitions mirror the pure-torch reference
// in ixgs_ros/engine/render.py and ixgs_ros/engine/voxelize.py operation by operation (same formulas,
// same evaluation order) so both backends agree to rounding.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define IXGS_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always inlined: the CPU kernels compile their hot loops once per instruction set (baseline and AVX2, see
// cpu_common.h), which only works when these helpers are inlined into the ISA-specific functions
#define IXGS_HD inline __attribute__((always_inline))
#else
#define IXGS_HD inline
#endif

namespace ixgs {

// Image tiles (pixels per side) and volume bricks (voxels per side) used to bin splats for the gather kernels.
constexpr int kTile = 16;
constexpr int kBrick = 8;

// exp(x) for the kernels' hot loops. float: a branch-free Cody-Waite range reduction with a degree-7 polynomial
// (max relative error 1.2e-7, i.e. about 1 ulp), written so that compilers vectorise it (no calls, no branches);
// arguments are clamped to [-87, 88]. double: the C library exp.
IXGS_HD float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;  // two plain selects (a nested one defeats GCC's vectoriser)
  x = x > 88.0f ? 88.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer kept in the low mantissa bits
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  float r = x - n * 0.693359375f;  // ln 2 split in a short high part and a correction (Cody-Waite)
  r = r - n * -2.12194440e-4f;
  // e^r = 1 + r + r^2 P(r), P of degree 5 (Cephes expf coefficients) evaluated with Estrin's scheme: a
  // shallow dependency chain, so the vector units overlap neighbouring evaluations
  const float r2 = r * r;
  const float p01 = 5.0000001201e-1f + 1.6666665459e-1f * r;
  const float p23 = 4.1665795894e-2f + 8.3334519073e-3f * r;
  const float p45 = 1.3981999507e-3f + 1.9875691500e-4f * r;
  const float p = (r + 1.0f) + r2 * ((p01 + r2 * p23) + (r2 * r2) * p45);
  // 2^n from the integer in t's mantissa (integer ops only: no float->int conversion)
#if defined(__CUDA_ARCH__)
  const float scale = __int_as_float((__float_as_int(t) - 0x4B400000 + 127) << 23);
#else
  int32_t tb;
  __builtin_memcpy(&tb, &t, sizeof(tb));
  const int32_t bits = (tb - 0x4B400000 + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
#endif
  return p * scale;
}

IXGS_HD double fast_exp(double x) {
  using std::exp;
  return exp(x);
}

// ------------------------------------------------------------------------------------------------ 2D splats
// power = 1/2 d^T [[a, b], [b, c]] d with d = (dx, dy). A pixel is inside the splat iff power <= cut, where
// cut = sigma_cutoff^2 / 2.
template <typename T>
IXGS_HD T splat_power(T a, T b, T c, T dx, T dy) {
  return T(0.5) * (a * dx * dx + c * dy * dy) + b * dx * dy;
}

// Inclusive pixel box of a splat, clamped to the image. It is the radius box of the torch reference
// (_pixel_boxes in gaussians_render.py: u +- radius, v +- radius) intersected with the tight bounding box of
// the sigma ellipse (half sizes sigma sqrt(Sigma_uu), sigma sqrt(Sigma_vv), from the conic, padded by 1e-4
// relative + 1e-3 px). Both contain every pixel that passes the ellipse test, so which one is used changes no
// value, only the work. Returns false when the box is empty or the splat is culled (radius <= 0).
template <typename T>
IXGS_HD bool splat_pixel_box(T u, T v, T a, T b, T c, T radius, T sigma, int width, int height, int& x0, int& x1,
                             int& y0, int& y1) {
  using std::ceil;
  using std::floor;
  using std::sqrt;
  if (!(radius > T(0))) return false;
  T hx = radius, hy = radius;
  const T det = a * c - b * b;
  if (a > T(0) && c > T(0) && det > T(0)) {
    const T tx = sigma * sqrt(c / det) * T(1.0001) + T(1e-3);
    const T ty = sigma * sqrt(a / det) * T(1.0001) + T(1e-3);
    hx = tx < hx ? tx : hx;
    hy = ty < hy ? ty : hy;
  }
  T fx0 = ceil(u - hx), fx1 = floor(u + hx), fy0 = ceil(v - hy), fy1 = floor(v + hy);
  fx0 = fx0 < T(0) ? T(0) : (fx0 > T(width - 1) ? T(width - 1) : fx0);
  fx1 = fx1 < T(-1) ? T(-1) : (fx1 > T(width - 1) ? T(width - 1) : fx1);
  fy0 = fy0 < T(0) ? T(0) : (fy0 > T(height - 1) ? T(height - 1) : fy0);
  fy1 = fy1 < T(-1) ? T(-1) : (fy1 > T(height - 1) ? T(height - 1) : fy1);
  if (!(fx0 <= fx1) || !(fy0 <= fy1)) return false;  // also rejects NaN
  x0 = static_cast<int>(fx0);
  x1 = static_cast<int>(fx1);
  y0 = static_cast<int>(fy0);
  y1 = static_cast<int>(fy1);
  return true;
}

// Gradient of sum over pixels of g_pix * w exp(-power_pix) w.r.t. g = (mean_u, mean_v, a, b, c, w), written to g,
// from the moments of ge = g_pix exp(-power_pix) over the pixels inside the ellipse, d = pixel - mean:
// m = (sum ge, sum ge dx, sum ge dy, sum ge dx^2, sum ge dx dy, sum ge dy^2). With dL/dpower = -w ge:
//   dL/dw = m0,  dL/da = -w m3 / 2,  dL/db = -w m4,  dL/dc = -w m5 / 2,
//   dL/dmean = -sum dL/dpower (conic d) = w (a m1 + b m2,  b m1 + c m2).
template <typename T>
IXGS_HD void splat_grad_from_moments(T a, T b, T c, T w, const double* m, double* g) {
  const double W = w, A = a, B = b, C = c;
  g[0] = W * (A * m[1] + B * m[2]);
  g[1] = W * (B * m[1] + C * m[2]);
  g[2] = -0.5 * W * m[3];
  g[3] = -W * m[4];
  g[4] = -0.5 * W * m[5];
  g[5] = m[0];
}

// ------------------------------------------------------------------------------------------------ 3D voxels
// Inverse covariance packed as q = (xx, xy, xz, yy, yz, zz); power = 1/2 d^T Q d.
template <typename T>
IXGS_HD T voxel_power(const T* q, T dx, T dy, T dz) {
  return T(0.5) * (q[0] * dx * dx + q[3] * dy * dy + q[5] * dz * dz) +
         (q[1] * dx * dy + q[2] * dx * dz + q[4] * dy * dz);
}

// World position of voxel (i, j, k) minus the Gaussian mean, in double, with a fixed evaluation order
// ((A0 i + A1 j) + A2 k) + A3 - p that the torch reference reproduces.
IXGS_HD double voxel_offset(const double* A_row, double i, double j, double k, double p) {
  return (((A_row[0] * i + A_row[1] * j) + A_row[2] * k) + A_row[3]) - p;
}

// Gradient of sum over voxels of g_v * rho exp(-power_v) from the moments of ge = g_v exp(-power_v) over the
// voxels inside the box: m = (sum ge, sum ge dx, sum ge dy, sum ge dz, sum ge dx^2, sum ge dx dy, sum ge dx dz,
// sum ge dy^2, sum ge dy dz, sum ge dz^2). Adds to g = (mean xyz, q[6], rho):
//   dL/drho = m0,  dL/dq = -rho (m_xx / 2, m_xy, m_xz, m_yy / 2, m_yz, m_zz / 2),  dL/dmean = rho Q (m_x, m_y, m_z).
template <typename T>
IXGS_HD void voxel_grad_from_moments(const T* q, T rho, const double* m, double* g) {
  const double r = rho;
  const double q0 = q[0], q1 = q[1], q2 = q[2], q3 = q[3], q4 = q[4], q5 = q[5];
  g[0] += r * (q0 * m[1] + q1 * m[2] + q2 * m[3]);
  g[1] += r * (q1 * m[1] + q3 * m[2] + q4 * m[3]);
  g[2] += r * (q2 * m[1] + q4 * m[2] + q5 * m[3]);
  g[3] -= 0.5 * r * m[4];
  g[4] -= r * m[5];
  g[5] -= r * m[6];
  g[6] -= 0.5 * r * m[7];
  g[7] -= r * m[8];
  g[8] -= 0.5 * r * m[9];
  g[9] += m[0];
}

}  // namespace ixgs
