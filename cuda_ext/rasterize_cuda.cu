// CUDA rasterizer of additive 2D Gaussian splats (X-ray line integrals) with explicit backward; the GPU twin
// of rasterize_cpu.cpp (same binning, same per-pixel formulas from splat_math.h). See splat_cuda.cuh.
// STATUS: not yet run on a GPU (cuda_ext/README.md).
//
// Forward: one 256-thread block per 16x16 tile, one thread per pixel; the tile's splats (index order) are
// staged through shared memory in batches of 256. Each pixel adds w exp(-power) of every splat whose pixel
// box holds it and whose ellipse test passes, in list order - the CPU kernel's operations in the CPU kernel's
// order, so with --fmad=false (kernels.py default) a float32 image equals the CPU one bit for bit.
// Backward: one block per tile, the tile's incoming gradient in shared memory, one warp per (tile, splat)
// pair; lanes stride over the pixels of the splat's box inside the tile and accumulate the moments of
// ge = dL/dpixel exp(-power) (splat_grad_from_moments), summed across the warp in double; lane 0 writes the
// pair's six gradients to its slot. reduce_slots (bin_cuda.cu) then sums each splat's slots in tile order.
#include "splat_cuda.cuh"
#include "splat_math.h"

namespace ixgs {
namespace cuda {

namespace {

constexpr int kTilePix = kTile * kTile;  // threads per tile block
constexpr int kWarpsPerTile = kTilePix / 32;
static_assert(kTilePix % 32 == 0, "tile blocks must hold whole warps");

__host__ __device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads1D - 1) / kThreads1D); }

// Tile box (tx0, tx1, ty0, ty1) of a non-empty pixel box and its tile count.
__host__ __device__ __forceinline__ int64_t tile_box(const int32_t* b, int* t) {
  t[0] = b[0] / kTile;
  t[1] = b[1] / kTile;
  t[2] = b[2] / kTile;
  t[3] = b[3] / kTile;
  return int64_t(t[1] - t[0] + 1) * (t[3] - t[2] + 1);
}

template <typename T>
__global__ void __launch_bounds__(kThreads1D)
    boxes_kernel(int64_t n, const T* __restrict__ m2d, const T* __restrict__ con, const T* __restrict__ rad,
                 int width, int height, T sigma, int32_t* __restrict__ pbox, int64_t* __restrict__ npairs) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  int x0 = 1, x1 = 0, y0 = 1, y1 = 0;
  int32_t* o = pbox + 4 * i;
  if (splat_pixel_box<T>(m2d[2 * i], m2d[2 * i + 1], con[3 * i], con[3 * i + 1], con[3 * i + 2], rad[i], sigma,
                         width, height, x0, x1, y0, y1)) {
    o[0] = x0;
    o[1] = x1;
    o[2] = y0;
    o[3] = y1;
    int t[4];
    npairs[i] = tile_box(o, t);
  } else {
    o[0] = 1;
    o[1] = 0;
    o[2] = 1;
    o[3] = 0;
    npairs[i] = 0;
  }
}

__global__ void __launch_bounds__(kThreads1D)
    keys_kernel(int64_t n, const int32_t* __restrict__ pbox, const int64_t* __restrict__ pair_end, int ntx,
                int64_t* __restrict__ keys) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int32_t* b = pbox + 4 * i;
  if (b[0] > b[1] || b[2] > b[3]) return;
  int t[4];
  int64_t q = pair_end[i] - tile_box(b, t);
  for (int ty = t[2]; ty <= t[3]; ++ty)
    for (int tx = t[0]; tx <= t[1]; ++tx) keys[q++] = ((int64_t(ty) * ntx + tx) << 32) | i;
}

template <typename T>
__global__ void __launch_bounds__(kTilePix) forward_kernel(RasterArgs<T> A, T* __restrict__ img) {
  __shared__ T s_mx[kTilePix], s_my[kTilePix], s_a[kTilePix], s_b[kTilePix], s_c[kTilePix], s_w[kTilePix];
  __shared__ int s_box[4][kTilePix];
  const int64_t t = blockIdx.x;
  const int tx = static_cast<int>(t % A.ntx), ty = static_cast<int>(t / A.ntx);
  const int tid = threadIdx.x;
  const int px = tx * kTile + tid % kTile, py = ty * kTile + tid / kTile;
  const bool inside = px < A.width && py < A.height;
  const T fx = static_cast<T>(px), fy = static_cast<T>(py), cut = A.cut;
  T acc = T(0);
  const int start = A.off[t], end = A.off[t + 1];
  for (int base = start; base < end; base += kTilePix) {
    const int cnt = imin(kTilePix, end - base);
    __syncthreads();  // the previous batch has been consumed
    if (tid < cnt) {
      const int64_t i = A.ids[base + tid];
      s_mx[tid] = A.m2d[2 * i];
      s_my[tid] = A.m2d[2 * i + 1];
      s_a[tid] = A.con[3 * i];
      s_b[tid] = A.con[3 * i + 1];
      s_c[tid] = A.con[3 * i + 2];
      s_w[tid] = A.w[i];
      for (int k = 0; k < 4; ++k) s_box[k][tid] = A.pbox[4 * i + k];
    }
    __syncthreads();
    if (inside) {
      for (int j = 0; j < cnt; ++j) {
        if (px < s_box[0][j] || px > s_box[1][j] || py < s_box[2][j] || py > s_box[3][j]) continue;
        const T dx = fx - s_mx[j], dy = fy - s_my[j];
        const T power = splat_power<T>(s_a[j], s_b[j], s_c[j], dx, dy);
        if (power <= cut) {
          const T v = s_w[j] * fast_exp(-power);
          acc += v;
        }
      }
    }
  }
  if (inside) img[int64_t(py) * A.width + px] = acc;
}

template <typename T>
__global__ void __launch_bounds__(kTilePix)
    backward_kernel(RasterArgs<T> A, const int64_t* __restrict__ pair_end, const T* __restrict__ gimg,
                    double* __restrict__ partial) {
  __shared__ T s_g[kTilePix];  // incoming gradient of this tile (0 outside the image)
  const int64_t t = blockIdx.x;
  const int tx = static_cast<int>(t % A.ntx), ty = static_cast<int>(t / A.ntx);
  const int xb = tx * kTile, yb = ty * kTile;
  const int tid = threadIdx.x;
  {
    const int px = xb + tid % kTile, py = yb + tid / kTile;
    s_g[tid] = (px < A.width && py < A.height) ? gimg[int64_t(py) * A.width + px] : T(0);
  }
  __syncthreads();
  const int warp = tid / 32, lane = tid % 32;
  const int end = A.off[t + 1];
  const T cut = A.cut;
  for (int p = A.off[t] + warp; p < end; p += kWarpsPerTile) {  // uniform per warp
    const int64_t i = A.ids[p];
    const int32_t* b = A.pbox + 4 * i;
    const int bx0 = imax(b[0], xb), bx1 = imin(b[1], xb + kTile - 1);
    const int by0 = imax(b[2], yb), by1 = imin(b[3], yb + kTile - 1);
    const int bw = bx1 - bx0 + 1, bh = by1 - by0 + 1;
    const int npx = (bw > 0 && bh > 0) ? bw * bh : 0;  // > 0 for every listed pair
    const T a = A.con[3 * i], bb = A.con[3 * i + 1], c = A.con[3 * i + 2];
    const T mx = A.m2d[2 * i], my = A.m2d[2 * i + 1];
    T m0 = T(0), m1 = T(0), m2 = T(0), m3 = T(0), m4 = T(0), m5 = T(0);
    for (int k = lane; k < npx; k += 32) {
      const int py = by0 + k / bw, px = bx0 + k % bw;
      const T dx = static_cast<T>(px) - mx, dy = static_cast<T>(py) - my;
      const T power = splat_power<T>(a, bb, c, dx, dy);
      const T e = power <= cut ? fast_exp(-power) : T(0);
      const T ge = s_g[(py - yb) * kTile + (px - xb)] * e;
      const T gx = ge * dx, gy = ge * dy;
      m0 += ge;
      m1 += gx;
      m2 += gy;
      m3 += gx * dx;
      m4 += gx * dy;
      m5 += gy * dy;
    }
    double md[6] = {double(m0), double(m1), double(m2), double(m3), double(m4), double(m5)};
    warp_sum<6>(md);
    if (lane == 0) {
      int tb[4];
      const int64_t count = tile_box(b, tb);
      const int64_t slot = pair_end[i] - count + int64_t(ty - tb[2]) * (tb[1] - tb[0] + 1) + (tx - tb[0]);
      splat_grad_from_moments<T>(a, bb, c, A.w[i], md, partial + slot * 6);
    }
  }
}

}  // namespace

template <typename T>
void raster_boxes(int64_t n, const T* m2d, const T* con, const T* rad, int width, int height, T sigma,
                  int32_t* pbox, int64_t* npairs, cudaStream_t stream) {
  if (n <= 0) return;
  IXGS_LAUNCH(blocks_for(n), kThreads1D, stream, boxes_kernel<T>)(n, m2d, con, rad, width, height, sigma, pbox,
                                                                   npairs);
}

void raster_keys(int64_t n, const int32_t* pbox, const int64_t* pair_end, int ntx, int64_t* keys,
                 cudaStream_t stream) {
  if (n <= 0) return;
  IXGS_LAUNCH(blocks_for(n), kThreads1D, stream, keys_kernel)(n, pbox, pair_end, ntx, keys);
}

template <typename T>
void raster_forward(const RasterArgs<T>& a, T* image, cudaStream_t stream) {
  const int64_t tiles = int64_t(a.ntx) * a.nty;
  if (tiles <= 0) return;
  IXGS_LAUNCH(static_cast<unsigned>(tiles), kTilePix, stream, forward_kernel<T>)(a, image);
}

template <typename T>
void raster_backward(const RasterArgs<T>& a, const int64_t* pair_end, const T* grad_image, double* partial,
                     cudaStream_t stream) {
  const int64_t tiles = int64_t(a.ntx) * a.nty;
  if (tiles <= 0) return;
  IXGS_LAUNCH(static_cast<unsigned>(tiles), kTilePix, stream, backward_kernel<T>)(a, pair_end, grad_image, partial);
}

#define IXGS_INSTANTIATE_RASTER(T)                                                                             \
  template void raster_boxes<T>(int64_t, const T*, const T*, const T*, int, int, T, int32_t*, int64_t*,        \
                                cudaStream_t);                                                                 \
  template void raster_forward<T>(const RasterArgs<T>&, T*, cudaStream_t);                                     \
  template void raster_backward<T>(const RasterArgs<T>&, const int64_t*, const T*, double*, cudaStream_t);
IXGS_INSTANTIATE_RASTER(float)
IXGS_INSTANTIATE_RASTER(double)

}  // namespace cuda
}  // namespace ixgs
