// CUDA kernels shared by the rasterizer and the voxelizer: CSR cell lists from sorted (cell, item) keys, and the
// per-item reduction of per-pair partial gradients. See splat_cuda.cuh for the data flow.
// STATUS: not yet run on a GPU (cuda_ext/README.md).
#include "splat_cuda.cuh"

namespace ixgs {
namespace cuda {

namespace {

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads1D - 1) / kThreads1D); }

// One thread per cell boundary c in [0, ncells]: the first pair whose cell is >= c (lower bound on the keys).
__global__ void __launch_bounds__(kThreads1D)
    cell_offsets_kernel(int64_t pairs, const int64_t* __restrict__ keys, int64_t ncells, int32_t* __restrict__ off) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c > ncells) return;
  const int64_t target = c << 32;
  int64_t lo = 0, hi = pairs;  // first index in [lo, hi) with keys[index] >= target
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (keys[mid] < target) lo = mid + 1;
    else hi = mid;
  }
  off[c] = static_cast<int32_t>(lo);
}

__global__ void __launch_bounds__(kThreads1D)
    pair_ids_kernel(int64_t pairs, const int64_t* __restrict__ keys, int32_t* __restrict__ ids) {
  const int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (p < pairs) ids[p] = static_cast<int32_t>(keys[p] & 0xffffffffLL);
}

template <typename T, int G>
__global__ void __launch_bounds__(kThreads1D)
    reduce_slots_kernel(int64_t n, const int64_t* __restrict__ pair_end, const double* __restrict__ partial,
                        T* __restrict__ out0, int c0, T* __restrict__ out1, int c1, T* __restrict__ out2, int c2) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t s = i == 0 ? 0 : pair_end[i - 1], e = pair_end[i];
  double acc[G];
  for (int k = 0; k < G; ++k) acc[k] = 0.0;
  for (int64_t q = s; q < e; ++q) {
    const double* src = partial + q * G;
    for (int k = 0; k < G; ++k) acc[k] += src[k];
  }
  for (int k = 0; k < c0; ++k) out0[i * c0 + k] = static_cast<T>(acc[k]);
  for (int k = 0; k < c1; ++k) out1[i * c1 + k] = static_cast<T>(acc[c0 + k]);
  for (int k = 0; k < c2; ++k) out2[i * c2 + k] = static_cast<T>(acc[c0 + c1 + k]);
}

}  // namespace

const char* last_launch_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

void cell_ranges(int64_t pairs, const int64_t* sorted_keys, int64_t ncells, int32_t* offsets, int32_t* ids,
                 cudaStream_t stream) {
  IXGS_LAUNCH(blocks_for(ncells + 1), kThreads1D, stream, cell_offsets_kernel)(pairs, sorted_keys, ncells, offsets);
  if (pairs > 0) IXGS_LAUNCH(blocks_for(pairs), kThreads1D, stream, pair_ids_kernel)(pairs, sorted_keys, ids);
}

template <typename T>
void reduce_slots(int64_t n, int G, const int64_t* pair_end, const double* partial, T* out0, int c0, T* out1,
                  int c1, T* out2, int c2, cudaStream_t stream) {
  if (n <= 0) return;
  if (G == 6)
    IXGS_LAUNCH(blocks_for(n), kThreads1D, stream, reduce_slots_kernel<T, 6>)(n, pair_end, partial, out0, c0, out1,
                                                                            c1, out2, c2);
  else if (G == 10)
    IXGS_LAUNCH(blocks_for(n), kThreads1D, stream, reduce_slots_kernel<T, 10>)(n, pair_end, partial, out0, c0, out1,
                                                                             c1, out2, c2);
}

template void reduce_slots<float>(int64_t, int, const int64_t*, const double*, float*, int, float*, int, float*, int,
                                  cudaStream_t);
template void reduce_slots<double>(int64_t, int, const int64_t*, const double*, double*, int, double*, int, double*,
                                   int, cudaStream_t);

}  // namespace cuda
}  // namespace ixgs
