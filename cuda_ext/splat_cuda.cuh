// Torch-free launchers of the CUDA splatting kernels (rasterize_cuda.cu, voxelize_cuda.cu, bin_cuda.cu).
//
// STATUS: not yet run on a GPU (see cuda_ext/README.md). Not part of the default (CPU) build: the CPU extension
// (ixgs_ros/engine/kernels.py) compiles cuda_ext/*.cpp only, and this header is a .cuh so it does not enter that
// build's source hash either.
//
// Everything here takes raw device pointers and a stream, so the kernels compile with nvcc alone (no torch
// headers). ext_cuda.cu implements the ABI of ixgs_kernels.h on top of them with ATen (allocation, cumsum,
// sort). The same sources also compile as plain C++ against cuda_emu.cuh, a small CPU emulation of the CUDA
// features they use (test aid: test/test_cuda.py runs the kernels' logic on machines without a GPU).
//
// Data flow (both kernels): per item (splat / Gaussian) a cell box (16x16 pixel tiles / 8x8x8 voxel bricks)
// and its pair count -> inclusive cumsum pair_end (ATen) -> per pair a key (cell << 32 | item) written at
// the item's slots -> radix sort (ATen) -> CSR offsets per cell (binary search) and ids. Items keep their
// index order inside a cell, so the lists equal the CPU kernels' lists exactly.
// Forward: one block per cell, one thread per pixel/voxel, batches of item parameters in shared memory.
// Backward: one block per cell, the cell's incoming gradient in shared memory, one warp per (cell, item) pair
// (lanes stride over the pair's pixels/voxels), moments reduced across the warp in double, the pair's
// gradient written to its own slot (item-major: slot = pair_end[item] - count + rank of the cell in the
// item's cell box), then one thread per item sums its slots in cell order. No atomics: deterministic, and the
// per-item sums run in the same order as the CPU kernels' (reduce_pairs in cpu_common.h).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define IXGS_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#else
#include "cuda_emu.cuh"
#define IXGS_LAUNCH(grid, block, stream, ...) ::ixgs_emu::launcher((grid), (block), __VA_ARGS__)
#endif

namespace ixgs {
namespace cuda {

constexpr int kThreads1D = 256;  // block size of the per-item / per-pair helper kernels

// Error of the last launch (cudaGetLastError), as text; empty when none.
const char* last_launch_error();

// ------------------------------------------------------------------------------------------------ binning
// offsets[c] = first p with (keys[p] >> 32) >= c for c in [0, ncells] (offsets[ncells] = pairs); ids[p] = the
// low 32 bits of keys[p]. keys sorted ascending.
void cell_ranges(int64_t pairs, const int64_t* sorted_keys, int64_t ncells, int32_t* offsets, int32_t* ids,
                 cudaStream_t stream);

// Per-item sum of the G-wide partial gradients of its slots [pair_end[i-1], pair_end[i]), in slot order, written
// to up to three outputs: the first c0 values to out0[i * c0 ...], the next c1 to out1, the last c2 to out2.
template <typename T>
void reduce_slots(int64_t n, int G, const int64_t* pair_end, const double* partial, T* out0, int c0, T* out1,
                  int c1, T* out2, int c2, cudaStream_t stream);

// ------------------------------------------------------------------------------------------------ rasterizer
template <typename T>
struct RasterArgs {
  const T* m2d;         // [N, 2]
  const T* con;         // [N, 3]
  const T* w;           // [N]
  const int32_t* pbox;  // [N, 4] pixel boxes (x0, x1, y0, y1), x0 > x1 when empty
  const int32_t* off;   // [T + 1] tile offsets
  const int32_t* ids;   // [P]
  int width, height, ntx, nty;
  T cut;                // sigma_cutoff^2 / 2
};

// pbox as splat_pixel_box (splat_math.h), npairs[i] = number of tiles the box covers (0 when empty).
template <typename T>
void raster_boxes(int64_t n, const T* m2d, const T* con, const T* rad, int width, int height, T sigma,
                  int32_t* pbox, int64_t* npairs, cudaStream_t stream);
// keys of splat i's tiles (row-major over its tile box) at [pair_end[i] - count, pair_end[i]).
void raster_keys(int64_t n, const int32_t* pbox, const int64_t* pair_end, int ntx, int64_t* keys,
                 cudaStream_t stream);
template <typename T>
void raster_forward(const RasterArgs<T>& a, T* image, cudaStream_t stream);
// partial [P, 6] (mean_u, mean_v, a, b, c, weight) per slot, see the header comment.
template <typename T>
void raster_backward(const RasterArgs<T>& a, const int64_t* pair_end, const T* grad_image, double* partial,
                     cudaStream_t stream);

// ------------------------------------------------------------------------------------------------ voxelizer
template <typename T>
struct VoxelArgs {
  const T* mu;           // [N, 3]
  const T* q;            // [N, 6]
  const T* rho;          // [N]
  const T* ext;          // [N, 3]
  const int32_t* cb;     // [N, 6] index bounds clamped to the grid (i0, i1, j0, j1, k0, k1), i0 > i1 when empty
  const double* A;       // [3, 4] index -> world (device memory)
  const int32_t* off;    // [B + 1] brick offsets
  const int32_t* ids;    // [P]
  int64_t size[3];
  int64_t nb[3];
};

// cb = bounds clamped to the grid (as clamp_bounds in voxelize_cpu.cpp), npairs[i] = bricks its box covers.
void voxel_boxes(int64_t n, const int32_t* bounds, const int64_t* size, int32_t* cb, int64_t* npairs,
                 cudaStream_t stream);
void voxel_keys(int64_t n, const int32_t* cb, const int64_t* pair_end, const int64_t* nb, int64_t* keys,
                cudaStream_t stream);
template <typename T>
void voxel_forward(const VoxelArgs<T>& a, T* volume, cudaStream_t stream);
// partial [P, 10] (mean xyz, icov[6], density) per slot.
template <typename T>
void voxel_backward(const VoxelArgs<T>& a, const int64_t* pair_end, const T* grad_volume, double* partial,
                    cudaStream_t stream);

// ------------------------------------------------------------------------------------------------ device helpers
#if defined(__CUDACC__)
// Sum of v over the 32 lanes of a warp (fixed shuffle tree: deterministic); the result is valid in lane 0.
// Every lane of the warp must call it.
template <int G>
__device__ __forceinline__ void warp_sum(double (&v)[G]) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
    for (int k = 0; k < G; ++k) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
  }
}
#else
template <int G>
inline void warp_sum(double (&v)[G]) {
  ::ixgs_emu::warp_sum(v, G);
}
#endif

}  // namespace cuda
}  // namespace ixgs
