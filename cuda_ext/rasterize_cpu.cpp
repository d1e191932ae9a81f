// CPU (OpenMP) rasterizer of additive 2D Gaussian splats with explicit backward.
//
// Forward: splats are binned into 16x16 pixel tiles (CSR lists, index order); tiles are processed in parallel
// (dynamic schedule), each tile gathering its own splats into a private buffer, so no atomics are needed.
// Inside a tile every splat is visited row by row over its pixel box (the tight box of its 3-sigma ellipse) in
// fixed-width vector groups; the exact ellipse test masks the pixels outside.
// Backward: the same traversal; each (tile, splat) pair accumulates its gradient in double registers and
// writes it to its own slot; a serial pass in pair order sums the slots per splat (deterministic).
// float32 passes have a baseline and an AVX2 variant (runtime dispatch, see cpu_common.h).
#include "ixgs_kernels.h"
#include "cpu_common.h"
#include "splat_math.h"

namespace ixgs {

namespace {

struct TileGrid {
  int width, height, ntx, nty;
  TileGrid(int w, int h) : width(w), height(h), ntx((w + kTile - 1) / kTile), nty((h + kTile - 1) / kTile) {}
  int64_t count() const { return static_cast<int64_t>(ntx) * nty; }
};

void check_splats(const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& weight,
                  const at::Tensor& radius) {
  TORCH_CHECK(mean2d.dim() == 2 && mean2d.size(1) == 2, "mean2d must be [N, 2], got ", mean2d.sizes());
  const int64_t n = mean2d.size(0);
  const auto dtype = mean2d.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "splat tensors must be float32 or float64");
  IXGS_CHECK_INPUT(mean2d, dtype);
  IXGS_CHECK_INPUT(conic, dtype);
  IXGS_CHECK_INPUT(weight, dtype);
  IXGS_CHECK_INPUT(radius, dtype);
  IXGS_CHECK_SHAPE(conic, n, 3);
  IXGS_CHECK_SHAPE(weight, n);
  IXGS_CHECK_SHAPE(radius, n);
}

// Per-splat pixel boxes (x0, x1, y0, y1; x0 > x1 when empty), see splat_pixel_box.
template <typename scalar_t>
std::vector<int32_t> splat_boxes(int64_t n, const scalar_t* m2d, const scalar_t* con, const scalar_t* rad,
                                 const TileGrid& tg, double sigma_cutoff) {
  std::vector<int32_t> box(static_cast<size_t>(n) * 4);
  const scalar_t sigma = static_cast<scalar_t>(sigma_cutoff);
  for (int64_t i = 0; i < n; ++i) {
    int x0, x1, y0, y1;
    int32_t* o = &box[i * 4];
    if (splat_pixel_box<scalar_t>(m2d[2 * i], m2d[2 * i + 1], con[3 * i], con[3 * i + 1], con[3 * i + 2], rad[i],
                                  sigma, tg.width, tg.height, x0, x1, y0, y1)) {
      o[0] = x0;
      o[1] = x1;
      o[2] = y0;
      o[3] = y1;
    } else {
      o[0] = 1;
      o[1] = 0;
      o[2] = 1;
      o[3] = 0;
    }
  }
  return box;
}

// CSR lists of the splats overlapping each tile.
void bin_splats(int64_t n, const std::vector<int32_t>& box, const TileGrid& tg, at::Tensor& offsets, at::Tensor& ids) {
  std::vector<int32_t> tbox(static_cast<size_t>(n) * 4);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t* b = &box[i * 4];
    int32_t* t = &tbox[i * 4];
    if (b[0] <= b[1] && b[2] <= b[3]) {
      t[0] = b[2] / kTile;
      t[1] = b[3] / kTile;
      t[2] = b[0] / kTile;
      t[3] = b[1] / kTile;
    } else {
      t[0] = 1;
      t[1] = 0;
      t[2] = 1;
      t[3] = 0;
    }
  }
  const int64_t ncells[2] = {tg.nty, tg.ntx};
  bin_boxes<2>(n, tbox, ncells, offsets, ids);
}

// Everything one tile pass needs (plain pointers, no tensors).
template <typename T>
struct RasterArgs {
  const T* m2d;
  const T* con;
  const T* w;
  const int32_t* box;  // [N, 4] pixel boxes (x0, x1, y0, y1)
  const int32_t* off;
  const int32_t* id;
  TileGrid tg;
  T cut;
  int64_t pairs;
};

// Visit the rows of tile `t` covered by splat `i`'s box: fn(trow, x_base, dy, g0, g1) where trow is the row's
// offset in the tile buffer, x_base the image column of the tile's first column, and [g0, g1) the range of
// tile-local columns (multiples of L) covering the box. Pixels are processed in aligned groups of L (fixed trip
// count: straight vector code, no remainder loops); the exact ellipse test masks the rest. (Narrowing each row
// to the ellipse chord costs more than the lanes it saves.)
template <typename T, int L, typename Fn>
IXGS_HD void for_splat_rows_in_tile(const RasterArgs<T>& A, int64_t i, int64_t t, Fn&& fn) {
  static_assert(kTile % L == 0, "tile width must be a multiple of the lane count");
  const int32_t* b = &A.box[4 * i];
  const int tx = static_cast<int>(t % A.tg.ntx), ty = static_cast<int>(t / A.tg.ntx);
  const int xb = tx * kTile, yb = ty * kTile;
  const int bx0 = std::max<int>(b[0], xb), bx1 = std::min<int>(b[1], xb + kTile - 1);
  const int by0 = std::max<int>(b[2], yb), by1 = std::min<int>(b[3], yb + kTile - 1);
  if (bx0 > bx1) return;
  const T my = A.m2d[2 * i + 1];
  const int g0 = (bx0 - xb) & ~(L - 1), g1 = ((bx1 - xb) | (L - 1)) + 1;
  for (int py = by0; py <= by1; ++py) fn((py - yb) * kTile, xb, static_cast<T>(py) - my, g0, g1);
}

// Forward of one tile: every splat of the tile's list adds w exp(-power) to the pixels inside its ellipse.
template <typename T, int L>
IXGS_HD void forward_tile(const RasterArgs<T>& A, int64_t t, T* img) {
  T acc[kTile * kTile];
  for (int k = 0; k < kTile * kTile; ++k) acc[k] = T(0);
  for (int32_t p = A.off[t]; p < A.off[t + 1]; ++p) {
    const int64_t i = A.id[p];
    const T a = A.con[3 * i], b = A.con[3 * i + 1], c = A.con[3 * i + 2], w = A.w[i], mx = A.m2d[2 * i];
    const T cut = A.cut;
    for_splat_rows_in_tile<T, L>(A, i, t, [&](int trow, int xb, T dy, int g0, int g1) {
      T* __restrict row = acc + trow;
      for (int l = g0; l < g1; l += L) {
#pragma omp simd
        for (int u = 0; u < L; ++u) {
          const T dx = static_cast<T>(xb + l + u) - mx;
          const T power = splat_power<T>(a, b, c, dx, dy);
          const T v = w * fast_exp(-power);
          row[l + u] += power <= cut ? v : T(0);
        }
      }
    });
  }
  const int tx = static_cast<int>(t % A.tg.ntx), ty = static_cast<int>(t / A.tg.ntx);
  const int xe = std::min(A.tg.width, tx * kTile + kTile), ye = std::min(A.tg.height, ty * kTile + kTile);
  for (int py = ty * kTile; py < ye; ++py)
    for (int px = tx * kTile; px < xe; ++px)
      img[static_cast<int64_t>(py) * A.tg.width + px] = acc[(py - ty * kTile) * kTile + (px - tx * kTile)];
}

// Backward of one tile: for each (tile, splat) pair, the gradient w.r.t. (mean_u, mean_v, a, b, c, weight)
// from the pixels of this tile, written to partial[6 p .. 6 p + 5]. The kernel sums, lane-wise over all the
// pair's pixels, the moments of ge = dL/dpixel exp(-power) inside the ellipse (splat_grad_from_moments in
// splat_math.h turns them into the six gradients).
template <typename T, int L>
IXGS_HD void backward_tile(const RasterArgs<T>& A, int64_t t, const T* gimg, double* partial) {
  const int tx = static_cast<int>(t % A.tg.ntx), ty = static_cast<int>(t / A.tg.ntx);
  T gt[kTile * kTile];  // incoming gradient of this tile (0 outside the image)
  for (int k = 0; k < kTile * kTile; ++k) gt[k] = T(0);
  const int xe = std::min(A.tg.width, tx * kTile + kTile), ye = std::min(A.tg.height, ty * kTile + kTile);
  for (int py = ty * kTile; py < ye; ++py)
    for (int px = tx * kTile; px < xe; ++px)
      gt[(py - ty * kTile) * kTile + (px - tx * kTile)] = gimg[static_cast<int64_t>(py) * A.tg.width + px];
  for (int32_t p = A.off[t]; p < A.off[t + 1]; ++p) {
    const int64_t i = A.id[p];
    const T a = A.con[3 * i], b = A.con[3 * i + 1], c = A.con[3 * i + 2], mx = A.m2d[2 * i];
    const T cut = A.cut;
    T m[6][L] = {};
    for_splat_rows_in_tile<T, L>(A, i, t, [&](int trow, int xb, T dy, int g0, int g1) {
      const T* __restrict row = gt + trow;
      for (int l = g0; l < g1; l += L) {
#pragma omp simd
        for (int u = 0; u < L; ++u) {
          const T dx = static_cast<T>(xb + l + u) - mx;
          const T power = splat_power<T>(a, b, c, dx, dy);
          const T e = power <= cut ? fast_exp(-power) : T(0);  // select on a register: keeps the loop vectorised
          const T ge = row[l + u] * e;
          const T gx = ge * dx, gy = ge * dy;
          m[0][u] += ge;
          m[1][u] += gx;
          m[2][u] += gy;
          m[3][u] += gx * dx;
          m[4][u] += gx * dy;
          m[5][u] += gy * dy;
        }
      }
    });
    double md[6];
    for (int k = 0; k < 6; ++k) {
      double s = 0.0;
      for (int u = 0; u < L; ++u) s += static_cast<double>(m[k][u]);
      md[k] = s;
    }
    splat_grad_from_moments<T>(a, b, c, A.w[i], md, &partial[static_cast<size_t>(p) * 6]);
  }
}

// Parallel passes over all tiles, one function per (dtype, instruction set). The OpenMP region must live in
// the ISA-specific function so that its outlined body is compiled for that ISA.
#define IXGS_RASTER_PASSES(NAME, ATTR, T, L)                                                                 \
  ATTR void forward_pass_##NAME(const RasterArgs<T>& A, T* img) {                                           \
    const int64_t n = A.tg.count();                                                                         \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads()) if (worth_parallel(A.pairs, n))") \
    for (int64_t t = 0; t < n; ++t) forward_tile<T, L>(A, t, img);                                           \
  }                                                                                                         \
  ATTR void backward_pass_##NAME(const RasterArgs<T>& A, const T* gimg, double* partial) {                  \
    const int64_t n = A.tg.count();                                                                         \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads()) if (worth_parallel(A.pairs, n))") \
    for (int64_t t = 0; t < n; ++t) backward_tile<T, L>(A, t, gimg, partial);                                 \
  }

#ifndef LANES_F32
#define LANES_F32 4
#endif
#ifndef LANES_AVX2
#define LANES_AVX2 8
#endif
IXGS_RASTER_PASSES(f64, , double, 4)
IXGS_RASTER_PASSES(f32, , float, LANES_F32)
#if IXGS_HAVE_AVX2_VARIANT
IXGS_RASTER_PASSES(f32_avx2, IXGS_TARGET_AVX2, float, LANES_AVX2)
#endif

void forward_pass(const RasterArgs<double>& A, double* img) { forward_pass_f64(A, img); }
void backward_pass(const RasterArgs<double>& A, const double* g, double* partial) { backward_pass_f64(A, g, partial); }
void forward_pass(const RasterArgs<float>& A, float* img) {
#if IXGS_HAVE_AVX2_VARIANT
  if (use_avx2()) return forward_pass_f32_avx2(A, img);
#endif
  forward_pass_f32(A, img);
}
void backward_pass(const RasterArgs<float>& A, const float* g, double* partial) {
#if IXGS_HAVE_AVX2_VARIANT
  if (use_avx2()) return backward_pass_f32_avx2(A, g, partial);
#endif
  backward_pass_f32(A, g, partial);
}

template <typename scalar_t>
RasterArgs<scalar_t> raster_args(const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& weight,
                                 const std::vector<int32_t>& box, const at::Tensor& offsets, const at::Tensor& ids,
                                 const TileGrid& tg, double sigma_cutoff) {
  return RasterArgs<scalar_t>{mean2d.data_ptr<scalar_t>(), conic.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                              box.data(), offsets.data_ptr<int32_t>(), ids.data_ptr<int32_t>(), tg,
                              static_cast<scalar_t>(0.5 * sigma_cutoff * sigma_cutoff), ids.numel()};
}

template <typename scalar_t>
void rasterize_forward_impl(const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& weight,
                            const at::Tensor& radius, const TileGrid& tg, double sigma_cutoff, at::Tensor& image,
                            at::Tensor& offsets, at::Tensor& ids) {
  const int64_t n = mean2d.size(0);
  const std::vector<int32_t> box = splat_boxes<scalar_t>(n, mean2d.data_ptr<scalar_t>(), conic.data_ptr<scalar_t>(),
                                                         radius.data_ptr<scalar_t>(), tg, sigma_cutoff);
  bin_splats(n, box, tg, offsets, ids);
  forward_pass(raster_args<scalar_t>(mean2d, conic, weight, box, offsets, ids, tg, sigma_cutoff),
               image.data_ptr<scalar_t>());
}

template <typename scalar_t>
void rasterize_backward_impl(const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& weight,
                             const at::Tensor& radius, const at::Tensor& tile_offsets, const at::Tensor& tile_ids,
                             const at::Tensor& grad_image, const TileGrid& tg, double sigma_cutoff,
                             at::Tensor& g_mean2d, at::Tensor& g_conic, at::Tensor& g_weight) {
  const int64_t n = mean2d.size(0);
  TORCH_CHECK(tile_offsets.data_ptr<int32_t>()[tg.count()] == tile_ids.numel(),
              "tile_offsets and tile_ids do not match");
  const std::vector<int32_t> box = splat_boxes<scalar_t>(n, mean2d.data_ptr<scalar_t>(), conic.data_ptr<scalar_t>(),
                                                         radius.data_ptr<scalar_t>(), tg, sigma_cutoff);
  // partial[p] = (mean_u, mean_v, a, b, c, weight) gradient of pair p
  std::vector<double> partial(static_cast<size_t>(tile_ids.numel()) * 6);
  backward_pass(raster_args<scalar_t>(mean2d, conic, weight, box, tile_offsets, tile_ids, tg, sigma_cutoff),
                grad_image.data_ptr<scalar_t>(), partial.data());
  // reduce pairs -> per-splat (mean_u, mean_v, a, b, c, weight), then scatter into the three outputs
  std::vector<scalar_t> packed(static_cast<size_t>(n) * 6);
  reduce_pairs<scalar_t, 6>(n, tile_ids, partial, packed.data());
  scalar_t* gm = g_mean2d.data_ptr<scalar_t>();
  scalar_t* gc = g_conic.data_ptr<scalar_t>();
  scalar_t* gw = g_weight.data_ptr<scalar_t>();
  serial_for(0, n, [&](int64_t bgn, int64_t end) {
    for (int64_t i = bgn; i < end; ++i) {
      const scalar_t* s = &packed[i * 6];
      gm[2 * i] = s[0];
      gm[2 * i + 1] = s[1];
      gc[3 * i] = s[2];
      gc[3 * i + 1] = s[3];
      gc[3 * i + 2] = s[4];
      gw[i] = s[5];
    }
  });
}

}  // namespace

std::vector<at::Tensor> rasterize_forward(const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& weight,
                                          const at::Tensor& radius, int64_t width, int64_t height,
                                          double sigma_cutoff) {
  check_splats(mean2d, conic, weight, radius);
  TORCH_CHECK(width > 0 && height > 0 && width < (1 << 20) && height < (1 << 20), "bad image size ", width, "x",
              height);
  const int64_t n = mean2d.size(0);
  const TileGrid tg(static_cast<int>(width), static_cast<int>(height));
  at::Tensor image = new_output({height, width}, mean2d.options());
  at::Tensor offsets, ids;
  AT_DISPATCH_FLOATING_TYPES(mean2d.scalar_type(), "ixgs_rasterize_forward", [&] {
    rasterize_forward_impl<scalar_t>(mean2d, conic, weight, radius, tg, sigma_cutoff, image, offsets, ids);
  });
  return {image, offsets, ids};
}

std::vector<at::Tensor> rasterize_backward(const at::Tensor& mean2d, const at::Tensor& conic,
                                           const at::Tensor& weight, const at::Tensor& radius,
                                           const at::Tensor& tile_offsets, const at::Tensor& tile_ids,
                                           const at::Tensor& grad_image, int64_t width, int64_t height,
                                           double sigma_cutoff) {
  check_splats(mean2d, conic, weight, radius);
  const int64_t n = mean2d.size(0);
  const TileGrid tg(static_cast<int>(width), static_cast<int>(height));
  IXGS_CHECK_INPUT(grad_image, mean2d.scalar_type());
  IXGS_CHECK_SHAPE(grad_image, height, width);
  IXGS_CHECK_INPUT(tile_offsets, at::kInt);
  IXGS_CHECK_INPUT(tile_ids, at::kInt);
  IXGS_CHECK_SHAPE(tile_offsets, tg.count() + 1);
  at::Tensor g_mean2d = new_output({n, 2}, mean2d.options());
  at::Tensor g_conic = new_output({n, 3}, mean2d.options());
  at::Tensor g_weight = new_output({n}, mean2d.options());
  AT_DISPATCH_FLOATING_TYPES(mean2d.scalar_type(), "ixgs_rasterize_backward", [&] {
    rasterize_backward_impl<scalar_t>(mean2d, conic, weight, radius, tile_offsets, tile_ids, grad_image, tg,
                                      sigma_cutoff, g_mean2d, g_conic, g_weight);
  });
  return {g_mean2d, g_conic, g_weight};
}

}  // namespace ixgs
