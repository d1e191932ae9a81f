// CPU (OpenMP) voxelizer: the Gaussian density field sampled at the voxel centres of any affine grid,
// with explicit backward.
//
// Every Gaussian touches the voxels whose centres lie in its axis-aligned 3-sigma world box
// (|x_d - p_d| <= extent_d = 3 sqrt(Sigma_dd)); `bounds` are conservative index ranges of that box (computed
// by the caller from the inverse affine). Gaussians are binned into 8x8x8 voxel bricks; bricks are processed
// in parallel, each gathering its Gaussians into a private buffer (no atomics). Within a brick the offset to
// the mean is affine in (j, k): each i-slab starts from a double-precision offset (as the torch reference
// computes it) and steps in the working precision; brick rows (8 voxels along k) are fixed-width vector loops
// with the exact box test as mask. Backward mirrors this: per-(brick,
// Gaussian) moments, reduced in pair order (deterministic). float32 passes have baseline and AVX2 variants.
#include "ixgs_kernels.h"
#include "cpu_common.h"
#include "splat_math.h"

#include <cmath>

namespace ixgs {

namespace {

constexpr int kBrickVox = kBrick * kBrick * kBrick;

struct BrickGrid {
  int64_t size[3];
  int64_t nb[3];
  BrickGrid(int64_t i, int64_t j, int64_t k) {
    size[0] = i;
    size[1] = j;
    size[2] = k;
    for (int d = 0; d < 3; ++d) nb[d] = (size[d] + kBrick - 1) / kBrick;
  }
  int64_t count() const { return nb[0] * nb[1] * nb[2]; }
  void origin(int64_t brick, int64_t* o) const {
    o[2] = (brick % nb[2]) * kBrick;
    o[1] = ((brick / nb[2]) % nb[1]) * kBrick;
    o[0] = (brick / (nb[1] * nb[2])) * kBrick;
  }
};

void check_gaussians(const at::Tensor& means, const at::Tensor& icov, const at::Tensor& density,
                     const at::Tensor& extent, const at::Tensor& bounds, const at::Tensor& affine) {
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be [N, 3], got ", means.sizes());
  const int64_t n = means.size(0);
  const auto dtype = means.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "Gaussian tensors must be float32 or float64");
  IXGS_CHECK_INPUT(means, dtype);
  IXGS_CHECK_INPUT(icov, dtype);
  IXGS_CHECK_INPUT(density, dtype);
  IXGS_CHECK_INPUT(extent, dtype);
  IXGS_CHECK_INPUT(bounds, at::kInt);
  IXGS_CHECK_INPUT(affine, at::kDouble);
  IXGS_CHECK_SHAPE(icov, n, 6);
  IXGS_CHECK_SHAPE(density, n);
  IXGS_CHECK_SHAPE(extent, n, 3);
  IXGS_CHECK_SHAPE(bounds, n, 6);
  IXGS_CHECK_SHAPE(affine, 3, 4);
}

// Clamp a Gaussian's index bounds to the grid; false when empty.
inline bool clamp_bounds(const int32_t* b, const BrickGrid& bg, int32_t* out) {
  for (int d = 0; d < 3; ++d) {
    out[2 * d] = std::max<int32_t>(b[2 * d], 0);
    out[2 * d + 1] = std::min<int32_t>(b[2 * d + 1], static_cast<int32_t>(bg.size[d] - 1));
    if (out[2 * d] > out[2 * d + 1]) return false;
  }
  return true;
}

void bin_gaussians(int64_t n, const int32_t* bounds, const BrickGrid& bg, at::Tensor& offsets, at::Tensor& ids) {
  std::vector<int32_t> bbox(static_cast<size_t>(n) * 6);
  serial_for(0, n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int32_t r[6];
      int32_t* o = &bbox[i * 6];
      if (clamp_bounds(&bounds[i * 6], bg, r)) {
        for (int k = 0; k < 6; ++k) o[k] = r[k] / kBrick;
      } else {
        o[0] = 1;
        o[1] = 0;
        o[2] = o[3] = o[4] = o[5] = 0;
      }
    }
  });
  bin_boxes<3>(n, bbox, bg.nb, offsets, ids);
}

// Everything one brick pass needs (plain pointers, no tensors).
template <typename T>
struct VoxelArgs {
  const T* mu;
  const T* q;
  const T* rho;
  const T* ext;
  const int32_t* bounds;
  const double* A;  // [3, 4] index -> world
  const int32_t* off;
  const int32_t* id;
  BrickGrid bg;
  int64_t pairs;
};

// One i-slab of one Gaussian inside a brick: voxels (ii, jj, k) for jj in [j0, j0 + nj) and the brick's 8 k
// values, u = k - brick origin. Offsets to the mean are d(j, u) = d0 + sj * j + sk * u (j = jj - j0): d0 is
// computed in double (the torch reference's formula), the steps are taken in the working precision (the offsets
// stay small, so this costs no accuracy). [u0, u1] is the Gaussian's k index range inside the brick.
template <typename T>
struct VoxelSlab {
  T d0[3], sj[3], sk[3];
  int nj, u0, u1;
  int64_t offset;  // brick-buffer index of voxel (ii, j0, brick k origin)
};

// Visit the i-slabs of brick `brick` that Gaussian `i`'s index bounds touch.
template <typename T, typename Fn>
IXGS_HD void for_gaussian_slabs_in_brick(const VoxelArgs<T>& V, int64_t i, int64_t brick, Fn&& fn) {
  int32_t r[6];
  if (!clamp_bounds(&V.bounds[i * 6], V.bg, r)) return;
  int64_t b0[3];
  V.bg.origin(brick, b0);
  int32_t lo[3], hi[3];
  for (int d = 0; d < 3; ++d) {
    lo[d] = std::max<int32_t>(r[2 * d], static_cast<int32_t>(b0[d]));
    hi[d] = std::min<int32_t>(r[2 * d + 1], static_cast<int32_t>(b0[d] + kBrick - 1));
    if (lo[d] > hi[d]) return;
  }
  const double p[3] = {static_cast<double>(V.mu[3 * i]), static_cast<double>(V.mu[3 * i + 1]),
                       static_cast<double>(V.mu[3 * i + 2])};
  VoxelSlab<T> slab;
  for (int r3 = 0; r3 < 3; ++r3) {
    slab.sj[r3] = static_cast<T>(V.A[4 * r3 + 1]);
    slab.sk[r3] = static_cast<T>(V.A[4 * r3 + 2]);
  }
  slab.nj = hi[1] - lo[1] + 1;
  slab.u0 = lo[2] - static_cast<int32_t>(b0[2]);
  slab.u1 = hi[2] - static_cast<int32_t>(b0[2]);
  for (int32_t ii = lo[0]; ii <= hi[0]; ++ii) {
    for (int r3 = 0; r3 < 3; ++r3)
      slab.d0[r3] = static_cast<T>(voxel_offset(V.A + 4 * r3, ii, lo[1], static_cast<double>(b0[2]), p[r3]));
    slab.offset = ((ii - b0[0]) * kBrick + (lo[1] - b0[1])) * kBrick;
    fn(slab);
  }
}

// Forward of one brick: acc[v] += rho exp(-power) for the voxels inside each listed Gaussian's box.
template <typename T>
IXGS_HD void forward_brick(const VoxelArgs<T>& V, int64_t br, T* vol) {
  T acc[kBrickVox];
  for (int k = 0; k < kBrickVox; ++k) acc[k] = T(0);
  for (int32_t p = V.off[br]; p < V.off[br + 1]; ++p) {
    const int64_t i = V.id[p];
    const T* q = &V.q[6 * i];
    const T qq[6] = {q[0], q[1], q[2], q[3], q[4], q[5]};
    const T ex = V.ext[3 * i], ey = V.ext[3 * i + 1], ez = V.ext[3 * i + 2], rho = V.rho[i];
    for_gaussian_slabs_in_brick<T>(V, i, br, [&](const VoxelSlab<T>& s) {
      const T skx = s.sk[0], sky = s.sk[1], skz = s.sk[2];
      const int u0 = s.u0, u1 = s.u1;
      for (int j = 0; j < s.nj; ++j) {
        T* __restrict out = acc + s.offset + j * kBrick;
        const T fj = static_cast<T>(j);
        const T bx = s.d0[0] + s.sj[0] * fj, by = s.d0[1] + s.sj[1] * fj, bz = s.d0[2] + s.sj[2] * fj;
#pragma omp simd
        for (int u = 0; u < kBrick; ++u) {
          const T fu = static_cast<T>(u);
          const T dx = bx + skx * fu, dy = by + sky * fu, dz = bz + skz * fu;
          const T power = voxel_power<T>(qq, dx, dy, dz);
          const T v = rho * fast_exp(-power);
          const bool in = u >= u0 && u <= u1 && std::abs(dx) <= ex && std::abs(dy) <= ey && std::abs(dz) <= ez;
          out[u] += in ? v : T(0);
        }
      }
    });
  }
  int64_t b0[3];
  V.bg.origin(br, b0);
  const int64_t SJ = V.bg.size[1], SK = V.bg.size[2];
  const int64_t ie = std::min(V.bg.size[0], b0[0] + kBrick), je = std::min(SJ, b0[1] + kBrick),
                ke = std::min(SK, b0[2] + kBrick);
  for (int64_t ii = b0[0]; ii < ie; ++ii)
    for (int64_t jj = b0[1]; jj < je; ++jj)
      for (int64_t kk = b0[2]; kk < ke; ++kk)
        vol[(ii * SJ + jj) * SK + kk] = acc[((ii - b0[0]) * kBrick + (jj - b0[1])) * kBrick + (kk - b0[2])];
}

// Backward of one brick: per (brick, Gaussian) pair the gradient (mean xyz, q[6], rho) from this brick's voxels,
// written to partial[10 p .. 10 p + 9], via the moments of ge = dL/dvoxel exp(-power) (voxel_grad_from_moments).
template <typename T>
IXGS_HD void backward_brick(const VoxelArgs<T>& V, int64_t br, const T* gvol, double* partial) {
  T gb[kBrickVox];  // incoming gradient of this brick (0 outside the grid)
  for (int k = 0; k < kBrickVox; ++k) gb[k] = T(0);
  int64_t b0[3];
  V.bg.origin(br, b0);
  const int64_t SJ = V.bg.size[1], SK = V.bg.size[2];
  const int64_t ie = std::min(V.bg.size[0], b0[0] + kBrick), je = std::min(SJ, b0[1] + kBrick),
                ke = std::min(SK, b0[2] + kBrick);
  for (int64_t ii = b0[0]; ii < ie; ++ii)
    for (int64_t jj = b0[1]; jj < je; ++jj)
      for (int64_t kk = b0[2]; kk < ke; ++kk)
        gb[((ii - b0[0]) * kBrick + (jj - b0[1])) * kBrick + (kk - b0[2])] = gvol[(ii * SJ + jj) * SK + kk];
  for (int32_t p = V.off[br]; p < V.off[br + 1]; ++p) {
    const int64_t i = V.id[p];
    const T* q = &V.q[6 * i];
    const T qq[6] = {q[0], q[1], q[2], q[3], q[4], q[5]};
    const T ex = V.ext[3 * i], ey = V.ext[3 * i + 1], ez = V.ext[3 * i + 2];
    T m[10][kBrick] = {};
    for_gaussian_slabs_in_brick<T>(V, i, br, [&](const VoxelSlab<T>& s) {
      const T skx = s.sk[0], sky = s.sk[1], skz = s.sk[2];
      const int u0 = s.u0, u1 = s.u1;
      for (int j = 0; j < s.nj; ++j) {
        const T* __restrict g = gb + s.offset + j * kBrick;
        const T fj = static_cast<T>(j);
        const T bx = s.d0[0] + s.sj[0] * fj, by = s.d0[1] + s.sj[1] * fj, bz = s.d0[2] + s.sj[2] * fj;
#pragma omp simd
        for (int u = 0; u < kBrick; ++u) {
          const T fu = static_cast<T>(u);
          const T dx = bx + skx * fu, dy = by + sky * fu, dz = bz + skz * fu;
          const T power = voxel_power<T>(qq, dx, dy, dz);
          const bool in = u >= u0 && u <= u1 && std::abs(dx) <= ex && std::abs(dy) <= ey && std::abs(dz) <= ez;
          const T e = in ? fast_exp(-power) : T(0);  // select on a register: keeps the loop vectorised
          const T ge = g[u] * e;
          const T gx = ge * dx, gy = ge * dy, gz = ge * dz;
          m[0][u] += ge;
          m[1][u] += gx;
          m[2][u] += gy;
          m[3][u] += gz;
          m[4][u] += gx * dx;
          m[5][u] += gx * dy;
          m[6][u] += gx * dz;
          m[7][u] += gy * dy;
          m[8][u] += gy * dz;
          m[9][u] += gz * dz;
        }
      }
    });
    double md[10];
    for (int k = 0; k < 10; ++k) {
      double acc = 0.0;
      for (int u = 0; u < kBrick; ++u) acc += static_cast<double>(m[k][u]);
      md[k] = acc;
    }
    double g[10] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    voxel_grad_from_moments<T>(q, V.rho[i], md, g);
    double* dst = &partial[static_cast<size_t>(p) * 10];
    for (int k = 0; k < 10; ++k) dst[k] = g[k];
  }
}

// Parallel passes over all bricks, one function per (dtype, instruction set) (see rasterize_cpu.cpp).
#define IXGS_VOXEL_PASSES(NAME, ATTR, T)                                                                     \
  ATTR void forward_pass_##NAME(const VoxelArgs<T>& V, T* vol) {                                            \
    const int64_t n = V.bg.count();                                                                         \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads()) if (worth_parallel(V.pairs, n))") \
    for (int64_t b = 0; b < n; ++b) forward_brick<T>(V, b, vol);                                             \
  }                                                                                                         \
  ATTR void backward_pass_##NAME(const VoxelArgs<T>& V, const T* g, double* partial) {                       \
    const int64_t n = V.bg.count();                                                                         \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads()) if (worth_parallel(V.pairs, n))") \
    for (int64_t b = 0; b < n; ++b) backward_brick<T>(V, b, g, partial);                                     \
  }

IXGS_VOXEL_PASSES(f64, , double)
IXGS_VOXEL_PASSES(f32, , float)
#if IXGS_HAVE_AVX2_VARIANT
IXGS_VOXEL_PASSES(f32_avx2, IXGS_TARGET_AVX2, float)
#endif

void forward_pass(const VoxelArgs<double>& V, double* vol) { forward_pass_f64(V, vol); }
void backward_pass(const VoxelArgs<double>& V, const double* g, double* partial) { backward_pass_f64(V, g, partial); }
void forward_pass(const VoxelArgs<float>& V, float* vol) {
#if IXGS_HAVE_AVX2_VARIANT
  if (use_avx2()) return forward_pass_f32_avx2(V, vol);
#endif
  forward_pass_f32(V, vol);
}
void backward_pass(const VoxelArgs<float>& V, const float* g, double* partial) {
#if IXGS_HAVE_AVX2_VARIANT
  if (use_avx2()) return backward_pass_f32_avx2(V, g, partial);
#endif
  backward_pass_f32(V, g, partial);
}

template <typename scalar_t>
VoxelArgs<scalar_t> voxel_args(const at::Tensor& means, const at::Tensor& icov, const at::Tensor& density,
                               const at::Tensor& extent, const at::Tensor& bounds, const at::Tensor& affine,
                               const at::Tensor& offsets, const at::Tensor& ids, const BrickGrid& bg) {
  return VoxelArgs<scalar_t>{means.data_ptr<scalar_t>(),  icov.data_ptr<scalar_t>(), density.data_ptr<scalar_t>(),
                             extent.data_ptr<scalar_t>(), bounds.data_ptr<int32_t>(), affine.data_ptr<double>(),
                             offsets.data_ptr<int32_t>(), ids.data_ptr<int32_t>(), bg, ids.numel()};
}

template <typename scalar_t>
void voxelize_forward_impl(const at::Tensor& means, const at::Tensor& icov, const at::Tensor& density,
                           const at::Tensor& extent, const at::Tensor& bounds, const at::Tensor& affine,
                           const BrickGrid& bg, const at::Tensor& offsets, const at::Tensor& ids,
                           at::Tensor& volume) {
  forward_pass(voxel_args<scalar_t>(means, icov, density, extent, bounds, affine, offsets, ids, bg),
               volume.data_ptr<scalar_t>());
}

template <typename scalar_t>
void voxelize_backward_impl(const at::Tensor& means, const at::Tensor& icov, const at::Tensor& density,
                            const at::Tensor& extent, const at::Tensor& bounds, const at::Tensor& affine,
                            const at::Tensor& brick_offsets, const at::Tensor& brick_ids,
                            const at::Tensor& grad_volume, const BrickGrid& bg, at::Tensor& g_means,
                            at::Tensor& g_icov, at::Tensor& g_density) {
  const int64_t n = means.size(0);
  TORCH_CHECK(brick_offsets.data_ptr<int32_t>()[bg.count()] == brick_ids.numel(),
              "brick_offsets and brick_ids do not match");
  std::vector<double> partial(static_cast<size_t>(brick_ids.numel()) * 10);
  backward_pass(voxel_args<scalar_t>(means, icov, density, extent, bounds, affine, brick_offsets, brick_ids, bg),
                grad_volume.data_ptr<scalar_t>(), partial.data());
  std::vector<scalar_t> packed(static_cast<size_t>(n) * 10);
  reduce_pairs<scalar_t, 10>(n, brick_ids, partial, packed.data());
  scalar_t* gm = g_means.data_ptr<scalar_t>();
  scalar_t* gq = g_icov.data_ptr<scalar_t>();
  scalar_t* gr = g_density.data_ptr<scalar_t>();
  serial_for(0, n, [&](int64_t bgn, int64_t end) {
    for (int64_t i = bgn; i < end; ++i) {
      const scalar_t* s = &packed[i * 10];
      for (int k = 0; k < 3; ++k) gm[3 * i + k] = s[k];
      for (int k = 0; k < 6; ++k) gq[6 * i + k] = s[3 + k];
      gr[i] = s[9];
    }
  });
}

}  // namespace

std::vector<at::Tensor> voxelize_forward(const at::Tensor& means, const at::Tensor& icov, const at::Tensor& density,
                                         const at::Tensor& extent, const at::Tensor& bounds,
                                         const at::Tensor& affine, int64_t size_i, int64_t size_j, int64_t size_k) {
  check_gaussians(means, icov, density, extent, bounds, affine);
  TORCH_CHECK(size_i > 0 && size_j > 0 && size_k > 0, "grid size must be positive");
  TORCH_CHECK(size_i < (1 << 30) && size_j < (1 << 30) && size_k < (1 << 30), "grid too large");
  const int64_t n = means.size(0);
  const BrickGrid bg(size_i, size_j, size_k);
  at::Tensor volume = new_output({size_i, size_j, size_k}, means.options());
  at::Tensor offsets, ids;
  bin_gaussians(n, bounds.data_ptr<int32_t>(), bg, offsets, ids);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "ixgs_voxelize_forward", [&] {
    voxelize_forward_impl<scalar_t>(means, icov, density, extent, bounds, affine, bg, offsets, ids, volume);
  });
  return {volume, offsets, ids};
}

std::vector<at::Tensor> voxelize_backward(const at::Tensor& means, const at::Tensor& icov,
                                          const at::Tensor& density, const at::Tensor& extent,
                                          const at::Tensor& bounds, const at::Tensor& affine,
                                          const at::Tensor& brick_offsets, const at::Tensor& brick_ids,
                                          const at::Tensor& grad_volume, int64_t size_i, int64_t size_j,
                                          int64_t size_k) {
  check_gaussians(means, icov, density, extent, bounds, affine);
  const int64_t n = means.size(0);
  const BrickGrid bg(size_i, size_j, size_k);
  IXGS_CHECK_INPUT(grad_volume, means.scalar_type());
  IXGS_CHECK_SHAPE(grad_volume, size_i, size_j, size_k);
  IXGS_CHECK_INPUT(brick_offsets, at::kInt);
  IXGS_CHECK_INPUT(brick_ids, at::kInt);
  IXGS_CHECK_SHAPE(brick_offsets, bg.count() + 1);
  at::Tensor g_means = new_output({n, 3}, means.options());
  at::Tensor g_icov = new_output({n, 6}, means.options());
  at::Tensor g_density = new_output({n}, means.options());
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "ixgs_voxelize_backward", [&] {
    voxelize_backward_impl<scalar_t>(means, icov, density, extent, bounds, affine, brick_offsets, brick_ids,
                                     grad_volume, bg, g_means, g_icov, g_density);
  });
  return {g_means, g_icov, g_density};
}

}  // namespace ixgs
