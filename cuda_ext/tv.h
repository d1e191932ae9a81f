// Total-variation denoising on the CPU (tv_cpu.cpp), for the initial solves' TV steps. Not part of the splatting
// ABI (ixgs_kernels.h): the CUDA builds do not implement it (the torch reference runs on CUDA tensors).
//
//   tv_rof(f [I,J,K], w [1] or [I,J,K] (the bound of |p| per voxel, > 0), iterations) -> u [I,J,K]
//   Chambolle-Pock on min_u 1/2 |u - f|^2 + sum_x w[x] |grad u|_x from u = f (tau = 1/4, sigma = 1/3), float32 or
//   float64, contiguous CPU tensors.
#pragma once

#include <ATen/core/Tensor.h>

namespace ixgs {

at::Tensor tv_rof(const at::Tensor& f, const at::Tensor& w, int64_t iterations);

}  // namespace ixgs
