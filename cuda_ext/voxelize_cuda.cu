// CUDA voxelizer: the Gaussian density field sampled at the voxel centres of any affine grid, with explicit
// backward; the GPU twin of voxelize_cpu.cpp (same binning and masks, formulas from splat_math.h). See
// splat_cuda.cuh. STATUS: not yet run on a GPU (cuda_ext/README.md).
//
// Forward: one 512-thread block per 8x8x8 brick, one thread per voxel. Each thread computes its voxel's world
// position once, in double, as voxel_offset() does before the mean is subtracted (kernels.py builds with
// --fmad=false, so this is the torch reference's value exactly); per Gaussian the offset is (x - p) in double
// rounded to the working precision - the reference's offset bit for bit, so the world-box test decides every
// voxel exactly as the reference does. Gaussian parameters are staged in shared memory in batches of 256.
// Backward: one 256-thread block per brick, the brick's incoming gradient and voxel positions in shared
// memory, one warp per (brick, Gaussian) pair striding over the voxels of the Gaussian's clamped index box
// inside the brick; ten moments (voxel_grad_from_moments) are summed across the warp in double and lane 0
// writes the pair's slot; reduce_slots (bin_cuda.cu) sums each Gaussian's slots in brick order.
#include "splat_cuda.cuh"
#include "splat_math.h"

namespace ixgs {
namespace cuda {

namespace {

constexpr int kBrickVox = kBrick * kBrick * kBrick;  // 512: threads per forward block
constexpr int kBatch = 256;                          // Gaussians per shared-memory batch (forward)
constexpr int kBackThreads = 256;                    // threads per backward block
constexpr int kBackWarps = kBackThreads / 32;

__host__ __device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }
template <typename T>
__host__ __device__ __forceinline__ T absval(T x) {
  return x < T(0) ? -x : x;
}

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads1D - 1) / kThreads1D); }

struct Dims {
  int64_t size[3];
  int64_t nb[3];
};

// Brick box (bi0, bi1, bj0, bj1, bk0, bk1) of non-empty clamped bounds and its brick count.
__host__ __device__ __forceinline__ int64_t brick_box(const int32_t* cb, int* r) {
  for (int k = 0; k < 6; ++k) r[k] = cb[k] / kBrick;
  return int64_t(r[1] - r[0] + 1) * (r[3] - r[2] + 1) * (r[5] - r[4] + 1);
}

__host__ __device__ __forceinline__ void brick_origin(int64_t br, const int64_t* nb, int64_t* o) {
  o[2] = (br % nb[2]) * kBrick;
  o[1] = ((br / nb[2]) % nb[1]) * kBrick;
  o[0] = (br / (nb[1] * nb[2])) * kBrick;
}

__global__ void __launch_bounds__(kThreads1D)
    boxes_kernel(int64_t n, const int32_t* __restrict__ bounds, Dims d, int32_t* __restrict__ cb,
                 int64_t* __restrict__ npairs) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  int32_t r[6];
  bool ok = true;
  for (int k = 0; k < 3; ++k) {
    r[2 * k] = imax(bounds[6 * i + 2 * k], 0);
    r[2 * k + 1] = imin(bounds[6 * i + 2 * k + 1], static_cast<int>(d.size[k] - 1));
    ok = ok && r[2 * k] <= r[2 * k + 1];
  }
  if (!ok) {
    r[0] = 1;
    r[1] = 0;
  }
  for (int k = 0; k < 6; ++k) cb[6 * i + k] = r[k];
  int bb[6];
  npairs[i] = ok ? brick_box(r, bb) : 0;
}

__global__ void __launch_bounds__(kThreads1D)
    keys_kernel(int64_t n, const int32_t* __restrict__ cb, const int64_t* __restrict__ pair_end, Dims d,
                int64_t* __restrict__ keys) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int32_t* c = cb + 6 * i;
  if (c[0] > c[1] || c[2] > c[3] || c[4] > c[5]) return;
  int r[6];
  int64_t q = pair_end[i] - brick_box(c, r);
  for (int bi = r[0]; bi <= r[1]; ++bi)
    for (int bj = r[2]; bj <= r[3]; ++bj)
      for (int bk = r[4]; bk <= r[5]; ++bk) keys[q++] = (((int64_t(bi) * d.nb[1] + bj) * d.nb[2] + bk) << 32) | i;
}

// World coordinates of voxel (i, j, k): voxel_offset() with a zero mean (x - 0 = x exactly).
__host__ __device__ __forceinline__ void voxel_world(const double* A, int64_t i, int64_t j, int64_t k, double* x) {
  for (int r = 0; r < 3; ++r)
    x[r] = voxel_offset(A + 4 * r, static_cast<double>(i), static_cast<double>(j), static_cast<double>(k), 0.0);
}

template <typename T>
__global__ void __launch_bounds__(kBrickVox) forward_kernel(VoxelArgs<T> V, T* __restrict__ vol) {
  __shared__ T s_mu[3][kBatch], s_q[6][kBatch], s_ext[3][kBatch], s_rho[kBatch];
  __shared__ int s_cb[6][kBatch];
  const int64_t br = blockIdx.x;
  int64_t b0[3];
  brick_origin(br, V.nb, b0);
  const int tid = threadIdx.x;
  const int64_t vi = b0[0] + tid / (kBrick * kBrick), vj = b0[1] + (tid / kBrick) % kBrick, vk = b0[2] + tid % kBrick;
  const bool inside = vi < V.size[0] && vj < V.size[1] && vk < V.size[2];
  double x[3];
  voxel_world(V.A, vi, vj, vk, x);
  const int ii = static_cast<int>(vi), jj = static_cast<int>(vj), kk = static_cast<int>(vk);
  T acc = T(0);
  const int start = V.off[br], end = V.off[br + 1];
  for (int base = start; base < end; base += kBatch) {
    const int cnt = imin(kBatch, end - base);
    __syncthreads();  // the previous batch has been consumed
    if (tid < cnt) {
      const int64_t g = V.ids[base + tid];
      for (int k = 0; k < 3; ++k) {
        s_mu[k][tid] = V.mu[3 * g + k];
        s_ext[k][tid] = V.ext[3 * g + k];
      }
      for (int k = 0; k < 6; ++k) {
        s_q[k][tid] = V.q[6 * g + k];
        s_cb[k][tid] = V.cb[6 * g + k];
      }
      s_rho[tid] = V.rho[g];
    }
    __syncthreads();
    if (inside) {
      for (int j = 0; j < cnt; ++j) {
        if (ii < s_cb[0][j] || ii > s_cb[1][j] || jj < s_cb[2][j] || jj > s_cb[3][j] || kk < s_cb[4][j] ||
            kk > s_cb[5][j])
          continue;
        const T dx = static_cast<T>(x[0] - static_cast<double>(s_mu[0][j]));
        const T dy = static_cast<T>(x[1] - static_cast<double>(s_mu[1][j]));
        const T dz = static_cast<T>(x[2] - static_cast<double>(s_mu[2][j]));
        if (!(absval(dx) <= s_ext[0][j] && absval(dy) <= s_ext[1][j] && absval(dz) <= s_ext[2][j])) continue;
        const T q[6] = {s_q[0][j], s_q[1][j], s_q[2][j], s_q[3][j], s_q[4][j], s_q[5][j]};
        const T power = voxel_power<T>(q, dx, dy, dz);
        const T v = s_rho[j] * fast_exp(-power);
        acc += v;
      }
    }
  }
  if (inside) vol[(vi * V.size[1] + vj) * V.size[2] + vk] = acc;
}

template <typename T>
__global__ void __launch_bounds__(kBackThreads)
    backward_kernel(VoxelArgs<T> V, const int64_t* __restrict__ pair_end, const T* __restrict__ gvol,
                    double* __restrict__ partial) {
  __shared__ T s_g[kBrickVox];          // incoming gradient of this brick (0 outside the grid)
  __shared__ double s_x[3][kBrickVox];  // world positions of the brick's voxels
  const int64_t br = blockIdx.x;
  int64_t b0[3];
  brick_origin(br, V.nb, b0);
  const int tid = threadIdx.x;
  for (int v = tid; v < kBrickVox; v += kBackThreads) {
    const int64_t vi = b0[0] + v / (kBrick * kBrick), vj = b0[1] + (v / kBrick) % kBrick, vk = b0[2] + v % kBrick;
    const bool inside = vi < V.size[0] && vj < V.size[1] && vk < V.size[2];
    s_g[v] = inside ? gvol[(vi * V.size[1] + vj) * V.size[2] + vk] : T(0);
    double x[3];
    voxel_world(V.A, vi, vj, vk, x);
    for (int r = 0; r < 3; ++r) s_x[r][v] = x[r];
  }
  __syncthreads();
  const int warp = tid / 32, lane = tid % 32;
  const int end = V.off[br + 1];
  for (int p = V.off[br] + warp; p < end; p += kBackWarps) {  // uniform per warp
    const int64_t g = V.ids[p];
    const int32_t* c = V.cb + 6 * g;
    int lo[3], n[3];
    for (int d = 0; d < 3; ++d) {
      lo[d] = imax(c[2 * d], static_cast<int>(b0[d]));
      const int hi = imin(c[2 * d + 1], static_cast<int>(b0[d]) + kBrick - 1);
      n[d] = hi - lo[d] + 1;
    }
    const int nvox = (n[0] > 0 && n[1] > 0 && n[2] > 0) ? n[0] * n[1] * n[2] : 0;  // > 0 for listed pairs
    const double p0 = V.mu[3 * g], p1 = V.mu[3 * g + 1], p2 = V.mu[3 * g + 2];
    const T q[6] = {V.q[6 * g], V.q[6 * g + 1], V.q[6 * g + 2], V.q[6 * g + 3], V.q[6 * g + 4], V.q[6 * g + 5]};
    const T ex = V.ext[3 * g], ey = V.ext[3 * g + 1], ez = V.ext[3 * g + 2];
    T m[10];
    for (int k = 0; k < 10; ++k) m[k] = T(0);
    for (int k = lane; k < nvox; k += 32) {
      const int a = k / (n[1] * n[2]), rem = k % (n[1] * n[2]);
      const int li = lo[0] - static_cast<int>(b0[0]) + a, lj = lo[1] - static_cast<int>(b0[1]) + rem / n[2],
                lk = lo[2] - static_cast<int>(b0[2]) + rem % n[2];
      const int v = (li * kBrick + lj) * kBrick + lk;
      const T dx = static_cast<T>(s_x[0][v] - p0), dy = static_cast<T>(s_x[1][v] - p1),
              dz = static_cast<T>(s_x[2][v] - p2);
      const bool in = absval(dx) <= ex && absval(dy) <= ey && absval(dz) <= ez;
      const T e = in ? fast_exp(-voxel_power<T>(q, dx, dy, dz)) : T(0);
      const T ge = s_g[v] * e;
      const T gx = ge * dx, gy = ge * dy, gz = ge * dz;
      m[0] += ge;
      m[1] += gx;
      m[2] += gy;
      m[3] += gz;
      m[4] += gx * dx;
      m[5] += gx * dy;
      m[6] += gx * dz;
      m[7] += gy * dy;
      m[8] += gy * dz;
      m[9] += gz * dz;
    }
    double md[10];
    for (int k = 0; k < 10; ++k) md[k] = static_cast<double>(m[k]);
    warp_sum<10>(md);
    if (lane == 0) {
      int r[6];
      const int64_t count = brick_box(c, r);
      const int bi = static_cast<int>(b0[0] / kBrick), bj = static_cast<int>(b0[1] / kBrick),
                bk = static_cast<int>(b0[2] / kBrick);
      const int64_t slot = pair_end[g] - count +
                           (int64_t(bi - r[0]) * (r[3] - r[2] + 1) + (bj - r[2])) * (r[5] - r[4] + 1) + (bk - r[4]);
      double out[10] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
      voxel_grad_from_moments<T>(q, V.rho[g], md, out);
      for (int k = 0; k < 10; ++k) partial[slot * 10 + k] = out[k];
    }
  }
}

Dims dims_of(const int64_t* size, const int64_t* nb) {
  Dims d;
  for (int k = 0; k < 3; ++k) {
    d.size[k] = size[k];
    d.nb[k] = nb ? nb[k] : (size[k] + kBrick - 1) / kBrick;
  }
  return d;
}

}  // namespace

void voxel_boxes(int64_t n, const int32_t* bounds, const int64_t* size, int32_t* cb, int64_t* npairs,
                 cudaStream_t stream) {
  if (n <= 0) return;
  IXGS_LAUNCH(blocks_for(n), kThreads1D, stream, boxes_kernel)(n, bounds, dims_of(size, nullptr), cb, npairs);
}

void voxel_keys(int64_t n, const int32_t* cb, const int64_t* pair_end, const int64_t* nb, int64_t* keys,
                cudaStream_t stream) {
  if (n <= 0) return;
  const int64_t size[3] = {nb[0] * kBrick, nb[1] * kBrick, nb[2] * kBrick};
  IXGS_LAUNCH(blocks_for(n), kThreads1D, stream, keys_kernel)(n, cb, pair_end, dims_of(size, nb), keys);
}

template <typename T>
void voxel_forward(const VoxelArgs<T>& a, T* volume, cudaStream_t stream) {
  const int64_t bricks = a.nb[0] * a.nb[1] * a.nb[2];
  if (bricks <= 0) return;
  IXGS_LAUNCH(static_cast<unsigned>(bricks), kBrickVox, stream, forward_kernel<T>)(a, volume);
}

template <typename T>
void voxel_backward(const VoxelArgs<T>& a, const int64_t* pair_end, const T* grad_volume, double* partial,
                    cudaStream_t stream) {
  const int64_t bricks = a.nb[0] * a.nb[1] * a.nb[2];
  if (bricks <= 0) return;
  IXGS_LAUNCH(static_cast<unsigned>(bricks), kBackThreads, stream, backward_kernel<T>)(a, pair_end, grad_volume,
                                                                                        partial);
}

#define IXGS_INSTANTIATE_VOXEL(T)                                                                   \
  template void voxel_forward<T>(const VoxelArgs<T>&, T*, cudaStream_t);                            \
  template void voxel_backward<T>(const VoxelArgs<T>&, const int64_t*, const T*, double*, cudaStream_t);
IXGS_INSTANTIATE_VOXEL(float)
IXGS_INSTANTIATE_VOXEL(double)

}  // namespace cuda
}  // namespace ixgs
