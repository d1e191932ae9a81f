// Per-Gaussian projection into one pinhole view on the CPU (project_cpu.cpp): the torch reference
// `project_gaussians` of ixgs_ros/engine/render.py fused into one pass, forward and backward. Not part of the
// splatting ABI (ixgs_kernels.h): CUDA tensors keep the torch reference.
//
//   camera: float64 [17] = Rws (3x3, row major), source (3), fx, skew, cx, fy, cy
//   project_forward(means [N,3], scales [N,3], quats [N,4] (w,x,y,z), density [N], camera, eps2d, near,
//                   sigma_cutoff, width, height) -> {mean2d [N,2], conic [N,3], weight [N], radius [N], depth [N]}
//   project_backward(means, scales, quats, density, camera, eps2d, near, grad_mean2d, grad_conic, grad_weight)
//     -> {grad_means [N,3], grad_scales [N,3], grad_quats [N,4], grad_density [N]}
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace ixgs {

std::vector<at::Tensor> project_forward(const at::Tensor& means, const at::Tensor& scales, const at::Tensor& quats,
                                        const at::Tensor& density, const at::Tensor& camera, double eps2d,
                                        double near, double sigma_cutoff, int64_t width, int64_t height);

std::vector<at::Tensor> project_backward(const at::Tensor& means, const at::Tensor& scales, const at::Tensor& quats,
                                         const at::Tensor& density, const at::Tensor& camera, double eps2d,
                                         double near, const at::Tensor& grad_mean2d, const at::Tensor& grad_conic,
                                         const at::Tensor& grad_weight);

}  // namespace ixgs
