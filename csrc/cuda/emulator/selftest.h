// The emulator's own test kernels: correct ones, which must pass under every seed, and planted
// bugs, each of which must be reported (tests/cuda/test_cuda_emulator.py runs them through the
// test op fastdw_cuda_emu::emulator_selftest, tests/cuda/test_cuda_sanitizer.py under ASan and
// UBSan).
// A case returns normally when the kernel ran and computed the right result, and throws
// fastdw_emu::Error otherwise: the emulator's report, or "wrong result" from the check here.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "../portable.h"
#include "../ptx.h"

namespace fastdw_emu_selftest {

using fastdw_emu::Error;

constexpr unsigned kThreads = 64;  // two warps

// out[t] = in[n-1-t] through shared memory; without the barrier a thread may read a slot its
// owner has not written yet (0xFF poison, or a race under racecheck).
template <bool kBarrier>
__global__ void reverse(const float* in, float* out) {
  FASTDW_SHARED(float, tile, kThreads);
  const unsigned t = threadIdx.x;
  tile[t] = in[t];
  if (kBarrier) __syncthreads();
  out[t] = tile[kThreads - 1 - t];
}

// Sums of the 32 lanes of each warp by shuffles; kDivergent: only half the lanes shuffle.
template <bool kDivergent>
__global__ void warp_sum(const float* in, float* out) {
  const unsigned t = threadIdx.x, lane = t % warpSize;
  float v = in[t];
  if (!kDivergent || lane < 16)
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (lane == 0) out[t / warpSize] = v;
}

// out[t] = sum over tiles i of in[i][(t+1) % n], staging each tile in one shared buffer; without
// the second barrier a fast thread overwrites a slot a slow one has yet to read.
template <bool kSecondBarrier>
__global__ void tiles(const float* in, float* out, int count) {
  FASTDW_SHARED(float, tile, kThreads);
  const unsigned t = threadIdx.x;
  float acc = 0.f;
  for (int i = 0; i < count; ++i) {
    tile[t] = in[i * kThreads + t];
    __syncthreads();
    acc += tile[(t + 1) % kThreads];
    if (kSecondBarrier) __syncthreads();
  }
  out[t] = acc;
}

// Dynamic shared memory of blockDim.x floats; kOffset 1 writes one past its end.
template <int kOffset>
__global__ void dynamic_reverse(const float* in, float* out) {
  FASTDW_DYNAMIC_SHARED(float, tile);
  const unsigned t = threadIdx.x, n = blockDim.x;
  tile[t + kOffset] = in[blockIdx.x * n + t];
  __syncthreads();
  out[blockIdx.x * n + t] = tile[n - 1 - t];
}

// Lanes exchange through shared memory ordered by __syncwarp (no block barrier): the race
// detector must accept it. out[t] = in[t ^ 1].
__global__ void warp_exchange(const float* in, float* out) {
  FASTDW_SHARED(float, slot, kThreads);
  const unsigned t = threadIdx.x;
  slot[t] = in[t];
  __syncwarp();
  out[t] = slot[t ^ 1];
}

// out[w] = ballot of (in[t] > 0) over warp w.
__global__ void ballot(const float* in, unsigned* out) {
  const unsigned t = threadIdx.x;
  const unsigned bits = __ballot_sync(0xffffffffu, in[t] > 0.f);
  if (t % warpSize == 0) out[t / warpSize] = bits;
}

// float4 copies through shared memory; kAligned false declares the array without __align__.
template <bool kAligned>
__global__ void shared_vector(const float* in, float* out) {
  const unsigned t = threadIdx.x;
  if constexpr (kAligned) {
    FASTDW_SHARED_ALIGNED(float, tile, kThreads * 4, 16);
    fastdw_cuda::shared_as<float4>(tile + 4 * t)[0] = fastdw_cuda::load_vec<float4>(in + 4 * t);
    __syncthreads();
    fastdw_cuda::store_vec(out + 4 * t, static_cast<float4>(fastdw_cuda::shared_as<float4>(
                                            tile + 4 * ((t + 1) % kThreads))[0]));
  } else {
    FASTDW_SHARED(float, tile, kThreads * 4);
    fastdw_cuda::shared_as<float4>(tile + 4 * t)[0] = fastdw_cuda::load_vec<float4>(in + 4 * t);
  }
}

// This lane's part of a 16x8 fp32 m16n8 accumulator into d (row-major), by the PTX ISA's layout.
FASTDW_DEVICE void store_accumulator(float* d, const float (&df)[4]) {
  const unsigned g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  for (int i = 0; i < 4; ++i) d[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = df[i];
}

// d = a b + c on one m16n8k16 tile, one warp: each lane gathers its fragments straight from
// global memory by the PTX ISA's layout (a: 16x16 row-major, b: 16x8 as [k][n], c and d: 16x8),
// so a wrong layout in the emulator's mma gives a wrong d.
template <typename T>
__global__ void mma_fragments(const T* a, const T* b, const float* c, float* d) {
  const unsigned lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto pack = [](T lo, T hi) {
    uint16_t l, h;
    memcpy(&l, &lo, 2);
    memcpy(&h, &hi, 2);
    return uint32_t(l) | uint32_t(h) << 16;
  };
  const uint32_t af[4] = {pack(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]),
                          pack(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]),
                          pack(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]),
                          pack(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9])};
  const uint32_t bf[2] = {pack(b[2 * t * 8 + g], b[(2 * t + 1) * 8 + g]),
                          pack(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g])};
  const float cf[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                       c[(g + 8) * 8 + 2 * t + 1]};
  float df[4];
  fastdw_cuda::mma_m16n8k16<T>(df, af, bf, cf);
  store_accumulator(d, df);
}

// d = a w^T, a 16x16 and w 8x16 row-major (w as a pointwise conv's (Cout, Cin) weight), staged
// in shared memory by cp.async and loaded into fragments by ldmatrix: a with one .x4, w with
// one .x2 from its rows, or (kTrans) from w^T staged as [k][n] with .x2.trans. The whole warp
// stores d (16x8) by the accumulator layout.
template <bool kTrans>
__global__ void ldmatrix_mma(const __half* a, const __half* w, float* d) {
  FASTDW_SHARED_ALIGNED(__half, as, 16 * 16, 16);
  FASTDW_SHARED_ALIGNED(__half, ws, 16 * 8, 16);
  const unsigned lane = threadIdx.x;
  // 32 16-byte copies of a (lane l: row l / 2, half l % 2), 16 of w (or of w^T).
  fastdw_cuda::cp_async16(as + lane * 8, a + lane * 8, true);
  if (lane < 16) fastdw_cuda::cp_async16(ws + lane * 8, w + lane * 8, true);
  fastdw_cuda::cp_async_commit();
  fastdw_cuda::cp_async_wait<0>();
  __syncwarp();
  uint32_t af[4], bf[2];
  fastdw_cuda::ldmatrix<4>(af, as + (lane % 16) * 16 + (lane / 16) * 8);
  if constexpr (kTrans)  // ws is w^T: row k holds w[0..8)[k]
    fastdw_cuda::ldmatrix<2, true>(bf, ws + (lane % 16) * 8);
  else  // ws is w: lanes 0-7 give rows n at k 0..8, lanes 8-15 the same rows at k 8..16
    fastdw_cuda::ldmatrix<2>(bf, ws + (lane % 8) * 16 + (lane / 8 % 2) * 8);
  const float zero[4] = {0.f, 0.f, 0.f, 0.f};
  float df[4];
  fastdw_cuda::mma_m16n8k16<__half>(df, af, bf, zero);
  store_accumulator(d, df);
}

// out[t] = in[n-1-t] for 4 floats per thread, staged by cp.async in two groups (two halves of
// the block's data): the first half is waited for (wait_group 1) and read while the second may
// still be in flight. kWait false reads the first half before any wait.
template <bool kWait>
__global__ void cp_async_stages(const float* in, float* out) {
  FASTDW_SHARED_ALIGNED(float, tile, 2 * kThreads * 4, 16);
  const unsigned t = threadIdx.x;
  for (int half = 0; half < 2; ++half) {
    fastdw_cuda::cp_async16(tile + (half * kThreads + t) * 4, in + (half * kThreads + t) * 4,
                            true);
    fastdw_cuda::cp_async_commit();
  }
  if (kWait) fastdw_cuda::cp_async_wait<1>();
  __syncthreads();
  for (int e = 0; e < 4; ++e) out[t * 4 + e] = tile[(kThreads - 1 - t) * 4 + e];
  fastdw_cuda::cp_async_wait<0>();
  __syncthreads();
  for (int e = 0; e < 4; ++e)
    out[(kThreads + t) * 4 + e] = tile[(2 * kThreads - 1 - t) * 4 + e];
}

// out[t] = sum over two rounds of the slot of thread t + 1, each round copied by cp.async into
// one staging buffer; without the barrier after the reads (kSecondBarrier false) the second
// round's copy may land on a slot a slower thread has yet to read.
template <bool kSecondBarrier>
__global__ void cp_async_rounds(const float* in, float* out) {
  FASTDW_SHARED_ALIGNED(float, tile, kThreads * 4, 16);
  const unsigned t = threadIdx.x;
  float acc = 0.f;
  for (int round = 0; round < 2; ++round) {
    fastdw_cuda::cp_async16(tile + t * 4, in + (round * kThreads + t) * 4, true);
    fastdw_cuda::cp_async_commit();
    fastdw_cuda::cp_async_wait<0>();
    __syncthreads();
    acc += tile[(t + 1) % kThreads * 4];
    if (kSecondBarrier) __syncthreads();
  }
  out[t] = acc;
}

// Planted mistakes with no result to check: each must be reported by the emulator itself.
__global__ void barrier_after_exit(float* out) {
  if (threadIdx.x >= kThreads / 2) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void barrier_call_sites(float* out) {
  if (threadIdx.x % 2)
    __syncthreads();
  else
    __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void shuffle_masks(float* out) {
  const unsigned lane = threadIdx.x % warpSize;
  out[threadIdx.x] = __shfl_sync(lane < 16 ? 0x0000ffffu : 0xffffffffu, 1.f, 0);
}

__global__ void shuffle_outside_mask(float* out) {
  const unsigned lane = threadIdx.x % warpSize;
  if (lane < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.f, 20);
}

__global__ void static_over_limit(float* out) {
  FASTDW_SHARED(float, big, 13 * 1024);  // 52 KB: over the 48 KB of static shared memory
  big[threadIdx.x] = 1.f;
  out[threadIdx.x] = big[threadIdx.x];
}

__global__ void misaligned_global(const float* in, float* out) {
  fastdw_cuda::store_vec(out + 4 * threadIdx.x, fastdw_cuda::load_vec<float4>(in + 1));
}

inline std::vector<float> iota(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(i % 7) - 2.5f + 0.125f * i;
  return v;
}

template <typename T>
void expect_equal(const std::vector<T>& got, const std::vector<T>& want) {
  for (size_t i = 0; i < want.size(); ++i)
    if (!(got[i] == want[i]))
      throw Error("wrong result at element " + std::to_string(i) + ": got " +
                  std::to_string(got[i]) + ", expected " + std::to_string(want[i]));
}

// Values exact in fp16 and bf16 (multiples of 1/8 up to 4 in magnitude), so products and their
// fp32 sums are exact and the check can be exact.
template <typename T>
std::vector<T> small_values(size_t n, int salt, std::vector<float>& as_float) {
  std::vector<T> v(n);
  as_float.resize(n);
  for (size_t i = 0; i < n; ++i) {
    as_float[i] = static_cast<float>(static_cast<int>((i * 7 + salt * 13) % 61) - 30) / 8.f;
    if constexpr (std::is_same_v<T, __half>)
      v[i] = __float2half_rn(as_float[i]);
    else
      v[i] = __float2bfloat16_rn(as_float[i]);
  }
  return v;
}

// d[m][n] = c[m][n] + sum_k a[m][k] b[k][n] (exact here: see small_values).
inline std::vector<float> gemm(const std::vector<float>& a, const std::vector<float>& b,
                               const std::vector<float>& c, int m, int n, int k) {
  std::vector<float> d(c);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      for (int q = 0; q < k; ++q) d[i * n + j] += a[i * k + q] * b[q * n + j];
  return d;
}

template <typename T>
void run_mma_fragments(const fastdw_emu::Options& o) {
  std::vector<float> af, bf, c;
  const auto a = small_values<T>(16 * 16, 1, af), b = small_values<T>(16 * 8, 2, bf);
  small_values<T>(16 * 8, 3, c);
  std::vector<float> d(16 * 8);
  fastdw_emu::launch(mma_fragments<T>, dim3(1), dim3(32), 0, o, a.data(), b.data(), c.data(),
                     d.data());
  expect_equal(d, gemm(af, bf, c, 16, 8, 16));
}

template <bool kTrans>
void run_ldmatrix_mma(const fastdw_emu::Options& o) {
  std::vector<float> af, wf;
  const auto a = small_values<__half>(16 * 16, 4, af);
  const auto w = small_values<__half>(8 * 16, 5, wf);  // (n, k)
  std::vector<float> wt(16 * 8);                        // (k, n)
  std::vector<__half> staged(w);
  for (int n = 0; n < 8; ++n)
    for (int k = 0; k < 16; ++k) {
      wt[k * 8 + n] = wf[n * 16 + k];
      if (kTrans) staged[k * 8 + n] = w[n * 16 + k];
    }
  alignas(16) __half a16[16 * 16], w16[16 * 8];
  std::copy(a.begin(), a.end(), a16);
  std::copy(staged.begin(), staged.end(), w16);
  std::vector<float> d(16 * 8);
  fastdw_emu::launch(ldmatrix_mma<kTrans>, dim3(1), dim3(32), 0, o, a16, w16, d.data());
  expect_equal(d, gemm(af, wt, std::vector<float>(16 * 8, 0.f), 16, 8, 16));
}

template <bool kSecondBarrier>
void run_cp_async_rounds(const fastdw_emu::Options& o) {
  alignas(16) float in[2 * kThreads * 4];
  const auto values = iota(2 * kThreads * 4);
  std::copy(values.begin(), values.end(), in);
  std::vector<float> out(kThreads), want(kThreads, 0.f);
  for (unsigned round = 0; round < 2; ++round)
    for (unsigned t = 0; t < kThreads; ++t)
      want[t] += in[(round * kThreads + (t + 1) % kThreads) * 4];
  fastdw_emu::launch(cp_async_rounds<kSecondBarrier>, dim3(1), dim3(kThreads), 0, o, in,
                     out.data());
  expect_equal(out, want);
}

template <bool kWait>
void run_cp_async_stages(const fastdw_emu::Options& o) {
  alignas(16) float in[2 * kThreads * 4];
  const auto values = iota(2 * kThreads * 4);
  std::copy(values.begin(), values.end(), in);
  std::vector<float> out(2 * kThreads * 4), want(out.size());
  for (unsigned half = 0; half < 2; ++half)
    for (unsigned t = 0; t < kThreads; ++t)
      for (int e = 0; e < 4; ++e)
        want[(half * kThreads + t) * 4 + e] = in[(half * kThreads + kThreads - 1 - t) * 4 + e];
  fastdw_emu::launch(cp_async_stages<kWait>, dim3(1), dim3(kThreads), 0, o, in, out.data());
  expect_equal(out, want);
}

// name -> case. `opt` carries the seed and racecheck; planted cases say what they plant.
inline const std::map<std::string, std::function<void(const fastdw_emu::Options&)>>& cases() {
  using fastdw_emu::launch;
  static const std::map<std::string, std::function<void(const fastdw_emu::Options&)>> all = {
      {"reverse", [](const auto& o) {
         auto in = iota(kThreads), out = std::vector<float>(kThreads), want = in;
         std::reverse(want.begin(), want.end());
         launch(reverse<true>, dim3(1), dim3(kThreads), 0, o, in.data(), out.data());
         expect_equal(out, want);
       }},
      {"missing_barrier", [](const auto& o) {
         auto in = iota(kThreads), out = std::vector<float>(kThreads), want = in;
         std::reverse(want.begin(), want.end());
         launch(reverse<false>, dim3(1), dim3(kThreads), 0, o, in.data(), out.data());
         expect_equal(out, want);
       }},
      {"warp_sum", [](const auto& o) {
         auto in = iota(kThreads);
         std::vector<float> out(2), want(2, 0.f);
         for (unsigned t = 0; t < kThreads; ++t) want[t / 32] += in[t];
         launch(warp_sum<false>, dim3(1), dim3(kThreads), 0, o, in.data(), out.data());
         for (int w = 0; w < 2; ++w)
           if (std::abs(out[w] - want[w]) > 1e-4f) expect_equal(out, want);
       }},
      {"divergent_shuffle", [](const auto& o) {
         auto in = iota(kThreads);
         std::vector<float> out(2);
         launch(warp_sum<true>, dim3(1), dim3(kThreads), 0, o, in.data(), out.data());
       }},
      {"tiles", [](const auto& o) {
         const int count = 3;
         auto in = iota(count * kThreads);
         std::vector<float> out(kThreads), want(kThreads, 0.f);
         for (int i = 0; i < count; ++i)
           for (unsigned t = 0; t < kThreads; ++t) want[t] += in[i * kThreads + (t + 1) % kThreads];
         launch(tiles<true>, dim3(1), dim3(kThreads), 0, o, in.data(), out.data(), count);
         expect_equal(out, want);
       }},
      {"shared_race", [](const auto& o) {
         const int count = 3;
         auto in = iota(count * kThreads);
         std::vector<float> out(kThreads);
         launch(tiles<false>, dim3(1), dim3(kThreads), 0, o, in.data(), out.data(), count);
       }},
      {"dynamic_reverse", [](const auto& o) {
         const unsigned blocks = 3;
         auto in = iota(blocks * kThreads), out = std::vector<float>(blocks * kThreads), want = in;
         for (unsigned b = 0; b < blocks; ++b)
           std::reverse(want.begin() + b * kThreads, want.begin() + (b + 1) * kThreads);
         launch(dynamic_reverse<0>, dim3(blocks), dim3(kThreads), kThreads * sizeof(float), o,
                in.data(), out.data());
         expect_equal(out, want);
       }},
      {"shared_out_of_bounds", [](const auto& o) {
         auto in = iota(kThreads), out = std::vector<float>(kThreads);
         launch(dynamic_reverse<1>, dim3(1), dim3(kThreads), kThreads * sizeof(float), o,
                in.data(), out.data());
       }},
      {"warp_exchange", [](const auto& o) {
         auto in = iota(kThreads), out = std::vector<float>(kThreads), want = in;
         for (unsigned t = 0; t < kThreads; ++t) want[t] = in[t ^ 1];
         launch(warp_exchange, dim3(1), dim3(kThreads), 0, o, in.data(), out.data());
         expect_equal(out, want);
       }},
      {"ballot", [](const auto& o) {
         auto in = iota(kThreads);
         std::vector<unsigned> out(2), want(2, 0u);
         for (unsigned t = 0; t < kThreads; ++t) want[t / 32] |= unsigned(in[t] > 0.f) << t % 32;
         launch(ballot, dim3(1), dim3(kThreads), 0, o, in.data(), out.data());
         expect_equal(out, want);
       }},
      {"shared_vector", [](const auto& o) {
         alignas(16) float in[kThreads * 4], out[kThreads * 4];
         const auto values = iota(kThreads * 4);
         std::copy(values.begin(), values.end(), in);
         launch(shared_vector<true>, dim3(1), dim3(kThreads), 0, o, in, out);
         for (unsigned t = 0; t < kThreads * 4; ++t)
           if (out[t] != in[(t + 4) % (kThreads * 4)])
             throw Error("wrong result at element " + std::to_string(t));
       }},
      {"misaligned_shared_vector", [](const auto& o) {
         alignas(16) float in[kThreads * 4] = {};
         launch(shared_vector<false>, dim3(1), dim3(kThreads), 0, o, in, in);
       }},
      {"misaligned_global_vector", [](const auto& o) {
         alignas(16) float in[8] = {}, out[kThreads * 4];
         launch(misaligned_global, dim3(1), dim3(kThreads), 0, o, in, out);
       }},
      {"barrier_after_exit", [](const auto& o) {
         std::vector<float> out(kThreads);
         launch(barrier_after_exit, dim3(1), dim3(kThreads), 0, o, out.data());
       }},
      {"barrier_call_sites", [](const auto& o) {
         std::vector<float> out(kThreads);
         launch(barrier_call_sites, dim3(1), dim3(kThreads), 0, o, out.data());
       }},
      {"shuffle_mask_mismatch", [](const auto& o) {
         std::vector<float> out(kThreads);
         launch(shuffle_masks, dim3(1), dim3(kThreads), 0, o, out.data());
       }},
      {"shuffle_outside_mask", [](const auto& o) {
         std::vector<float> out(kThreads);
         launch(shuffle_outside_mask, dim3(1), dim3(kThreads), 0, o, out.data());
       }},
      {"static_shared_over_limit", [](const auto& o) {
         std::vector<float> out(kThreads);
         launch(static_over_limit, dim3(1), dim3(kThreads), 0, o, out.data());
       }},
      {"block_too_large", [](const auto& o) {
         std::vector<float> out(2048);
         launch(barrier_after_exit, dim3(1), dim3(2048), 0, o, out.data());
       }},
      {"mma_fragments_fp16", run_mma_fragments<__half>},
      {"mma_fragments_bf16", run_mma_fragments<__nv_bfloat16>},
      {"ldmatrix_mma", run_ldmatrix_mma<false>},
      {"ldmatrix_trans_mma", run_ldmatrix_mma<true>},
      {"cp_async", run_cp_async_stages<true>},
      {"cp_async_before_wait", run_cp_async_stages<false>},
      {"cp_async_rounds", run_cp_async_rounds<true>},
      {"cp_async_overwrite", run_cp_async_rounds<false>},
      {"dynamic_shared_over_arch", [](const auto& o) {
         auto in = iota(kThreads), out = std::vector<float>(kThreads);
         fastdw_emu::Options opted = o;  // opted in (cudaFuncSetAttribute) past the arch limit
         opted.max_dynamic_shared = 300 * 1024;
         launch(dynamic_reverse<0>, dim3(1), dim3(kThreads), opted.max_dynamic_shared, opted,
                in.data(), out.data());
       }},
  };
  return all;
}

// Runs case `name`; throws fastdw_emu::Error with the emulator's report or a wrong result.
inline void run(const std::string& name, uint64_t seed, bool racecheck, int arch) {
  const auto it = cases().find(name);
  if (it == cases().end()) throw std::invalid_argument("no emulator self-test named " + name);
  if (arch != 80 && arch != 90)
    throw std::invalid_argument("arch must be 80 or 90, got " + std::to_string(arch));
  fastdw_emu::Options o;
  o.seed = seed;
  o.racecheck = racecheck;
  o.arch = arch == 90 ? &fastdw_emu::kSm90 : &fastdw_emu::kSm80;
  try {
    it->second(o);
  } catch (const Error& e) {  // a wrong result found by the check here: which run it was
    const std::string what = e.what();
    if (what.find("replays it") != std::string::npos) throw;
    throw Error(what + " (seed " + std::to_string(seed) + ")");
  }
}

}  // namespace fastdw_emu_selftest
