// Weights in the layouts the loops read (GEMM column panels, depthwise taps), packed once per
// weight tensor and reused while the tensor is unchanged: packed on every call, the weights of a
// late block at batch 1 were read and written twice more than the block itself reads (a
// 960-channel 7x7 block holds ~1.2 MB of weights against ~30 KB of activations).
//
// A packed copy is looked up by the weight's storage, offset, sizes, strides, dtype, data
// pointer and version counter, so in-place edits (optimizer steps, copy_, load_state_dict),
// `.data = ...` swaps and new tensors all repack. Like every cache keyed on version counters
// (fastdw/nn/cache.py, torch.compile's freezing), it cannot see an in-place edit made through
// `.data` (`w.data.mul_(2)`), which has its own counter, or through memory shared outside torch
// (`.numpy()`, DLPack, from_blob). Inference tensors have no version
// counter and are packed on every call. Entries hold the storage weakly: a freed weight's packed
// copy is dropped at the next insertion.
#pragma once
#include "checks.h"

namespace fastdw_cpu {

// weight[n, k] of a 1x1 conv (C_out, C_in) in pack_gemm_b's layout, fp32.
at::Tensor packed_gemm_weight(const at::Tensor& weight);

// Depthwise weight (C, 1, k, k), fp32 or bf16, as fp32 taps [k*k][C] (DwParams::w).
at::Tensor packed_dw_taps(const at::Tensor& weight);

}  // namespace fastdw_cpu
