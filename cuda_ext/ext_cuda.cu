// The ABI of ixgs_kernels.h (rasterize_forward/backward, voxelize_forward/backward, set_poison_outputs) for CUDA
// tensors, and its Python bindings; built by ixgs_ros/engine/kernels.py into its own extension module.
// STATUS: not yet run on a GPU (cuda_ext/README.md). Not part of the default (CPU) build.
//
// This file does the orchestration with ATen on the tensors' device and current stream (allocation, cumsum,
// radix sort, one device->host read of the pair count); the kernels are in *_cuda.cu behind the torch-free
// launchers of splat_cuda.cuh. The same source also compiles as plain C++ (no nvcc) against cuda_emu.cuh:
// that "emulated" module takes CPU tensors and runs the kernels' code on CPU threads (a test aid only).
#include "ixgs_kernels.h"

#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <torch/csrc/utils/pybind.h>

#if defined(__CUDACC__)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

// after the torch headers: in the emulated build this pulls in cuda_emu.cuh and its macros
#include "splat_cuda.cuh"
#include "splat_math.h"

#include <atomic>
#include <limits>
#include <string>

#ifndef IXGS_CUDA_FMAD
#define IXGS_CUDA_FMAD 0
#endif

namespace ixgs {

namespace {

#if defined(__CUDACC__)
constexpr bool kEmulated = false;
#else
constexpr bool kEmulated = true;
#endif

std::atomic<bool> g_poison{false};

// The device scope of one call: the tensors' device and its current stream.
struct DeviceScope {
#if defined(__CUDACC__)
  c10::cuda::CUDAGuard guard;
  explicit DeviceScope(const at::Tensor& t) : guard(t.device()) {}
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(); }
#else
  explicit DeviceScope(const at::Tensor&) {}
  cudaStream_t stream() const { return nullptr; }
#endif
};

void check_device(const at::Tensor& x, const at::Tensor& ref, const char* name) {
  if (kEmulated) {
    TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor (emulated CUDA build)");
  } else {
    TORCH_CHECK(x.is_cuda(), name, " must be a CUDA tensor");
  }
  TORCH_CHECK(x.device() == ref.device(), name, " is on ", x.device(), ", expected ", ref.device());
}

void check_input(const at::Tensor& x, const at::Tensor& ref, at::ScalarType dtype, const char* name) {
  check_device(x, ref, name);
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(x.scalar_type() == dtype, name, " has dtype ", x.scalar_type(), ", expected ", dtype);
}

void check_shape(const at::Tensor& x, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(x.sizes() == shape, name, " has shape ", x.sizes(), ", expected ", shape);
}

void check_launch(const char* where) {
  const char* err = cuda::last_launch_error();
  TORCH_CHECK(err[0] == '\0', "CUDA kernel launch failed in ", where, ": ", err);
}

// Output (or scratch) tensor, NaN-filled first when the poison flag is set, so unwritten elements show.
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
  if (g_poison.load() && t.numel() > 0) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

// Inclusive cumsum of the per-item pair counts (int64) and its total (reads one value back to the host).
int64_t pair_total(const at::Tensor& npairs, at::Tensor& pair_end) {
  pair_end = at::cumsum(npairs, 0);
  const int64_t pairs = pair_end.numel() ? pair_end[-1].item<int64_t>() : 0;
  TORCH_CHECK(pairs < std::numeric_limits<int32_t>::max(), "too many splat/cell pairs: ", pairs);
  return pairs;
}

// CSR lists (offsets [ncells + 1], ids [pairs]) from the unsorted (cell << 32 | item) keys.
void lists_from_keys(const at::Tensor& keys, int64_t ncells, cudaStream_t stream, at::Tensor& offsets,
                     at::Tensor& ids) {
  const int64_t pairs = keys.numel();
  const auto iopts = keys.options().dtype(at::kInt);
  offsets = at::empty({ncells + 1}, iopts);
  ids = at::empty({pairs}, iopts);
  const at::Tensor sorted = pairs > 0 ? std::get<0>(at::sort(keys, 0, false)) : keys;
  cuda::cell_ranges(pairs, sorted.data_ptr<int64_t>(), ncells, offsets.data_ptr<int32_t>(), ids.data_ptr<int32_t>(),
                    stream);
  check_launch("cell_ranges");
}

at::Tensor new_keys(int64_t pairs, const at::Tensor& like) {
  at::Tensor keys = at::empty({pairs}, like.options().dtype(at::kLong));
  if (g_poison.load() && pairs > 0) keys.fill_(-1);  // an unwritten key would sort first and break the lists
  return keys;
}

// ------------------------------------------------------------------------------------------------ rasterizer
struct Tiles {
  int width, height, ntx, nty;
  Tiles(int64_t w, int64_t h)
      : width(static_cast<int>(w)), height(static_cast<int>(h)), ntx(static_cast<int>((w + kTile - 1) / kTile)),
        nty(static_cast<int>((h + kTile - 1) / kTile)) {}
  int64_t count() const { return int64_t(ntx) * nty; }
};

void check_splats(const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& weight,
                  const at::Tensor& radius) {
  TORCH_CHECK(mean2d.dim() == 2 && mean2d.size(1) == 2, "mean2d must be [N, 2], got ", mean2d.sizes());
  const int64_t n = mean2d.size(0);
  TORCH_CHECK(n < std::numeric_limits<int32_t>::max(), "too many splats: ", n);
  const auto dtype = mean2d.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "splat tensors must be float32 or float64");
  check_input(mean2d, mean2d, dtype, "mean2d");
  check_input(conic, mean2d, dtype, "conic");
  check_input(weight, mean2d, dtype, "weight");
  check_input(radius, mean2d, dtype, "radius");
  check_shape(conic, {n, 3}, "conic");
  check_shape(weight, {n}, "weight");
  check_shape(radius, {n}, "radius");
}

void check_image_size(int64_t width, int64_t height) {
  TORCH_CHECK(width > 0 && height > 0 && width < (1 << 20) && height < (1 << 20), "bad image size ", width, "x",
              height);
  TORCH_CHECK(Tiles(width, height).count() < std::numeric_limits<int32_t>::max(), "too many tiles");
}

// Pixel boxes [N, 4] and the inclusive cumsum of the tiles each covers; returns the pair count.
template <typename T>
int64_t splat_boxes(const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& radius, const Tiles& tg,
                    double sigma_cutoff, cudaStream_t stream, at::Tensor& pbox, at::Tensor& pair_end) {
  const int64_t n = mean2d.size(0);
  pbox = at::empty({n, 4}, mean2d.options().dtype(at::kInt));
  at::Tensor npairs = at::empty({n}, mean2d.options().dtype(at::kLong));
  cuda::raster_boxes<T>(n, mean2d.data_ptr<T>(), conic.data_ptr<T>(), radius.data_ptr<T>(), tg.width, tg.height,
                        static_cast<T>(sigma_cutoff), pbox.data_ptr<int32_t>(), npairs.data_ptr<int64_t>(), stream);
  check_launch("raster_boxes");
  return pair_total(npairs, pair_end);
}

template <typename T>
cuda::RasterArgs<T> raster_args(const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& weight,
                                const at::Tensor& pbox, const at::Tensor& offsets, const at::Tensor& ids,
                                const Tiles& tg, double sigma_cutoff) {
  return cuda::RasterArgs<T>{mean2d.data_ptr<T>(),
                             conic.data_ptr<T>(),
                             weight.data_ptr<T>(),
                             pbox.data_ptr<int32_t>(),
                             offsets.data_ptr<int32_t>(),
                             ids.data_ptr<int32_t>(),
                             tg.width,
                             tg.height,
                             tg.ntx,
                             tg.nty,
                             static_cast<T>(0.5 * sigma_cutoff * sigma_cutoff)};
}

// ------------------------------------------------------------------------------------------------ voxelizer
struct Bricks {
  int64_t size[3], nb[3];
  Bricks(int64_t i, int64_t j, int64_t k) {
    size[0] = i;
    size[1] = j;
    size[2] = k;
    for (int d = 0; d < 3; ++d) nb[d] = (size[d] + kBrick - 1) / kBrick;
  }
  int64_t count() const { return nb[0] * nb[1] * nb[2]; }
};

void check_gaussians(const at::Tensor& means, const at::Tensor& icov, const at::Tensor& density,
                     const at::Tensor& extent, const at::Tensor& bounds, const at::Tensor& affine) {
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be [N, 3], got ", means.sizes());
  const int64_t n = means.size(0);
  TORCH_CHECK(n < std::numeric_limits<int32_t>::max(), "too many Gaussians: ", n);
  const auto dtype = means.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "Gaussian tensors must be float32 or float64");
  check_input(means, means, dtype, "means");
  check_input(icov, means, dtype, "icov");
  check_input(density, means, dtype, "density");
  check_input(extent, means, dtype, "extent");
  check_input(bounds, means, at::kInt, "bounds");
  TORCH_CHECK(affine.scalar_type() == at::kDouble, "affine has dtype ", affine.scalar_type(), ", expected Double");
  check_shape(icov, {n, 6}, "icov");
  check_shape(density, {n}, "density");
  check_shape(extent, {n, 3}, "extent");
  check_shape(bounds, {n, 6}, "bounds");
  check_shape(affine, {3, 4}, "affine");
}

void check_grid_size(int64_t i, int64_t j, int64_t k) {
  TORCH_CHECK(i > 0 && j > 0 && k > 0, "grid size must be positive");
  TORCH_CHECK(i < (1 << 30) && j < (1 << 30) && k < (1 << 30), "grid too large");
  TORCH_CHECK(Bricks(i, j, k).count() < std::numeric_limits<int32_t>::max(), "grid too large (bricks)");
}

// affine on the means' device (the CUDA kernels read it from device memory; a CPU tensor is copied).
at::Tensor affine_on_device(const at::Tensor& affine, const at::Tensor& means) {
  return affine.to(means.device(), at::kDouble).contiguous();
}

// Clamped bounds [N, 6] and the inclusive cumsum of the bricks each covers; returns the pair count.
int64_t gaussian_boxes(const at::Tensor& bounds, const Bricks& bg, cudaStream_t stream, at::Tensor& cb,
                       at::Tensor& pair_end) {
  const int64_t n = bounds.size(0);
  cb = at::empty({n, 6}, bounds.options());
  at::Tensor npairs = at::empty({n}, bounds.options().dtype(at::kLong));
  cuda::voxel_boxes(n, bounds.data_ptr<int32_t>(), bg.size, cb.data_ptr<int32_t>(), npairs.data_ptr<int64_t>(),
                    stream);
  check_launch("voxel_boxes");
  return pair_total(npairs, pair_end);
}

template <typename T>
cuda::VoxelArgs<T> voxel_args(const at::Tensor& means, const at::Tensor& icov, const at::Tensor& density,
                              const at::Tensor& extent, const at::Tensor& cb, const at::Tensor& affine,
                              const at::Tensor& offsets, const at::Tensor& ids, const Bricks& bg) {
  cuda::VoxelArgs<T> a{means.data_ptr<T>(),        icov.data_ptr<T>(),         density.data_ptr<T>(),
                       extent.data_ptr<T>(),       cb.data_ptr<int32_t>(),     affine.data_ptr<double>(),
                       offsets.data_ptr<int32_t>(), ids.data_ptr<int32_t>(),   {0, 0, 0},
                       {0, 0, 0}};
  for (int d = 0; d < 3; ++d) {
    a.size[d] = bg.size[d];
    a.nb[d] = bg.nb[d];
  }
  return a;
}

}  // namespace

void set_poison_outputs(bool on) { g_poison.store(on); }
bool poison_outputs() { return g_poison.load(); }

std::vector<at::Tensor> rasterize_forward(const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& weight,
                                          const at::Tensor& radius, int64_t width, int64_t height,
                                          double sigma_cutoff) {
  check_splats(mean2d, conic, weight, radius);
  check_image_size(width, height);
  const DeviceScope scope(mean2d);
  const cudaStream_t stream = scope.stream();
  const Tiles tg(width, height);
  at::Tensor image = new_output({height, width}, mean2d.options());
  at::Tensor offsets, ids;
  AT_DISPATCH_FLOATING_TYPES(mean2d.scalar_type(), "ixgs_cuda_rasterize_forward", [&] {
    at::Tensor pbox, pair_end;
    const int64_t pairs = splat_boxes<scalar_t>(mean2d, conic, radius, tg, sigma_cutoff, stream, pbox, pair_end);
    at::Tensor keys = new_keys(pairs, mean2d);
    cuda::raster_keys(mean2d.size(0), pbox.data_ptr<int32_t>(), pair_end.data_ptr<int64_t>(), tg.ntx,
                      keys.data_ptr<int64_t>(), stream);
    check_launch("raster_keys");
    lists_from_keys(keys, tg.count(), stream, offsets, ids);
    cuda::raster_forward<scalar_t>(
        raster_args<scalar_t>(mean2d, conic, weight, pbox, offsets, ids, tg, sigma_cutoff),
        image.data_ptr<scalar_t>(), stream);
    check_launch("raster_forward");
  });
  return {image, offsets, ids};
}

std::vector<at::Tensor> rasterize_backward(const at::Tensor& mean2d, const at::Tensor& conic,
                                           const at::Tensor& weight, const at::Tensor& radius,
                                           const at::Tensor& tile_offsets, const at::Tensor& tile_ids,
                                           const at::Tensor& grad_image, int64_t width, int64_t height,
                                           double sigma_cutoff) {
  check_splats(mean2d, conic, weight, radius);
  check_image_size(width, height);
  const int64_t n = mean2d.size(0);
  const Tiles tg(width, height);
  check_input(grad_image, mean2d, mean2d.scalar_type(), "grad_image");
  check_shape(grad_image, {height, width}, "grad_image");
  check_input(tile_offsets, mean2d, at::kInt, "tile_offsets");
  check_input(tile_ids, mean2d, at::kInt, "tile_ids");
  check_shape(tile_offsets, {tg.count() + 1}, "tile_offsets");
  const DeviceScope scope(mean2d);
  const cudaStream_t stream = scope.stream();
  at::Tensor g_mean2d = new_output({n, 2}, mean2d.options());
  at::Tensor g_conic = new_output({n, 3}, mean2d.options());
  at::Tensor g_weight = new_output({n}, mean2d.options());
  AT_DISPATCH_FLOATING_TYPES(mean2d.scalar_type(), "ixgs_cuda_rasterize_backward", [&] {
    at::Tensor pbox, pair_end;
    const int64_t pairs = splat_boxes<scalar_t>(mean2d, conic, radius, tg, sigma_cutoff, stream, pbox, pair_end);
    TORCH_CHECK(pairs == tile_ids.numel(), "tile_offsets and tile_ids do not match the splats (", pairs,
                " pairs expected, ", tile_ids.numel(), " given)");
    at::Tensor partial = new_output({pairs, 6}, mean2d.options().dtype(at::kDouble));
    cuda::raster_backward<scalar_t>(
        raster_args<scalar_t>(mean2d, conic, weight, pbox, tile_offsets, tile_ids, tg, sigma_cutoff),
        pair_end.data_ptr<int64_t>(), grad_image.data_ptr<scalar_t>(), partial.data_ptr<double>(), stream);
    check_launch("raster_backward");
    cuda::reduce_slots<scalar_t>(n, 6, pair_end.data_ptr<int64_t>(), partial.data_ptr<double>(),
                                 g_mean2d.data_ptr<scalar_t>(), 2, g_conic.data_ptr<scalar_t>(), 3,
                                 g_weight.data_ptr<scalar_t>(), 1, stream);
    check_launch("reduce_slots");
  });
  return {g_mean2d, g_conic, g_weight};
}

std::vector<at::Tensor> voxelize_forward(const at::Tensor& means, const at::Tensor& icov, const at::Tensor& density,
                                         const at::Tensor& extent, const at::Tensor& bounds,
                                         const at::Tensor& affine, int64_t size_i, int64_t size_j, int64_t size_k) {
  check_gaussians(means, icov, density, extent, bounds, affine);
  check_grid_size(size_i, size_j, size_k);
  const DeviceScope scope(means);
  const cudaStream_t stream = scope.stream();
  const Bricks bg(size_i, size_j, size_k);
  const at::Tensor A = affine_on_device(affine, means);
  at::Tensor volume = new_output({size_i, size_j, size_k}, means.options());
  at::Tensor cb, pair_end, offsets, ids;
  const int64_t pairs = gaussian_boxes(bounds, bg, stream, cb, pair_end);
  at::Tensor keys = new_keys(pairs, means);
  cuda::voxel_keys(means.size(0), cb.data_ptr<int32_t>(), pair_end.data_ptr<int64_t>(), bg.nb,
                   keys.data_ptr<int64_t>(), stream);
  check_launch("voxel_keys");
  lists_from_keys(keys, bg.count(), stream, offsets, ids);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "ixgs_cuda_voxelize_forward", [&] {
    cuda::voxel_forward<scalar_t>(voxel_args<scalar_t>(means, icov, density, extent, cb, A, offsets, ids, bg),
                                  volume.data_ptr<scalar_t>(), stream);
    check_launch("voxel_forward");
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
  check_grid_size(size_i, size_j, size_k);
  const int64_t n = means.size(0);
  const Bricks bg(size_i, size_j, size_k);
  check_input(grad_volume, means, means.scalar_type(), "grad_volume");
  check_shape(grad_volume, {size_i, size_j, size_k}, "grad_volume");
  check_input(brick_offsets, means, at::kInt, "brick_offsets");
  check_input(brick_ids, means, at::kInt, "brick_ids");
  check_shape(brick_offsets, {bg.count() + 1}, "brick_offsets");
  const DeviceScope scope(means);
  const cudaStream_t stream = scope.stream();
  const at::Tensor A = affine_on_device(affine, means);
  at::Tensor g_means = new_output({n, 3}, means.options());
  at::Tensor g_icov = new_output({n, 6}, means.options());
  at::Tensor g_density = new_output({n}, means.options());
  at::Tensor cb, pair_end;
  const int64_t pairs = gaussian_boxes(bounds, bg, stream, cb, pair_end);
  TORCH_CHECK(pairs == brick_ids.numel(), "brick_offsets and brick_ids do not match the Gaussians (", pairs,
              " pairs expected, ", brick_ids.numel(), " given)");
  at::Tensor partial = new_output({pairs, 10}, means.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "ixgs_cuda_voxelize_backward", [&] {
    cuda::voxel_backward<scalar_t>(
        voxel_args<scalar_t>(means, icov, density, extent, cb, A, brick_offsets, brick_ids, bg),
        pair_end.data_ptr<int64_t>(), grad_volume.data_ptr<scalar_t>(), partial.data_ptr<double>(), stream);
    check_launch("voxel_backward");
    cuda::reduce_slots<scalar_t>(n, 10, pair_end.data_ptr<int64_t>(), partial.data_ptr<double>(),
                                 g_means.data_ptr<scalar_t>(), 3, g_icov.data_ptr<scalar_t>(), 6,
                                 g_density.data_ptr<scalar_t>(), 1, stream);
    check_launch("reduce_slots");
  });
  return {g_means, g_icov, g_density};
}

}  // namespace ixgs

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = ixgs::kEmulated ? "ixgs_ros CUDA splatting kernels, emulated on CPU threads (test aid)"
                            : "ixgs_ros CUDA splatting kernels";
  m.def("rasterize_forward", &ixgs::rasterize_forward, "Additive 2D splat rasterizer (forward)");
  m.def("rasterize_backward", &ixgs::rasterize_backward, "Additive 2D splat rasterizer (backward)");
  m.def("voxelize_forward", &ixgs::voxelize_forward, "Gaussian voxelizer (forward)");
  m.def("voxelize_backward", &ixgs::voxelize_backward, "Gaussian voxelizer (backward)");
  m.def("set_poison_outputs", &ixgs::set_poison_outputs,
        "Fill kernel outputs and scratch buffers with NaN before writing (tests)");
  m.def("poison_outputs", &ixgs::poison_outputs);
  m.attr("emulated") = ixgs::kEmulated;
  m.attr("fmad") = static_cast<bool>(IXGS_CUDA_FMAD);
  m.attr("tile_size") = ixgs::kTile;
  m.attr("brick_size") = ixgs::kBrick;
}
