// The inline-PTX operations fastdw's CUDA kernels use, one small header of helpers: under nvcc
// each is one PTX instruction; under the emulator (csrc/cuda/emulator/emulator.h) each is the
// emulator's model of that instruction, with the PTX ISA's fragment layouts and cp.async's
// completion rules, so kernels that use them run and are checked on the host. Warp shuffles are
// CUDA's own __shfl*_sync intrinsics, which portable.h gives both compilers.
//
//   mma_m16n8k16<T>(d, a, b, c)   d = a b + c on a 16x16 x 16x8 tile, T = __half or
//                                 __nv_bfloat16 in, fp32 accumulate; the whole warp, each lane
//                                 holding its fragments (emulator.h, Block::finish_mma)
//   ldmatrix<N, Trans>(r, row)    N (1, 2, 4) 8x8 16-bit matrices from shared memory into the
//                                 warp's registers; lanes 8i..8i+7 give the rows of matrix i
//   cp_async16(dst, src, valid)   an asynchronous 16-byte global -> shared copy (zero-filled
//                                 where !valid); cp_async_commit() closes a group and
//                                 cp_async_wait<N>() waits until at most N groups are pending.
//                                 The copied bytes may be read only after the wait (and, by
//                                 other threads, a __syncthreads).
#pragma once

#include "portable.h"

namespace fastdw_cuda {

template <typename T>
inline constexpr bool kIsBf16 = false;
template <>
inline constexpr bool kIsBf16<__nv_bfloat16> = true;

#if defined(__CUDACC__)

template <typename T>
FASTDW_DEVICE void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                const float (&c)[4]) {
  if constexpr (kIsBf16<T>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
}

template <int N, bool Trans = false, typename T>
FASTDW_DEVICE void ldmatrix(uint32_t (&r)[N], const T* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (N == 1) {
    if constexpr (Trans)
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];"
                   : "=r"(r[0]) : "r"(address));
    else
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];"
                   : "=r"(r[0]) : "r"(address));
  } else if constexpr (N == 2) {
    if constexpr (Trans)
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                   : "=r"(r[0]), "=r"(r[1]) : "r"(address));
    else
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                   : "=r"(r[0]), "=r"(r[1]) : "r"(address));
  } else {
    if constexpr (Trans)
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
    else
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
  }
}

template <typename T>
FASTDW_DEVICE void cp_async16(T* dst, const void* src, bool valid) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(address), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}

FASTDW_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
FASTDW_DEVICE void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

#else  // the emulator

template <typename T>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                  const float (&c)[4], std::source_location at = std::source_location::current()) {
  ::fastdw_emu::mma_m16n8k16(d, a, b, c, kIsBf16<T>, at.file_name(), static_cast<int>(at.line()));
}

template <int N, bool Trans = false, typename T>
void ldmatrix(uint32_t (&r)[N], const SharedPtr<T>& row,
              std::source_location at = std::source_location::current()) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  ::fastdw_emu::ldmatrix(r, N, Trans, row, at.file_name(), static_cast<int>(at.line()));
}

template <typename T>
void cp_async16(const SharedPtr<T>& dst, const void* src, bool valid) {
  ::fastdw_emu::issue_cp_async16(dst, src, valid);
}

inline void cp_async_commit() { ::fastdw_emu::cp_async_commit(); }

template <int N>
void cp_async_wait() { ::fastdw_emu::cp_async_wait(N); }

#endif

}  // namespace fastdw_cuda
