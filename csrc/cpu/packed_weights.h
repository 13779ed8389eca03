// Weights in the layouts the loops read (GEMM column panels, depthwise taps), packed once per
// weight tensor and reused while the tensor is unchanged: packed on every call, the weights of a
// late block at batch 1 were read and written twice more than the block itself reads (a
// 960-channel 7x7 block holds ~1.2 MB of weights against ~30 KB of activations).
//
// Why a cached packed weight cannot go stale: an entry is found by the weight's storage, offset
// and kind, and serves a call only when the weight has the dtype, sizes and strides of the
// entry's private copy of its bytes and the same bytes, compared on every call (memcmp). No
// version counter is read, so edits that move none are seen like any other: fused optimizers,
// `.data`, memory shared through numpy or DLPack, and the aliases torch.compile hands a kernel.
// The packed form is made from the private copy, never from the weight itself, so a pack that
// overlaps a write in another thread cannot store a pack of old values beside a copy of new
// ones: the next call finds the weight differs from the copy, and packs again.
//
// What it costs per call: one pass over the weight and its copy (two reads of the weight's
// bytes, split between the threads for large weights) before the kernel reads the packed form,
// and the cache holds a copy beside each packed weight (bench/README.md, "Byte checks", has the
// measured cost). A frozen program's weights are private snapshots nothing can write: it runs
// under TrustSnapshots, with neither. Weights whose memory is not one dense block (a strided
// slice) are packed on every call. Entries hold the storage
// weakly: a freed weight's entry is dropped at the next insertion. The cache's one lock is held
// only to find or insert an entry, and across fork() (pthread_atfork), so a child process never
// inherits it locked.
#pragma once
#include "checks.h"

namespace fastdw_cpu {

// weight[n, k] of a 1x1 conv (C_out, C_in) in pack_gemm_b's layout, fp32.
at::Tensor packed_gemm_weight(const at::Tensor& weight);

// Depthwise weight (C, 1, k, k), fp32 or bf16, as fp32 taps [k*k][C] (DwParams::w).
at::Tensor packed_dw_taps(const at::Tensor& weight);

// While one is alive on a thread, the weights packed there are taken as unchanged since they
// were packed: no byte comparison, and no copy kept. Only for weights nothing else can reach
// (a frozen program's snapshots, csrc/cpu/program.cpp).
class TrustSnapshots {
 public:
  TrustSnapshots();
  ~TrustSnapshots();
  TrustSnapshots(const TrustSnapshots&) = delete;
  TrustSnapshots& operator=(const TrustSnapshots&) = delete;

 private:
  bool previous_;
};

}  // namespace fastdw_cpu
