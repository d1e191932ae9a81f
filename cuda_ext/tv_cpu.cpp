// CPU (OpenMP) total-variation denoising: Chambolle & Pock's primal-dual iterations on the ROF model, the same
// algorithm and update order as the torch reference (ixgs_ros/engine/tv.py `_rof`), fused into two sweeps per
// iteration instead of a dozen whole-volume tensor operations with temporaries.
//
// Per iteration, with forward differences (the last one along each axis is 0) and Neumann boundaries:
//   sweep 1, per voxel:  p_a += sigma * (ub[x + e_a] - ub[x]) for each axis a with x_a < n_a - 1;
//                        p /= max(1, |p| / w[x])                       (projection onto |p| <= w)
//   sweep 2, per voxel:  d = sum_a (p_a[x] if x_a < n_a - 1) - (p_a[x - e_a] if x_a > 0)   (div p)
//                        u_new = (u + tau * d + tau * f) / (1 + tau);  ub = 2 u_new - u;  u = u_new
// Sweep 1 writes p at x only and reads ub; sweep 2 reads p and writes u, ub at x only: each sweep is
// parallel over voxels, with one barrier between them. Operations per element are those of the reference, in
// its order (no FMA contraction is enabled), so both agree to float rounding.
#include "tv.h"
#include "cpu_common.h"

#include <ATen/ops/zeros.h>

#include <cmath>

namespace ixgs {

namespace {

template <typename scalar_t>
void rof_loop(const scalar_t* f, const scalar_t* w, bool w_is_map, scalar_t* u, scalar_t* ub, scalar_t* p,
              int64_t ni, int64_t nj, int64_t nk, int64_t iterations) {
  const scalar_t tau = scalar_t(0.25), sigma = scalar_t(1.0) / scalar_t(3.0);
  const int64_t sj = nk, si = nj * nk, n = ni * si;
  scalar_t* p0 = p;
  scalar_t* p1 = p + n;
  scalar_t* p2 = p + 2 * n;
  // a parallel region per sweep costs a team wake-up: small volumes stay on the calling thread
  const int threads = n >= (int64_t(1) << 15) ? num_threads() : 1;
  for (int64_t it = 0; it < iterations; ++it) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && ni > 1)
    for (int64_t i = 0; i < ni; ++i) {
      for (int64_t j = 0; j < nj; ++j) {
        const int64_t row = i * si + j * sj;
        const bool has_i = i < ni - 1, has_j = j < nj - 1;
        for (int64_t k = 0; k < nk; ++k) {
          const int64_t x = row + k;
          const scalar_t c = ub[x];
          scalar_t a0 = p0[x], a1 = p1[x], a2 = p2[x];
          if (has_i) a0 = a0 + sigma * (ub[x + si] - c);
          if (has_j) a1 = a1 + sigma * (ub[x + sj] - c);
          if (k < nk - 1) a2 = a2 + sigma * (ub[x + 1] - c);
          scalar_t norm = std::sqrt(a0 * a0 + a1 * a1 + a2 * a2) / (w_is_map ? w[x] : w[0]);
          if (norm < scalar_t(1)) norm = scalar_t(1);
          p0[x] = a0 / norm;
          p1[x] = a1 / norm;
          p2[x] = a2 / norm;
        }
      }
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && ni > 1)
    for (int64_t i = 0; i < ni; ++i) {
      for (int64_t j = 0; j < nj; ++j) {
        const int64_t row = i * si + j * sj;
        for (int64_t k = 0; k < nk; ++k) {
          const int64_t x = row + k;
          scalar_t d = scalar_t(0);
          if (i < ni - 1) d = d + p0[x];
          if (i > 0) d = d - p0[x - si];
          if (j < nj - 1) d = d + p1[x];
          if (j > 0) d = d - p1[x - sj];
          if (k < nk - 1) d = d + p2[x];
          if (k > 0) d = d - p2[x - 1];
          const scalar_t uo = u[x];
          const scalar_t un = (uo + tau * d + tau * f[x]) / (scalar_t(1) + tau);
          ub[x] = scalar_t(2) * un - uo;
          u[x] = un;
        }
      }
    }
  }
}

}  // namespace

at::Tensor tv_rof(const at::Tensor& f, const at::Tensor& w, int64_t iterations) {
  TORCH_CHECK(f.dim() == 3, "f must be a 3D volume, got shape ", f.sizes());
  const auto dtype = f.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "f must be float32 or float64");
  IXGS_CHECK_INPUT(f, dtype);
  IXGS_CHECK_INPUT(w, dtype);
  const bool is_map = w.dim() == 3;
  TORCH_CHECK(is_map ? w.sizes() == f.sizes() : w.numel() == 1,
              "w must be one weight or a map of f's shape ", f.sizes(), ", got ", w.sizes());
  TORCH_CHECK(iterations >= 0, "iterations must be >= 0, got ", iterations);
  at::Tensor u = f.clone();
  at::Tensor ub = f.clone();
  at::Tensor p = at::zeros({3, f.size(0), f.size(1), f.size(2)}, f.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "tv_rof", [&] {
    rof_loop<scalar_t>(f.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), is_map, u.data_ptr<scalar_t>(),
                       ub.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), f.size(0), f.size(1), f.size(2),
                       iterations);
  });
  return u;
}

}  // namespace ixgs
