// The kernel ABI of the ixgs native extension: plain tensors in, plain tensors out.
//
// The CPU implementations live in *_cpu.cpp; a CUDA build implements the same functions (same names,
// arguments and return values) in *.cu. Shapes use N = number of Gaussians.
//
// Rasterizer (additive 2D splats, X-ray line integrals):
//   image[v, u] = sum_i weight_i exp(-power_i), power_i = 1/2 d^T [[a, b], [b, c]] d, d = (u, v) - mean2d_i,
//   over the splats with power_i <= sigma_cutoff^2 / 2 (pixel centres at integer coordinates).
//   rasterize_forward(mean2d [N,2], conic [N,3] (a,b,c), weight [N], radius [N] (pixels, <= 0 = culled),
//                     width, height, sigma_cutoff)
//     -> {image [H,W], tile_offsets int32 [T+1], tile_ids int32 [P]}   (T = 16x16 tiles, row major; the CSR
//        lists of splats per tile, passed back to the backward)
//   rasterize_backward(mean2d, conic, weight, radius, tile_offsets, tile_ids, grad_image [H,W],
//                      width, height, sigma_cutoff)
//     -> {grad_mean2d [N,2], grad_conic [N,3], grad_weight [N]}
//
// Voxelizer (sum of unnormalised 3D Gaussians sampled at voxel centres):
//   volume[i, j, k] = sum_n rho_n exp(-1/2 d^T Q_n d), d = A (i, j, k, 1) - mean_n, over the Gaussians whose
//   world box contains the voxel centre (|d_x| <= extent_x and likewise for y, z).
//   voxelize_forward(means [N,3], icov [N,6] (xx,xy,xz,yy,yz,zz), density [N], extent [N,3] (3-sigma world
//                    half box, mm), bounds int32 [N,6] (i0,i1,j0,j1,k0,k1 inclusive), affine float64 [3,4]
//                    (index -> world), size_i, size_j, size_k)
//     -> {volume [I,J,K], brick_offsets int32 [B+1], brick_ids int32 [P]}   (B = 8x8x8 bricks)
//   voxelize_backward(means, icov, density, extent, bounds, affine, brick_offsets, brick_ids, grad_volume,
//                     size_i, size_j, size_k)
//     -> {grad_means [N,3], grad_icov [N,6], grad_density [N]}
//
// Values and gradients are float32 or float64 (the dtype of the inputs).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <string>
#include <vector>

namespace ixgs {

std::vector<at::Tensor> rasterize_forward(const at::Tensor& mean2d, const at::Tensor& conic, const at::Tensor& weight,
                                          const at::Tensor& radius, int64_t width, int64_t height,
                                          double sigma_cutoff);

std::vector<at::Tensor> rasterize_backward(const at::Tensor& mean2d, const at::Tensor& conic,
                                           const at::Tensor& weight, const at::Tensor& radius,
                                           const at::Tensor& tile_offsets, const at::Tensor& tile_ids,
                                           const at::Tensor& grad_image, int64_t width, int64_t height,
                                           double sigma_cutoff);

std::vector<at::Tensor> voxelize_forward(const at::Tensor& means, const at::Tensor& icov, const at::Tensor& density,
                                         const at::Tensor& extent, const at::Tensor& bounds,
                                         const at::Tensor& affine, int64_t size_i, int64_t size_j, int64_t size_k);

std::vector<at::Tensor> voxelize_backward(const at::Tensor& means, const at::Tensor& icov,
                                          const at::Tensor& density, const at::Tensor& extent,
                                          const at::Tensor& bounds, const at::Tensor& affine,
                                          const at::Tensor& brick_offsets, const at::Tensor& brick_ids,
                                          const at::Tensor& grad_volume, int64_t size_i, int64_t size_j,
                                          int64_t size_k);

// Testing aid: when set, every output buffer is filled with NaN before the kernels write it, so a missed
// element shows up as NaN instead of as stale memory.
void set_poison_outputs(bool on);
bool poison_outputs();

// Instruction-set selection of the CPU kernels: "avx2" or "baseline". set_simd(false) forces the baseline
// (tests compare both); set_simd(true) restores automatic selection.
void set_simd(bool enabled);
std::string simd_level();

}  // namespace ixgs
