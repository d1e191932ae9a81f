// Helpers shared by the CPU kernels (not used by CUDA code).
#pragma once

#include "ixgs_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ixgs {

#define IXGS_CHECK_CPU(x) TORCH_CHECK(!(x).is_cuda() && (x).device().is_cpu(), #x " must be a CPU tensor")
#define IXGS_CHECK_CONTIG(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define IXGS_CHECK_SHAPE(x, ...) \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " has shape ", (x).sizes(), ", expected ", \
              at::IntArrayRef({__VA_ARGS__}))
#define IXGS_CHECK_INPUT(x, dtype)                                                                   \
  IXGS_CHECK_CPU(x);                                                                                 \
  IXGS_CHECK_CONTIG(x);                                                                              \
  TORCH_CHECK((x).scalar_type() == (dtype), #x " has dtype ", (x).scalar_type(), ", expected ", (dtype))

// The O(N) bookkeeping loops (boxes, gradient scatter) run on the calling thread: they take well under a
// millisecond, and every extra parallel region costs a team wake-up (milliseconds on an oversubscribed machine).
template <typename Fn>
inline void serial_for(int64_t begin, int64_t end, Fn&& fn) {
  if (begin < end) fn(begin, end);
}

// Output tensor, NaN-filled first when the poison flag is set (tests prove every element gets written).
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
  if (poison_outputs() && t.numel() > 0) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

// ---------------------------------------------------------------------------------------------- SIMD variants
// The hot passes exist twice for float32: a baseline build (SSE2 on x86-64; 4-wide vectors) and, on x86-64 with
// GCC/Clang, an AVX2 build of the same source (function attribute, 8-wide vectors) chosen at run time when the
// CPU has AVX2. No FMA: both variants perform the same IEEE operations per element, so they agree to the last
// bit in the forward pass and to float rounding in the backward reductions. IXGS_NATIVE_SIMD=0 in the
// environment (or set_simd(false)) forces the baseline.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define IXGS_HAVE_AVX2_VARIANT 1
#define IXGS_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define IXGS_HAVE_AVX2_VARIANT 0
#define IXGS_TARGET_AVX2
#endif

inline int num_threads() {
  return std::max(1, at::get_num_threads());
}

// Whether the AVX2 variants run (CPU support, not disabled by set_simd(false) or IXGS_NATIVE_SIMD=0).
bool use_avx2();

// Whether a gather pass over `cells` cells holding `pairs` (cell, item) pairs is worth a parallel region.
// Small problems run on the calling thread: waking the OpenMP team costs far more than they take (and on a
// busy machine the barrier can wait for a descheduled worker for milliseconds).
inline bool worth_parallel(int64_t pairs, int64_t cells) {
  return cells > 1 && pairs >= 512 && num_threads() > 1;
}

// CSR binning of items into a regular D-dimensional grid of cells. `box` holds, per item, D inclusive
// [lo, hi] cell ranges (dimension 0 slowest); items with lo > hi in any dimension are skipped. Items keep
// their index order inside every cell, so the result (and everything computed from it) is deterministic.
template <int D>
void bin_boxes(int64_t n, const std::vector<int32_t>& box, const int64_t* ncells, at::Tensor& offsets,
               at::Tensor& ids) {
  int64_t total_cells = 1;
  for (int d = 0; d < D; ++d) total_cells *= ncells[d];
  std::vector<int64_t> count(total_cells + 1, 0);
  auto for_cells = [&](int64_t i, auto&& fn) {
    const int32_t* b = &box[i * 2 * D];
    for (int d = 0; d < D; ++d)
      if (b[2 * d] > b[2 * d + 1]) return;
    if (D == 2) {
      for (int32_t c0 = b[0]; c0 <= b[1]; ++c0)
        for (int32_t c1 = b[2]; c1 <= b[3]; ++c1) fn(c0 * ncells[1] + c1);
    } else {
      for (int32_t c0 = b[0]; c0 <= b[1]; ++c0)
        for (int32_t c1 = b[2]; c1 <= b[3]; ++c1)
          for (int32_t c2 = b[4]; c2 <= b[5]; ++c2) fn((c0 * ncells[1] + c1) * ncells[2] + c2);
    }
  };
  for (int64_t i = 0; i < n; ++i) for_cells(i, [&](int64_t c) { ++count[c + 1]; });
  for (int64_t c = 0; c < total_cells; ++c) count[c + 1] += count[c];
  const int64_t pairs = count[total_cells];
  TORCH_CHECK(pairs < std::numeric_limits<int32_t>::max(), "too many splat/cell pairs: ", pairs);
  offsets = at::empty({total_cells + 1}, at::TensorOptions().dtype(at::kInt));
  ids = at::empty({pairs}, at::TensorOptions().dtype(at::kInt));
  int32_t* off = offsets.data_ptr<int32_t>();
  for (int64_t c = 0; c <= total_cells; ++c) off[c] = static_cast<int32_t>(count[c]);
  int32_t* out = ids.data_ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i) for_cells(i, [&](int64_t c) { out[count[c]++] = static_cast<int32_t>(i); });
}

// Sum per-(cell, item) partial gradients into per-item gradients, in pair order (deterministic).
template <typename scalar_t, int G>
void reduce_pairs(int64_t n, const at::Tensor& ids, const std::vector<double>& partial, scalar_t* grad) {
  std::vector<double> acc(static_cast<size_t>(n) * G, 0.0);
  const int32_t* id = ids.data_ptr<int32_t>();
  const int64_t pairs = ids.numel();
  for (int64_t p = 0; p < pairs; ++p) {
    double* dst = &acc[static_cast<size_t>(id[p]) * G];
    const double* src = &partial[static_cast<size_t>(p) * G];
    for (int k = 0; k < G; ++k) dst[k] += src[k];
  }
  serial_for(0, n * G, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) grad[k] = static_cast<scalar_t>(acc[k]);
  });
}

}  // namespace ixgs
