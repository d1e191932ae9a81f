// Python bindings of the ixgs native kernels (built by ixgs_ros/engine/kernels.py with torch.utils.cpp_extension).
#include "ixgs_kernels.h"
#include "cpu_common.h"
#include "splat_math.h"
#include "project.h"
#include "tv.h"

#include <torch/csrc/utils/pybind.h>  // pybind11 + tensor casters (much lighter than torch/extension.h)

#include <atomic>
#include <cstdlib>
#include <string>

namespace ixgs {

namespace {
std::atomic<bool> g_poison{false};
}

void set_poison_outputs(bool on) { g_poison.store(on); }
bool poison_outputs() { return g_poison.load(); }

namespace {
bool cpu_has_avx2() {
#if IXGS_HAVE_AVX2_VARIANT
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}
bool simd_env_enabled() {
  const char* v = std::getenv("IXGS_NATIVE_SIMD");
  return !(v && std::string(v) == "0");
}
std::atomic<bool> g_simd{simd_env_enabled()};
const bool g_cpu_avx2 = cpu_has_avx2();
}  // namespace

bool use_avx2() { return g_cpu_avx2 && g_simd.load(); }
void set_simd(bool enabled) { g_simd.store(enabled); }
std::string simd_level() { return use_avx2() ? "avx2" : "baseline"; }

}  // namespace ixgs

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ixgs_ros native splatting kernels (CPU/OpenMP)";
  m.def("rasterize_forward", &ixgs::rasterize_forward, "Additive 2D splat rasterizer (forward)");
  m.def("rasterize_backward", &ixgs::rasterize_backward, "Additive 2D splat rasterizer (backward)");
  m.def("voxelize_forward", &ixgs::voxelize_forward, "Gaussian voxelizer (forward)");
  m.def("voxelize_backward", &ixgs::voxelize_backward, "Gaussian voxelizer (backward)");
  m.def("project_forward", &ixgs::project_forward, "Per-Gaussian projection into one view (forward)");
  m.def("project_backward", &ixgs::project_backward, "Per-Gaussian projection into one view (backward)");
  m.def("tv_rof", &ixgs::tv_rof, "Total-variation (ROF) denoising, Chambolle-Pock iterations");
  m.def("set_poison_outputs", &ixgs::set_poison_outputs, "Fill kernel outputs with NaN before writing (tests)");
  m.def("poison_outputs", &ixgs::poison_outputs);
  m.def("set_simd", &ixgs::set_simd, "Allow (true, default) or forbid (false) the AVX2 kernel variants");
  m.def("simd_level", &ixgs::simd_level, "Instruction set the float32 kernels use now: avx2 or baseline");
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  m.attr("tile_size") = ixgs::kTile;
  m.attr("brick_size") = ixgs::kBrick;
}
