// fastdw's CUDA emulator: runs the device code of csrc/cuda, compiled by g++ for the host, so
// that it can be executed and checked on a machine without a GPU. Kernels include
// csrc/cuda/portable.h, never this file: it is the host half of that header.
//
// Each CUDA thread is a ucontext fiber; one OS thread runs a block's fibers one at a time,
// switching only at __syncthreads and warp collectives. It checks what a GPU would leave
// undefined or hang on, and throws fastdw_emu::Error (with the seed to replay the run) for:
//  * a __syncthreads that not every thread of the block reaches, or that threads reach at
//    different call sites (the programming guide requires the whole block, in uniform code);
//  * a warp collective (shuffle, ballot, __syncwarp) that a lane of its mask never reaches, or
//    reaches with another mask or at another call site, or a shuffle reading a lane outside it;
//  * a shared-memory access outside the array it goes through, or misaligned for its type;
//  * with Options::racecheck, two threads touching one shared byte between the same two
//    barriers where at least one writes (a missing __syncthreads);
//  * launch shapes and shared memory over the limits of the chosen architecture;
//  * a 16-byte vector access (load_vec / store_vec) to an address not 16-byte aligned;
//  * a shared-memory access to bytes a cp.async is still copying into: before the issuing
//    thread's cp.async.wait_group covers its group (until then the bytes are not there); with
//    Options::racecheck, a cp.async into bytes another thread touched since the last barrier.
// The warp-wide matrix instructions (mma.sync m16n8k16, ldmatrix) are collectives of the whole
// warp computed with the operand fragments laid out across lanes as the PTX ISA defines them
// ("Matrix Fragments for mma.m16n8k16", "ldmatrix"), so a kernel that builds its fragments
// wrongly gets wrong results here as on a GPU. A cp.async copy reads global memory when issued
// and lands in shared memory when its group is waited for.
// What it randomises, from Options::seed, so that a missing barrier changes the result: the
// order of blocks, and which thread runs next at every switch point (so threads interleave
// differently between barriers and lanes of a warp are never in lockstep). Shared memory
// starts every block filled with 0xFF bytes (NaN as float): a read before any write shows.
// It cannot show timing, the memory model between blocks, or occupancy.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cxxabi.h>
#include <errno.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <vector_types.h>

#include <algorithm>
#include <deque>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FASTDW_EMU_ASAN 1
#endif

namespace fastdw_emu {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The per-block limits of a target GPU (CUDA programming guide, compute capabilities table).
struct Arch {
  const char* name;
  size_t max_static_shared;  // __shared__ arrays: 48 KB, also on sm_90 (a ptxas error beyond)
  size_t max_shared;         // static + dynamic with the cudaFuncSetAttribute opt-in
};
inline constexpr Arch kSm80{"sm_80", 48 * 1024, 163 * 1024};
inline constexpr Arch kSm90{"sm_90", 48 * 1024, 227 * 1024};
inline constexpr unsigned kMaxThreadsPerBlock = 1024;
inline constexpr unsigned kWarpSize = 32;

struct Options {
  uint64_t seed = 0;
  bool racecheck = false;
  const Arch* arch = &kSm80;  // the smaller of the two targets, so both are respected
  // cudaFuncAttributeMaxDynamicSharedMemorySize as the launcher set it: 48 KB by default.
  size_t max_dynamic_shared = 48 * 1024;
};

// Options from the environment: FASTDW_CUDA_EMULATE_SEED (else a fresh random seed per launch),
// FASTDW_CUDA_EMULATE_RACECHECK=1, FASTDW_CUDA_EMULATE_ARCH=80|90 (default 80).
// Unset or empty means the default; any other value the emulator cannot honour is an Error
// naming the variable, not silently the default.
inline Options options_from_env() {
  Options o;
  auto setting = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v ? v : "");
  };
  const std::string seed = setting("FASTDW_CUDA_EMULATE_SEED");
  if (seed.empty()) {
    o.seed = std::random_device{}();
  } else {
    char* end = nullptr;
    errno = 0;
    o.seed = std::strtoull(seed.c_str(), &end, 10);
    if (seed.find_first_not_of("0123456789") != std::string::npos || *end || errno == ERANGE)
      throw Error("FASTDW_CUDA_EMULATE_SEED must be an integer in [0, 2^64), got '" + seed + "'");
  }
  const std::string race = setting("FASTDW_CUDA_EMULATE_RACECHECK");
  if (!race.empty() && race != "0" && race != "1")
    throw Error("FASTDW_CUDA_EMULATE_RACECHECK must be 0 or 1, got '" + race + "'");
  o.racecheck = race == "1";
  const std::string arch = setting("FASTDW_CUDA_EMULATE_ARCH");
  if (!arch.empty() && arch != "80" && arch != "90")
    throw Error("FASTDW_CUDA_EMULATE_ARCH must be 80 or 90, got '" + arch + "'");
  o.arch = arch == "90" ? &kSm90 : &kSm80;
  return o;
}

namespace detail {

inline std::string str_of(const uint3& v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

enum class State { kRunnable, kBarrier, kWarp, kDone };
enum class Collective {
  kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kSyncwarp, kMma, kLdmatrix
};
inline const char* collective_name(Collective c) {
  static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                "__shfl_xor_sync", "__ballot_sync", "__syncwarp",
                                "mma.sync.m16n8k16", "ldmatrix.m8n8"};
  return names[static_cast<int>(c)];
}

struct Site {
  const char* file = "";
  int line = 0;
  bool operator==(const Site& o) const { return line == o.line && std::strcmp(file, o.file) == 0; }
  std::string str() const { return std::string(file) + ":" + std::to_string(line); }
};

// A cp.async copy issued by a thread, not yet landed: `bytes` bytes of `data` (read from global
// memory at issue) for shared memory at `offset` of the static or dynamic array space.
struct PendingCopy {
  bool dynamic;
  size_t offset, bytes;
  unsigned char data[16];
};

// The largest operand a lane brings to a collective: mma's A, B and C fragments (40 bytes).
inline constexpr size_t kLaneBytes = 64;

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  uint3 thread_idx;
  unsigned linear = 0;
  State state = State::kRunnable;
  Site site;  // where it waits
  // The collective it waits in: kind, mask, its operand (raw bytes) and argument, and result.
  Collective kind = Collective::kSyncwarp;
  unsigned mask = 0;
  int arg = 0, width = 32;
  unsigned char value[kLaneBytes] = {};
  unsigned char result[kLaneBytes] = {};
  // cp.async copies not yet committed, and committed groups oldest first.
  std::vector<PendingCopy> uncommitted;
  std::deque<std::vector<PendingCopy>> groups;
  unsigned warp_syncs = 0;  // __syncwarp(full mask) passed, for the race detector
#ifdef FASTDW_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

// Who last wrote and read a shared byte, and in which barrier interval.
struct Shadow {
  int32_t writer = -1, reader = -1;  // thread (linear id); reader -2: several threads
  uint32_t write_epoch = 0, read_epoch = 0;
  uint32_t write_warp_syncs = 0, read_warp_syncs = 0;
};

struct Region {
  const void* tag;
  size_t offset, bytes;
};

// The stacks of a block's fibers, each above a guard page so an overflow faults at once;
// kept per OS thread and reused by every block and launch.
class StackPool {
 public:
#ifdef FASTDW_EMU_ASAN
  static constexpr size_t kStackBytes = 512 * 1024;  // ASan's redzones make frames larger
#else
  static constexpr size_t kStackBytes = 128 * 1024;
#endif
  char* get(size_t i) {
    while (stacks_.size() <= i) {
      const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw Error("CUDA emulator: cannot map a fiber stack");
      mprotect(p, page, PROT_NONE);
      stacks_.push_back(static_cast<char*>(p) + page);
    }
#ifdef FASTDW_EMU_ASAN
    // A fiber abandoned after an error leaves its frames' redzones poisoned.
    ASAN_UNPOISON_MEMORY_REGION(stacks_[i], kStackBytes);
#endif
    return stacks_[i];
  }

 private:
  std::vector<char*> stacks_;
};

struct Block;
inline thread_local Block* tl_block = nullptr;

// One block's execution: its fibers, shared memory and scheduler.
struct Block {
  const Options& opt;
  dim3 grid_dim, block_dim;
  uint3 block_idx;
  std::function<void()> body;
  std::vector<Fiber> threads;
  std::vector<unsigned> runnable;
  std::mt19937_64& rng;
  Fiber* current = nullptr;
  ucontext_t scheduler;
  std::string error;  // set by a fiber that failed
  // Shared memory: static arrays at offsets below static_used, the dynamic array apart.
  std::vector<unsigned char> static_mem, dynamic_mem;
  size_t static_used = 0;
  std::vector<Region> regions;
  std::vector<Shadow> static_shadow, dynamic_shadow;
  // Per shared byte: how many cp.async copies into it are in flight (sized on the first copy).
  std::vector<uint16_t> static_inflight, dynamic_inflight;
  uint32_t epoch = 1;                  // barriers passed + 1
  std::vector<unsigned> warp_syncs;    // per warp: full-mask __syncwarp passed
#ifdef FASTDW_EMU_ASAN
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_bytes = 0;
#endif

  Block(const Options& o, std::mt19937_64& r) : opt(o), rng(r) {}

  unsigned size() const { return block_dim.x * block_dim.y * block_dim.z; }

  [[noreturn]] void fail(const std::string& what) const { fail_at(*current, what); }
  [[noreturn]] void fail_at(const Fiber& f, const std::string& what) const {
    throw Error(what + " (thread " + str_of(f.thread_idx) + " of block " + str_of(block_idx) +
                ")");
  }

  // Fiber -> scheduler; returns when the scheduler resumes this fiber.
  void yield_to_scheduler() {
    Fiber* self = current;
#ifdef FASTDW_EMU_ASAN
    __sanitizer_start_switch_fiber(self->state == State::kDone ? nullptr : &self->fake_stack,
                                   scheduler_stack, scheduler_stack_bytes);
#endif
    swapcontext(&self->context, &scheduler);
#ifdef FASTDW_EMU_ASAN
    __sanitizer_finish_switch_fiber(self->fake_stack, &scheduler_stack, &scheduler_stack_bytes);
#endif
  }

  static void entry() {
    Block* b = tl_block;
#ifdef FASTDW_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &b->scheduler_stack, &b->scheduler_stack_bytes);
#endif
    try {
      b->body();
    } catch (const std::exception& e) {  // unwound on this fiber's own stack
      b->error = e.what();
    }
    b->current->state = State::kDone;
    b->yield_to_scheduler();  // never resumed
  }

  void run(StackPool& stacks) {
    const unsigned n = size();
    threads.assign(n, Fiber{});
    runnable.clear();
    warp_syncs.assign((n + kWarpSize - 1) / kWarpSize, 0);
    for (unsigned i = 0; i < n; ++i) {
      Fiber& f = threads[i];
      f.linear = i;
      f.thread_idx = make_uint3(i % block_dim.x, (i / block_dim.x) % block_dim.y,
                                i / (block_dim.x * block_dim.y));
      f.stack = stacks.get(i);
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack;
      f.context.uc_stack.ss_size = StackPool::kStackBytes;
      f.context.uc_link = nullptr;
      makecontext(&f.context, &Block::entry, 0);
      runnable.push_back(i);
    }
    tl_block = this;
    for (;;) {
      if (runnable.empty() && !release_barrier()) return;
      // A random runnable thread runs until its next switch point.
      const size_t pick = std::uniform_int_distribution<size_t>(0, runnable.size() - 1)(rng);
      current = &threads[runnable[pick]];
      runnable[pick] = runnable.back();
      runnable.pop_back();
#ifdef FASTDW_EMU_ASAN
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, current->stack, StackPool::kStackBytes);
#endif
      swapcontext(&scheduler, &current->context);
#ifdef FASTDW_EMU_ASAN
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
      if (!error.empty())
        throw Error(error);
    }
  }

  std::string thread_list(const std::vector<unsigned>& ids) const {
    std::string s;
    for (size_t i = 0; i < ids.size() && i < 8; ++i)
      s += (i ? " " : "") + str_of(threads[ids[i]].thread_idx);
    if (ids.size() > 8) s += " and " + std::to_string(ids.size() - 8) + " more";
    return s;
  }

  // No thread can run: every thread finished (false), or all wait at one barrier, which opens
  // (true); anything else is a hang on a GPU, reported as an error.
  bool release_barrier() {
    std::vector<unsigned> done, at_barrier, in_warp;
    for (const Fiber& f : threads)
      (f.state == State::kDone ? done : f.state == State::kBarrier ? at_barrier : in_warp)
          .push_back(f.linear);
    const std::string where = " in block " + str_of(block_idx);
    if (!in_warp.empty()) {
      const Fiber& f = threads[in_warp[0]];
      std::vector<unsigned> missing;
      for (unsigned lane = 0; lane < kWarpSize; ++lane) {
        const unsigned t = f.linear / kWarpSize * kWarpSize + lane;
        if (f.mask >> lane & 1 && threads[t].state != State::kWarp) missing.push_back(t);
      }
      throw Error(std::string(collective_name(f.kind)) + " at " + f.site.str() + " with mask 0x" +
                  hex(f.mask) + " never completes" + where + ": lanes of its mask " +
                  thread_list(missing) + " exited or wait at a __syncthreads instead (a " +
                  "collective in divergent code)");
    }
    if (at_barrier.empty()) return false;
    if (!done.empty())
      throw Error("__syncthreads at " + threads[at_barrier[0]].site.str() + where +
                  " is never reached by threads " + thread_list(done) +
                  ", which exited (a barrier in code not every thread runs)");
    for (unsigned t : at_barrier)
      if (!(threads[t].site == threads[at_barrier[0]].site))
        throw Error("__syncthreads reached at different call sites" + where + ": " +
                    threads[at_barrier[0]].site.str() + " by thread " +
                    str_of(threads[at_barrier[0]].thread_idx) + ", " + threads[t].site.str() +
                    " by thread " + str_of(threads[t].thread_idx));
    ++epoch;
    for (Fiber& f : threads) {
      f.state = State::kRunnable;
      runnable.push_back(f.linear);
    }
    return true;
  }

  static std::string hex(unsigned v) {
    std::ostringstream s;
    s << std::hex << v;
    return s.str();
  }

  // __syncthreads: wait until every thread of the block is here.
  void barrier(Site site) {
    current->state = State::kBarrier;
    current->site = site;
    yield_to_scheduler();
  }

  // A warp collective: this lane arrives with its operand; the last lane of the mask to arrive
  // computes every lane's result. Returns this lane's result bytes.
  const unsigned char* collective(Collective kind, Site site, unsigned mask, const void* value,
                                  size_t bytes, int arg, int width) {
    Fiber& self = *current;
    const unsigned lane = self.linear % kWarpSize, base = self.linear - lane;
    const unsigned lanes = std::min(kWarpSize, size() - base);
    const unsigned existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    const std::string call = std::string(collective_name(kind)) + " at " + site.str();
    if (!(mask >> lane & 1))
      fail(call + ": mask 0x" + hex(mask) + " does not include the calling lane " +
           std::to_string(lane));
    if (mask & ~existing)
      fail(call + ": mask 0x" + hex(mask) + " names lanes this warp does not have");
    if (width <= 0 || width > 32 || (width & (width - 1)))
      fail(call + ": width " + std::to_string(width) + " is not a power of 2 up to 32");
    self.state = State::kWarp;
    self.site = site;
    self.kind = kind;
    self.mask = mask;
    self.arg = arg;
    self.width = width;
    std::memcpy(self.value, value, bytes);
    bool complete = true;
    for (unsigned l = 0; l < kWarpSize; ++l) {
      if (!(mask >> l & 1) || l == lane) continue;
      const Fiber& other = threads[base + l];
      if (other.state == State::kDone)
        fail(call + ": lane " + std::to_string(l) + " of mask 0x" + hex(mask) + " has exited");
      if (other.state != State::kWarp) {
        complete = false;
        continue;
      }
      if (!(other.site == site) || other.kind != kind || other.mask != mask)
        fail(call + " with mask 0x" + hex(mask) + " meets lane " + std::to_string(l) + " in " +
             collective_name(other.kind) + " at " + other.site.str() + " with mask 0x" +
             hex(other.mask) + " (every lane of the mask must make the same call)");
    }
    if (complete) finish_collective(base, mask, bytes, existing);
    yield_to_scheduler();  // lanes continue in random order
    return self.result;
  }

  void finish_collective(unsigned base, unsigned mask, size_t bytes, unsigned existing) {
    const Collective kind = threads[base + first_lane(mask)].kind;
    if (kind == Collective::kMma || kind == Collective::kLdmatrix) {
      if (kind == Collective::kMma)
        finish_mma(base);
      else
        finish_ldmatrix(base);
      for (unsigned l = 0; l < kWarpSize; ++l) {
        threads[base + l].state = State::kRunnable;
        runnable.push_back(base + l);
      }
      return;
    }
    unsigned ballot = 0;
    for (unsigned l = 0; l < kWarpSize; ++l)
      if (mask >> l & 1) {
        uint32_t pred;
        std::memcpy(&pred, threads[base + l].value, sizeof pred);
        ballot |= (pred != 0) << l;
      }
    for (unsigned l = 0; l < kWarpSize; ++l) {
      if (!(mask >> l & 1)) continue;
      Fiber& f = threads[base + l];
      const unsigned w = static_cast<unsigned>(f.width), segment = l & ~(w - 1);
      unsigned src = l;
      switch (f.kind) {
        case Collective::kShflIdx: src = segment + (static_cast<unsigned>(f.arg) & (w - 1)); break;
        case Collective::kShflUp:
          src = l - segment >= static_cast<unsigned>(f.arg) ? l - f.arg : l;
          break;
        case Collective::kShflDown: src = l + f.arg < segment + w ? l + f.arg : l; break;
        case Collective::kShflXor: src = (l ^ f.arg) < segment + w ? l ^ f.arg : l; break;
        default: break;
      }
      if (f.kind == Collective::kBallot) {
        std::memcpy(f.result, &ballot, sizeof ballot);
      } else if (f.kind != Collective::kSyncwarp) {
        if (!(mask >> src & 1))
          fail_at(f, std::string(collective_name(f.kind)) + " at " + f.site.str() + ": lane " +
               std::to_string(l) + " reads lane " + std::to_string(src) +
               ", which is not in mask 0x" + hex(mask) + " (its value is undefined)");
        std::memcpy(f.result, threads[base + src].value, bytes);
      }
      f.state = State::kRunnable;
      runnable.push_back(f.linear);
    }
    if (threads[base].kind == Collective::kSyncwarp && mask == existing)
      ++warp_syncs[base / kWarpSize];
    for (unsigned l = 0; l < kWarpSize; ++l)
      if (mask >> l & 1) threads[base + l].warp_syncs = warp_syncs[base / kWarpSize];
  }

  static unsigned first_lane(unsigned mask) {
    unsigned l = 0;
    while (!(mask >> l & 1)) ++l;
    return l;
  }

  // mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32: D = A B + C for A 16x16
  // (row-major), B 16x8 (column-major), C and D 16x8 in fp32. Lane l (group g = l / 4, t = l % 4)
  // holds, as pairs of 16-bit values per 32-bit register:
  //   A: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..2t+1], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
  //   B: b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
  //   C, D: c0, c1 = C[g][2t], C[g][2t+1]; c2, c3 = C[g+8][2t], C[g+8][2t+1]
  // Each lane's operand: 4 registers of A, 2 of B, 4 floats of C; arg 1 for bf16, 0 for fp16.
  // The products are exact in fp32; the PTX ISA leaves the order of the additions open, and
  // here they are fused in k order, starting from C.
  void finish_mma(unsigned base) {
    const bool bf16 = threads[base].arg == 1;
    float A[16][16], B[16][8], C[16][8];
    auto half_at = [&](uint32_t reg, int which) {
      const uint16_t bits = static_cast<uint16_t>(reg >> (16 * which));
      if (bf16) {
        __nv_bfloat16 v;
        std::memcpy(&v, &bits, 2);
        return __bfloat162float(v);
      }
      __half v;
      std::memcpy(&v, &bits, 2);
      return __half2float(v);
    };
    for (unsigned l = 0; l < kWarpSize; ++l) {
      uint32_t a[4], b[2];
      float c[4];
      const unsigned char* v = threads[base + l].value;
      std::memcpy(a, v, 16);
      std::memcpy(b, v + 16, 8);
      std::memcpy(c, v + 24, 16);
      const unsigned g = l / 4, t = l % 4;
      for (int j = 0; j < 2; ++j) {
        A[g][2 * t + j] = half_at(a[0], j);
        A[g + 8][2 * t + j] = half_at(a[1], j);
        A[g][2 * t + 8 + j] = half_at(a[2], j);
        A[g + 8][2 * t + 8 + j] = half_at(a[3], j);
        B[2 * t + j][g] = half_at(b[0], j);
        B[2 * t + 8 + j][g] = half_at(b[1], j);
        C[g][2 * t + j] = c[j];
        C[g + 8][2 * t + j] = c[2 + j];
      }
    }
    for (unsigned l = 0; l < kWarpSize; ++l) {
      const unsigned g = l / 4, t = l % 4;
      float d[4];
      for (int i = 0; i < 4; ++i) {
        const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float acc = C[row][col];
        for (int k = 0; k < 16; ++k) acc = std::fmaf(A[row][k], B[k][col], acc);
        d[i] = acc;
      }
      std::memcpy(threads[base + l].result, d, sizeof d);
    }
  }

  // ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16: lanes 8i..8i+7 each bring one
  // 16-byte row (8 16-bit values) of matrix i, read from shared memory on arrival; register i
  // of lane l gets matrix i's row l / 4, values 2(l % 4) and 2(l % 4) + 1, or with .trans its
  // column l / 4, rows 2(l % 4) and 2(l % 4) + 1. arg = matrices + 256 * trans.
  void finish_ldmatrix(unsigned base) {
    const int matrices = threads[base].arg & 0xff;
    const bool trans = threads[base].arg >> 8;
    for (unsigned l = 0; l < kWarpSize; ++l) {
      uint32_t r[4] = {};
      const unsigned g = l / 4, t = l % 4;
      for (int i = 0; i < matrices; ++i) {
        uint16_t pair[2];
        for (int j = 0; j < 2; ++j) {
          const unsigned row = trans ? 2 * t + j : g, col = trans ? g : 2 * t + j;
          std::memcpy(&pair[j], threads[base + 8 * i + row].value + 2 * col, 2);
        }
        r[i] = pair[0] | static_cast<uint32_t>(pair[1]) << 16;
      }
      std::memcpy(threads[base + l].result, r, sizeof r);
    }
  }

  // cp.async ---------------------------------------------------------------------------------

  std::vector<uint16_t>& inflight(bool dynamic) {
    auto& v = dynamic ? dynamic_inflight : static_inflight;
    const size_t size = (dynamic ? dynamic_mem : static_mem).size();
    if (v.size() < size) v.resize(size, 0);
    return v;
  }

  template <typename What>
  static std::string name_of(const What& what) {
    if constexpr (std::is_invocable_v<What>) return what();
    else return std::string(what);
  }

  // An access to shared bytes a cp.async is still copying into is an error. `what` names the
  // access, as a string or a callable making one: the name is built only for a report.
  template <typename What>
  void check_not_inflight(bool dynamic, size_t offset, size_t bytes, const What& what) {
    const auto& v = dynamic ? dynamic_inflight : static_inflight;
    for (size_t i = offset; i < offset + bytes && i < v.size(); ++i)
      if (v[i])
        fail("shared-memory access " + name_of(what) + " while a cp.async into it is in flight: "
             "read or write it only after the issuing thread's cp.async.wait_group covers "
             "the copy (and a __syncthreads for other threads)");
  }

  void cp_async(bool dynamic, size_t offset, const void* src, size_t bytes, size_t src_bytes) {
    PendingCopy copy{dynamic, offset, bytes, {}};
    if (src_bytes) std::memcpy(copy.data, src, src_bytes);  // the rest stays zero (zero-fill)
    auto& v = inflight(dynamic);
    for (size_t i = offset; i < offset + bytes; ++i) ++v[i];
    current->uncommitted.push_back(copy);
  }

  void cp_async_commit() {
    current->groups.push_back(std::move(current->uncommitted));
    current->uncommitted.clear();
  }

  // cp.async.wait_group n: this thread's committed groups but the newest n land.
  void cp_async_wait(size_t pending) {
    Fiber& self = *current;
    while (self.groups.size() > pending) {
      for (const PendingCopy& c : self.groups.front()) {
        auto& v = inflight(c.dynamic);
        for (size_t i = c.offset; i < c.offset + c.bytes; ++i) --v[i];
        std::memcpy((c.dynamic ? dynamic_mem : static_mem).data() + c.offset, c.data, c.bytes);
        if (opt.racecheck)
          track(c.dynamic ? dynamic_shadow : static_shadow, c.offset, c.bytes, true,
                "the landing of a cp.async");
      }
      self.groups.pop_front();
    }
  }

  // Shared memory ------------------------------------------------------------------------

  // The offset of static array `tag` in this block (allocated when a thread first declares it).
  // Arrays whose type needs less than 16-byte alignment get an address that is deliberately not
  // 16-byte aligned, so a vector access through an array declared without FASTDW_SHARED_ALIGNED
  // fails here as it could on a GPU.
  size_t static_region(const void* tag, size_t bytes, size_t align, const char* name) {
    for (const Region& r : regions)
      if (r.tag == tag) return r.offset;
    size_t offset = (static_used + align - 1) / align * align;
    if (align < 16 && offset % 16 == 0) offset += align;
    if (offset + bytes > opt.arch->max_static_shared)
      fail(std::string("__shared__ ") + name + " takes static shared memory to " +
           std::to_string(offset + bytes) + " bytes, over the " +
           std::to_string(opt.arch->max_static_shared) + " allowed on " + opt.arch->name);
    if (offset + bytes + dynamic_mem.size() > opt.arch->max_shared)
      fail(std::string("__shared__ ") + name + " with " + std::to_string(dynamic_mem.size()) +
           " bytes of dynamic shared memory exceeds the " + std::to_string(opt.arch->max_shared) +
           " bytes per block of " + opt.arch->name);
    if (static_mem.size() < offset + bytes) {
      static_mem.resize(offset + bytes, 0xFF);
      if (opt.racecheck) static_shadow.resize(offset + bytes);
    }
    regions.push_back({tag, offset, bytes});
    static_used = offset + bytes;
    return offset;
  }

  // Fill shared memory with 0xFF and forget its history: the start of a block.
  void reset_shared() {
    std::fill(static_mem.begin(), static_mem.end(), 0xFF);  // memset of an empty vector's
    std::fill(dynamic_mem.begin(), dynamic_mem.end(), 0xFF);  // null data is undefined
    std::fill(static_shadow.begin(), static_shadow.end(), Shadow{});
    std::fill(dynamic_shadow.begin(), dynamic_shadow.end(), Shadow{});
    static_inflight.clear();
    dynamic_inflight.clear();
    regions.clear();
    static_used = 0;
    epoch = 1;
  }

  // Two accesses conflict when another thread touched the byte after the last barrier (and,
  // within one warp, after the last full-mask __syncwarp) and one of them is a write.
  bool unordered(int32_t other, uint32_t other_epoch, uint32_t other_syncs) const {
    if (other == -1 || other == static_cast<int32_t>(current->linear) || other_epoch != epoch)
      return false;
    if (other >= 0 && static_cast<unsigned>(other) / kWarpSize == current->linear / kWarpSize)
      return other_syncs == current->warp_syncs;
    return true;
  }

  template <typename What>
  void track(std::vector<Shadow>& shadow, size_t offset, size_t bytes, bool write,
             const What& what) {
    const int32_t me = static_cast<int32_t>(current->linear);
    for (size_t i = offset; i < offset + bytes; ++i) {
      Shadow& s = shadow[i];
      const char* kind = nullptr;
      int32_t other = -1;
      if (unordered(s.writer, s.write_epoch, s.write_warp_syncs)) {
        kind = write ? "write after another thread's write" : "read of another thread's write";
        other = s.writer;
      } else if (write && unordered(s.reader, s.read_epoch, s.read_warp_syncs)) {
        kind = "write after another thread's read";
        other = s.reader;
      }
      if (kind) {
        const std::string by = other >= 0 ? "thread " + str_of(threads[other].thread_idx)
                                          : "other threads";
        fail("shared-memory race on " + name_of(what) + ": " + kind + " (" + by +
             ") with no __syncthreads between");
      }
      if (write) {
        s.writer = me;
        s.write_epoch = epoch;
        s.write_warp_syncs = current->warp_syncs;
      } else {
        s.reader = s.read_epoch == epoch && s.reader != -1 && s.reader != me ? -2 : me;
        s.read_epoch = epoch;
        s.read_warp_syncs = current->warp_syncs;
      }
    }
  }
};

}  // namespace detail

// The running thread's block; only valid inside a kernel the emulator runs.
inline detail::Block& this_block() {
  if (!detail::tl_block || !detail::tl_block->current)
    throw Error("CUDA emulator: device code called outside an emulated kernel launch");
  return *detail::tl_block;
}

// A checked pointer into a block's shared memory: every access through it is bounds- and
// alignment-checked against the array it came from, and recorded by the race detector.
template <typename T>
class SharedPtr;

template <typename T>
class SharedRef {
 public:
  SharedRef(const SharedPtr<T>& p) : p_(p) {}
  operator T() const {
    T v;
    std::memcpy(&v, p_.address(false), sizeof(T));
    return v;
  }
  SharedRef& operator=(const T& v) {
    std::memcpy(p_.address(true), &v, sizeof(T));
    return *this;
  }
  SharedRef& operator=(const SharedRef& o) { return *this = static_cast<T>(o); }
  SharedRef& operator+=(const T& v) { return *this = static_cast<T>(*this) + v; }
  SharedRef& operator-=(const T& v) { return *this = static_cast<T>(*this) - v; }
  SharedRef& operator*=(const T& v) { return *this = static_cast<T>(*this) * v; }
  SharedPtr<T> operator&() const { return p_; }

 private:
  SharedPtr<T> p_;
};

template <typename T>
class SharedPtr {
 public:
  // `begin`..`end`: the bytes of the array, in the static (dynamic = false) or dynamic memory.
  SharedPtr(bool dynamic, int64_t begin, int64_t end, int64_t offset, const char* name)
      : dynamic_(dynamic), begin_(begin), end_(end), offset_(offset), name_(name) {}
  SharedRef<T> operator[](int64_t i) const { return *(*this + i); }
  SharedRef<T> operator*() const { return SharedRef<T>(*this); }
  SharedPtr operator+(int64_t i) const {
    return SharedPtr(dynamic_, begin_, end_, offset_ + i * static_cast<int64_t>(sizeof(T)),
                     name_);
  }
  SharedPtr operator-(int64_t i) const { return *this + (-i); }
  SharedPtr& operator+=(int64_t i) { return *this = *this + i; }
  // The same bytes seen as another type (reinterpret_cast<U*> on the GPU).
  template <typename U>
  SharedPtr<U> as() const { return SharedPtr<U>(dynamic_, begin_, end_, offset_, name_); }

  // The host address of the element, after the checks; `write` says how it is accessed.
  unsigned char* address(bool write) const {
    detail::Block& b = this_block();
    const int64_t size = sizeof(T), index = (offset_ - begin_) / size;
    // Built only for a report: every access of an emulated kernel comes through here.
    const auto what = [&] {
      return std::string(name_) + "[" + std::to_string(index) + "] (" +
             std::to_string(sizeof(T)) + "-byte " + (write ? "write" : "read") + ")";
    };
    if (offset_ < begin_ || offset_ + size > end_)
      b.fail("out-of-bounds shared-memory access " + what() + ": " + name_ + " has " +
             std::to_string(end_ - begin_) + " bytes, the access is at byte " +
             std::to_string(offset_ - begin_));
    if (offset_ % static_cast<int64_t>(alignof(T)))
      b.fail("misaligned shared-memory access " + what() + ": shared address " +
             std::to_string(offset_) + " is not a multiple of " + std::to_string(alignof(T)));
    b.check_not_inflight(dynamic_, offset_, sizeof(T), what);
    if (b.opt.racecheck)
      b.track(dynamic_ ? b.dynamic_shadow : b.static_shadow, offset_, sizeof(T), write, what);
    return (dynamic_ ? b.dynamic_mem : b.static_mem).data() + offset_;
  }

  // cp.async of `bytes` bytes from `src` to here (16-byte aligned, inside the array), of which
  // `src_bytes` are read and the rest zero-filled.
  void cp_async_from(const void* src, size_t bytes, size_t src_bytes) const {
    detail::Block& b = this_block();
    const std::string what = std::string(name_) + " at byte " + std::to_string(offset_ - begin_);
    if (offset_ < begin_ || offset_ + int64_t(bytes) > end_)
      b.fail("out-of-bounds cp.async into shared memory " + what + ": " + name_ + " has " +
             std::to_string(end_ - begin_) + " bytes");
    if (offset_ % int64_t(bytes))
      b.fail("misaligned cp.async into shared memory " + what + ": not a multiple of " +
             std::to_string(bytes));
    b.check_not_inflight(dynamic_, offset_, bytes, what);
    // The copy may land at any moment until its wait: for the race detector it writes from
    // its issue (and again when it lands), so a copy into bytes other threads still read
    // before a barrier is a race.
    if (b.opt.racecheck)
      b.track(dynamic_ ? b.dynamic_shadow : b.static_shadow, offset_, int64_t(bytes), true,
              "cp.async into " + what);
    b.cp_async(dynamic_, offset_, src, bytes, src_bytes);
  }

 private:
  bool dynamic_;
  int64_t begin_, end_, offset_;
  const char* name_;
};

template <typename T>
SharedPtr<T> static_shared(const void* tag, size_t count, const char* name,
                           size_t align = alignof(T)) {
  detail::Block& b = this_block();
  const int64_t offset =
      b.static_region(tag, count * sizeof(T), std::max(align, alignof(T)), name);
  return SharedPtr<T>(false, offset, offset + int64_t(count * sizeof(T)), offset, name);
}

template <typename T>
SharedPtr<T> dynamic_shared(const char* name) {
  detail::Block& b = this_block();
  return SharedPtr<T>(true, 0, int64_t(b.dynamic_mem.size()), 0, name);
}

inline void syncthreads(const char* file, int line) { this_block().barrier({file, line}); }

template <typename T>
T collective(detail::Collective kind, const char* file, int line, unsigned mask, T value,
             int arg, int width) {
  static_assert(sizeof(T) <= detail::kLaneBytes, "a lane brings at most kLaneBytes");
  const unsigned char* r =
      this_block().collective(kind, {file, line}, mask, &value, sizeof(T), arg, width);
  T out;
  std::memcpy(&out, r, sizeof(T));
  return out;
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16|bf16}: the whole warp's D = A B + C
// (Block::finish_mma has the fragment layouts).
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                         const float (&c)[4], bool bf16, const char* file, int line) {
  unsigned char operand[40];
  std::memcpy(operand, a, 16);
  std::memcpy(operand + 16, b, 8);
  std::memcpy(operand + 24, c, 16);
  const unsigned char* r = this_block().collective(detail::Collective::kMma, {file, line},
                                                   0xffffffffu, operand, sizeof operand,
                                                   bf16 ? 1 : 0, 32);
  std::memcpy(d, r, 16);
}

// ldmatrix.sync.aligned.m8n8.x<matrices>{.trans}.shared.b16 into r[0..matrices): this lane's
// row address is `row` (used by lanes below 8 * matrices; Block::finish_ldmatrix has the
// layout). The row is read, checked, as one 16-byte shared-memory access.
template <typename T>
void ldmatrix(uint32_t* r, int matrices, bool trans, const SharedPtr<T>& row, const char* file,
              int line) {
  detail::Block& b = this_block();
  unsigned char bytes[16] = {};
  if (b.current->linear % kWarpSize < 8u * matrices) {
    const uint4 v = *row.template as<uint4>();
    std::memcpy(bytes, &v, 16);
  }
  const unsigned char* out = b.collective(detail::Collective::kLdmatrix, {file, line},
                                          0xffffffffu, bytes, 16, matrices + 256 * trans, 32);
  std::memcpy(r, out, 4 * matrices);
}

inline void check_vector_alignment(const void* p, size_t bytes, const char* what);

// cp.async.cg.shared.global [dst], [src], 16, (valid ? 16 : 0): src is read now, dst written
// when this thread's cp_async_wait covers the group the copy is committed in.
template <typename T>
void issue_cp_async16(const SharedPtr<T>& dst, const void* src, bool valid) {
  if (valid) check_vector_alignment(src, 16, "cp.async global source");
  dst.cp_async_from(valid ? src : nullptr, 16, valid ? 16 : 0);
}
inline void cp_async_commit() { this_block().cp_async_commit(); }
inline void cp_async_wait(size_t pending) { this_block().cp_async_wait(pending); }

// 16-byte (or other vector) accesses to global memory must be aligned to their size.
inline void check_vector_alignment(const void* p, size_t bytes, const char* what) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  if (address % bytes) {
    std::ostringstream s;
    s << "misaligned " << bytes << "-byte " << what << " at address 0x" << std::hex << address
      << std::dec << " (address % " << bytes << " = " << address % bytes << ")";
    this_block().fail(s.str());
  }
}

// The name of a kernel function, for messages ("kernel at 0x..." where the symbol is hidden).
inline std::string kernel_name(const void* fn) {
  Dl_info info;
  if (dladdr(fn, &info) && info.dli_sname) {
    int status = 0;
    char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    std::string name = status == 0 ? demangled : info.dli_sname;
    std::free(demangled);
    return name;
  }
  std::ostringstream s;
  s << "kernel at " << fn;
  return s.str();
}

// The last launch on this OS thread: which kernel, and its grid and block (for tests that check
// which instantiation a host launcher chose).
struct LaunchRecord {
  std::string kernel;
  dim3 grid, block;
  size_t dynamic_shared = 0;
  uint64_t seed = 0;
};
inline thread_local LaunchRecord last_launch;

// Runs kernel<<<grid, block, dynamic_shared>>>(args...) to completion; throws Error naming the
// kernel, the problem and the seed that replays it.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared,
            const Options& opt, Args&&... args) {
  const std::string name = kernel_name(reinterpret_cast<const void*>(kernel));
  last_launch = {name, grid, block, dynamic_shared, opt.seed};
  const std::string context = " [" + name + ", grid " +
                              detail::str_of(make_uint3(grid.x, grid.y, grid.z)) + ", block " +
                              detail::str_of(make_uint3(block.x, block.y, block.z)) +
                              ", " + opt.arch->name + ", seed " + std::to_string(opt.seed) +
                              "; FASTDW_CUDA_EMULATE_SEED=" + std::to_string(opt.seed) +
                              " replays it]";
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  std::string bad;
  if (threads == 0 || uint64_t(grid.x) * grid.y * grid.z == 0)
    bad = "an empty grid or block";
  else if (threads > kMaxThreadsPerBlock || block.x > 1024 || block.y > 1024 || block.z > 64)
    bad = "a block of more than 1024 threads, or over (1024, 1024, 64)";
  else if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    bad = "a grid over (2^31 - 1, 65535, 65535)";
  else if (dynamic_shared > opt.max_dynamic_shared)
    bad = std::to_string(dynamic_shared) + " bytes of dynamic shared memory, over the " +
          std::to_string(opt.max_dynamic_shared) +
          " set for this kernel (cudaFuncAttributeMaxDynamicSharedMemorySize)";
  else if (dynamic_shared > opt.arch->max_shared)
    bad = std::to_string(dynamic_shared) + " bytes of dynamic shared memory, over the " +
          std::to_string(opt.arch->max_shared) + " of " + opt.arch->name;
  if (!bad.empty()) throw Error("invalid launch: " + bad + context);

  std::mt19937_64 rng(opt.seed);
  std::vector<uint64_t> order(uint64_t(grid.x) * grid.y * grid.z);
  for (uint64_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);

  thread_local detail::StackPool stacks;
  detail::Block b(opt, rng);
  b.grid_dim = grid;
  b.block_dim = block;
  b.dynamic_mem.resize(dynamic_shared);
  if (opt.racecheck) b.dynamic_shadow.resize(dynamic_shared);
  b.body = [&] { kernel(args...); };
  detail::Block* outer = detail::tl_block;
  try {
    for (uint64_t i : order) {
      b.block_idx = make_uint3(i % grid.x, (i / grid.x) % grid.y, i / (uint64_t(grid.x) * grid.y));
      b.reset_shared();
      b.run(stacks);
    }
  } catch (const Error& e) {
    detail::tl_block = outer;
    throw Error(std::string(e.what()) + context);
  }
  detail::tl_block = outer;
}

}  // namespace fastdw_emu
