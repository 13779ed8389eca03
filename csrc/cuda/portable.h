// What a fastdw CUDA kernel includes: one source for two compilers. Under nvcc it is plain CUDA;
// under g++ (no __CUDACC__) the same names come from fastdw's emulator
// (csrc/cuda/emulator/emulator.h), which runs the kernel on the host and checks it.
//
// Kernel code keeps to what both sides define:
//   FASTDW_DEVICE for device functions, FASTDW_HOST_DEVICE for those the launchers call too;
//   threadIdx, blockIdx, blockDim, gridDim, warpSize, __syncthreads(), __shfl*_sync,
//   __ballot_sync, __syncwarp, and the CUDA math functions that <cmath> also has (fmaf, expf...);
//   FASTDW_SHARED(T, name, count) / FASTDW_SHARED_ALIGNED(T, name, count, align) for __shared__
//   arrays, FASTDW_DYNAMIC_SHARED(T, name) for the dynamic array, SharedPtr<T> for a pointer
//   into either, shared_as<U>(p) to view one as another type;
//   load_vec / store_vec for 16-byte global accesses; launch() instead of <<<...>>>.
// Raw __shared__ is refused under the emulator: its accesses could not be checked.
#pragma once

#include <cstddef>
#include <cstdint>

#include "launchers.h"

#if defined(__CUDACC__)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <utility>

#define FASTDW_DEVICE __device__ __forceinline__
#define FASTDW_HOST_DEVICE __host__ __device__ inline
#define FASTDW_SHARED(T, name, count) __shared__ T name[count]
#define FASTDW_SHARED_ALIGNED(T, name, count, align) __shared__ __align__(align) T name[count]
#define FASTDW_DYNAMIC_SHARED(T, name)                                    \
  extern __shared__ __align__(16) unsigned char fastdw_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(fastdw_dynamic_shared_)

namespace fastdw_cuda {

template <typename T>
using SharedPtr = T*;

template <typename U, typename T>
FASTDW_DEVICE U* shared_as(T* p) { return reinterpret_cast<U*>(p); }

// One 128-bit access whatever V is made of. The store is inline PTX: nvcc splits a plain
// 16-byte store into four when the kernel also has a scalar store to the same place.
template <typename V, typename T>
FASTDW_DEVICE V load_vec(const T* p) {
  static_assert(sizeof(V) == 16 && alignof(V) == 16, "vector accesses are 16 aligned bytes");
  const uint4 bits = *reinterpret_cast<const uint4*>(p);
  return *reinterpret_cast<const V*>(&bits);
}

template <typename V, typename T>
FASTDW_DEVICE void store_vec(T* p, const V& v) {
  static_assert(sizeof(V) == 16 && alignof(V) == 16, "vector accesses are 16 aligned bytes");
  uint4 b;
  memcpy(&b, &v, 16);
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(b.x), "r"(b.y),
               "r"(b.z), "r"(b.w)
               : "memory");
}

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace fastdw_cuda

#else  // the host, through the emulator

#include <cmath>
#include <source_location>

#include "emulator/emulator.h"

#undef __shared__  // cuda headers define it empty for the host
#define __shared__ FASTDW_SHARED_instead_of___shared__
#define FASTDW_DEVICE inline
#define FASTDW_HOST_DEVICE inline
#undef __launch_bounds__  // an unknown attribute to g++
#define __launch_bounds__(...)
#define FASTDW_SHARED(T, name, count)                 \
  static const char name##_fastdw_tag = 0;            \
  ::fastdw_emu::SharedPtr<T> name =                   \
      ::fastdw_emu::static_shared<T>(&name##_fastdw_tag, count, #name)
// Under the emulator an array gets exactly the alignment asked for, and no more (see
// Block::static_region), so a vector access that needs __align__ fails without it.
#define FASTDW_SHARED_ALIGNED(T, name, count, align)   \
  static const char name##_fastdw_tag = 0;             \
  ::fastdw_emu::SharedPtr<T> name =                    \
      ::fastdw_emu::static_shared<T>(&name##_fastdw_tag, count, #name, align)
#define FASTDW_DYNAMIC_SHARED(T, name) \
  ::fastdw_emu::SharedPtr<T> name = ::fastdw_emu::dynamic_shared<T>(#name)

#define threadIdx (::fastdw_emu::this_block().current->thread_idx)
#define blockIdx (::fastdw_emu::this_block().block_idx)
#define blockDim (::fastdw_emu::this_block().block_dim)
#define gridDim (::fastdw_emu::this_block().grid_dim)
#define warpSize 32

inline void __syncthreads(std::source_location at = std::source_location::current()) {
  ::fastdw_emu::syncthreads(at.file_name(), static_cast<int>(at.line()));
}

#define FASTDW_EMU_COLLECTIVE(name, kind)                                                      \
  template <typename T>                                                                        \
  T name(unsigned mask, T value, int arg, int width = 32,                                      \
         std::source_location at = std::source_location::current()) {                          \
    return ::fastdw_emu::collective(::fastdw_emu::detail::Collective::kind, at.file_name(),    \
                                    static_cast<int>(at.line()), mask, value, arg, width);     \
  }
FASTDW_EMU_COLLECTIVE(__shfl_sync, kShflIdx)
FASTDW_EMU_COLLECTIVE(__shfl_up_sync, kShflUp)
FASTDW_EMU_COLLECTIVE(__shfl_down_sync, kShflDown)
FASTDW_EMU_COLLECTIVE(__shfl_xor_sync, kShflXor)
#undef FASTDW_EMU_COLLECTIVE

inline unsigned __ballot_sync(unsigned mask, int predicate,
                              std::source_location at = std::source_location::current()) {
  return ::fastdw_emu::collective(::fastdw_emu::detail::Collective::kBallot, at.file_name(),
                                  static_cast<int>(at.line()), mask,
                                  static_cast<uint32_t>(predicate != 0), 0, 32);
}

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location at = std::source_location::current()) {
  ::fastdw_emu::collective(::fastdw_emu::detail::Collective::kSyncwarp, at.file_name(),
                           static_cast<int>(at.line()), mask, 0u, 0, 32);
}

namespace fastdw_cuda {

using ::fastdw_emu::SharedPtr;

template <typename U, typename T>
SharedPtr<U> shared_as(const SharedPtr<T>& p) { return p.template as<U>(); }

template <typename V, typename T>
V load_vec(const T* p) {
  static_assert(sizeof(V) == 16 && alignof(V) == 16, "vector accesses are 16 aligned bytes");
  ::fastdw_emu::check_vector_alignment(p, sizeof(V), "global load");
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
void store_vec(T* p, const V& v) {
  static_assert(sizeof(V) == 16 && alignof(V) == 16, "vector accesses are 16 aligned bytes");
  ::fastdw_emu::check_vector_alignment(p, sizeof(V), "global store");
  std::memcpy(p, &v, sizeof(V));
}

}  // namespace fastdw_cuda

#endif

namespace fastdw_cuda {

// A kernel launch: kernel<<<grid, block, dynamic_shared, stream>>>.
struct Launch {
  dim3 grid, block;
  size_t dynamic_shared = 0;
  Stream stream = nullptr;
};

// Dynamic shared memory beyond this needs the per-kernel opt-in (cudaFuncSetAttribute).
inline constexpr size_t kDefaultDynamicShared = 48 * 1024;

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), const Launch& cfg, Args&&... args) {
#if defined(__CUDACC__)
  if (cfg.dynamic_shared > kDefaultDynamicShared)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(cfg.dynamic_shared)),
               "cudaFuncSetAttribute");
  kernel<<<cfg.grid, cfg.block, cfg.dynamic_shared, static_cast<cudaStream_t>(cfg.stream)>>>(
      std::forward<Args>(args)...);
  check_cuda(cudaGetLastError(), "kernel launch");
#else
  ::fastdw_emu::Options opt = ::fastdw_emu::options_from_env();
  opt.max_dynamic_shared = cfg.dynamic_shared > kDefaultDynamicShared ? cfg.dynamic_shared
                                                                      : kDefaultDynamicShared;
  ::fastdw_emu::launch(kernel, cfg.grid, cfg.block, cfg.dynamic_shared, opt,
                       std::forward<Args>(args)...);
#endif
}

}  // namespace fastdw_cuda
