// CPU emulation of the few CUDA features the ixgs kernels use, so that the very same kernel sources
// (rasterize_cuda.cu, voxelize_cuda.cu, bin_cuda.cu) compile as plain C++ and run on a machine without a GPU.
//
// TEST AID ONLY (test/test_cuda.py, slow tests; never part of a product build). It proves the kernels' logic
// (indexing, binning, shared-memory batching, barriers, warp reductions, slot bookkeeping) against the torch
// reference; it proves nothing about the GPU's memory model, occupancy or speed.
//
// Model: a launch runs its blocks one after another on the calling OS thread. The threads of a block are
// fibers (POSIX ucontext) scheduled round robin; each runs until it reaches a barrier (__syncthreads, or the
// warp barrier inside warp_sum) or returns. So a thread always runs as far ahead of the others as the barriers
// let it: a missing barrier makes it read shared data the others have not written yet, or overwrite data they
// have not read yet - wrong results, deterministically. __shared__ variables are function statics (blocks
// never overlap). Warps are 32 consecutive linear thread ids; warp_sum reproduces the CUDA shuffle-down tree
// bit for bit. One OS thread per launch: no oversubscription of the machine.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emu.cuh is the CPU emulation; nvcc builds use the CUDA runtime"
#endif

#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct CUstream_st;
typedef CUstream_st* cudaStream_t;
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace ixgs_emu {

constexpr int kMaxWarpSum = 16;               // widest warp_sum (values per lane)
constexpr size_t kStackBytes = 256 * 1024;    // per emulated thread (virtual; pages are touched on use)

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  uint3 tid;
  bool done = false;
};

// Counting barrier over a group of fibers (all of them run on one OS thread: no locking).
struct Barrier {
  int members = 0, arrived = 0;
  uint64_t generation = 0;
};

struct BlockState {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  int current = -1;
  Barrier block;
  std::vector<Barrier> warps;
  std::vector<double> warp_buf;  // [warp][lane][kMaxWarpSum]
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
};

inline uint3 t_tid{0, 0, 0};
inline uint3 t_bid{0, 0, 0};
inline dim3 g_grid, g_block;
inline BlockState* g_state = nullptr;
inline std::mutex g_launch_mutex;  // launches are serial (the emulation has global state)

inline void yield_to_scheduler() {
  BlockState& s = *g_state;
  swapcontext(&s.fibers[s.current].ctx, &s.scheduler);
}

inline void barrier_wait(Barrier& b) {
  const uint64_t gen = b.generation;
  if (++b.arrived >= b.members) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  while (b.generation == gen) yield_to_scheduler();
}

inline unsigned linear_tid() { return t_tid.x + g_block.x * (t_tid.y + g_block.y * t_tid.z); }

inline void syncthreads() { barrier_wait(g_state->block); }

// Lane 0 receives the sum of v over the warp, in the order of the CUDA shuffle-down tree (offsets 16..1).
inline void warp_sum(double* v, int G) {
  if (G > kMaxWarpSum) throw std::logic_error("warp_sum: too many values");
  BlockState& s = *g_state;
  const unsigned lin = linear_tid(), warp = lin / 32, lane = lin % 32;
  double* buf = &s.warp_buf[static_cast<size_t>(warp) * 32 * kMaxWarpSum];
  for (int k = 0; k < G; ++k) buf[lane * kMaxWarpSum + k] = v[k];
  barrier_wait(s.warps[warp]);
  if (lane == 0) {
    for (int k = 0; k < G; ++k) {
      double t[32];
      for (int l = 0; l < 32; ++l) t[l] = buf[l * kMaxWarpSum + k];
      for (int off = 16; off > 0; off >>= 1)
        for (int l = 0; l < off; ++l) t[l] += t[l + off];
      v[k] = t[0];
    }
  }
  barrier_wait(s.warps[warp]);  // lane 0 has read the buffer before anyone writes it again
}

inline void fiber_entry() {
  BlockState& s = *g_state;
  s.body(s.body_arg);
  s.fibers[s.current].done = true;
  // a finished thread no longer takes part in barriers (as on the GPU, where exited threads count as arrived)
  const unsigned lin = linear_tid();
  Barrier* groups[2] = {&s.block, &s.warps[lin / 32]};
  for (Barrier* b : groups) {
    --b->members;
    if (b->members > 0 && b->arrived >= b->members) {
      b->arrived = 0;
      ++b->generation;
    }
  }
  // returning resumes uc_link (the scheduler)
}

// Run body(arg) as every thread of every block of grid x block.
inline void run_grid(dim3 grid, dim3 block, void (*body)(void*), void* arg) {
  std::lock_guard<std::mutex> guard(g_launch_mutex);
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  const int nthreads = static_cast<int>(block.x * block.y * block.z);
  if (nblocks == 0 || nthreads == 0 || nthreads > 1024) throw std::invalid_argument("emulated launch: bad config");
  g_grid = grid;
  g_block = block;
  BlockState s;
  s.fibers.resize(nthreads);
  for (auto& f : s.fibers) f.stack.reset(new char[kStackBytes]);
  s.warps.resize((nthreads + 31) / 32);
  s.warp_buf.resize(static_cast<size_t>(s.warps.size()) * 32 * kMaxWarpSum);
  s.body = body;
  s.body_arg = arg;
  g_state = &s;
  for (uint64_t b = 0; b < nblocks; ++b) {
    t_bid = uint3{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
    s.block = Barrier{nthreads, 0, 0};
    for (size_t w = 0; w < s.warps.size(); ++w)
      s.warps[w] = Barrier{std::min(32, nthreads - 32 * static_cast<int>(w)), 0, 0};
    for (int t = 0; t < nthreads; ++t) {
      Fiber& f = s.fibers[t];
      f.done = false;
      f.tid = uint3{unsigned(t) % block.x, (unsigned(t) / block.x) % block.y, unsigned(t) / (block.x * block.y)};
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.get();
      f.ctx.uc_stack.ss_size = kStackBytes;
      f.ctx.uc_link = &s.scheduler;
      makecontext(&f.ctx, fiber_entry, 0);
    }
    for (int alive = nthreads; alive > 0;) {
      alive = 0;
      for (int t = 0; t < nthreads; ++t) {
        Fiber& f = s.fibers[t];
        if (f.done) continue;
        s.current = t;
        t_tid = f.tid;
        swapcontext(&s.scheduler, &f.ctx);
        alive += f.done ? 0 : 1;
      }
    }
  }
  g_state = nullptr;
}

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  template <typename... A>
  void operator()(A&&... a) const {
    using Args = std::tuple<std::decay_t<P>...>;
    struct Job {
      void (*kernel)(P...);
      Args args;  // by value, as kernel parameters
    } job{kernel, Args(std::forward<A>(a)...)};
    run_grid(grid, block, [](void* p) {
      Job& j = *static_cast<Job*>(p);
      std::apply(j.kernel, j.args);
    }, &job);
  }
};

template <typename... P>
Launch<P...> launcher(dim3 grid, dim3 block, void (*kernel)(P...)) {
  return Launch<P...>{kernel, grid, block};
}

}  // namespace ixgs_emu

#define threadIdx (::ixgs_emu::t_tid)
#define blockIdx (::ixgs_emu::t_bid)
#define blockDim (::ixgs_emu::g_block)
#define gridDim (::ixgs_emu::g_grid)
inline void __syncthreads() { ::ixgs_emu::syncthreads(); }
