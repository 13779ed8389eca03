// What the host sees of csrc/cuda's device code: each kernel's parameter struct and the launcher
// that picks and launches its instantiation. Plain C++ with no device code, so that g++ compiles
// the ops that call the launchers (csrc/cuda/host_ops.h) in both builds: the GPU build, where
// the launchers are defined once by nvcc (csrc/cuda/kernels.cu instantiates them), and the
// emulated one, where the kernel headers (*.cuh) define them for the emulator.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace fastdw_cuda {

// A cudaStream_t (a pointer) where this header cannot name the CUDA runtime; unused by the
// emulator.
using Stream = void*;

// The activations of fastdw.contract.ACTIVATIONS, numbered as the host ops parse them.
enum Act : int { kNone = 0, kRelu, kRelu6, kHardswish, kHardsigmoid, kSilu };

// dwconv_bn_act forward (csrc/cuda/dwconv_bn_act.cuh): on channels_last tensors (channel
// strides 1), or on any other layout through the NCHW kernel. C counts the output channels: with
// a channel multiplier m, output channel c reads input channel c / m.
template <typename T>
struct DwParams {
  const T* x;           // (N, C / m, H, W) at strides xs_*
  const float* w;       // (k*k, C) contiguous: tap (i, j) of channel c at (i*k + j)*C + c
  const float* scale;   // (C,)
  const float* shift;   // (C,)
  T* y;                 // (N, C, OH, OW) at strides ys_*
  int64_t N, C, H, W, OH, OW;
  int64_t xs_n, xs_h, xs_w, ys_n, ys_h, ys_w;  // in elements
  int k, stride, pad, dil, act;
  bool vector;  // x, y, their strides and C allow 16-byte accesses of whole channel groups
  int64_t xs_c = 1, ys_c = 1;  // the channel strides (1 for the channels_last kernel)
  int mult = 1;                // the channel multiplier m
};

// Launches the instantiation of dwconv_bn_act_nhwc that fits `p` on `stream`; throws
// std::invalid_argument when the shape exceeds the grid limits, std::runtime_error when the
// launch fails.
template <typename T>
void launch_dwconv_bn_act(const DwParams<T>& p, Stream stream);

// Launches the instantiation of dwconv_bn_act_nchw that fits `p` and returns true, or returns
// false (launching nothing) when its input window exceeds the default shared memory or a plane
// has more tiles than grid.y allows; throws as launch_dwconv_bn_act does.
template <typename T>
bool launch_dwconv_bn_act_nchw(const DwParams<T>& p, Stream stream);

// pwconv_bn_act forward on channels_last tensors, as a GEMM over pixels
// (csrc/cuda/pwconv_bn_act.cuh).
template <typename T>
struct PwParams {
  const T* x;         // (M, K): M = N*H*W pixels, K input channels, rows ldx apart
  const T* w;         // (Cout, K) contiguous
  const float* scale; // (Cout,)
  const float* shift; // (Cout,)
  const T* residual;  // (M, Cout), rows ldr apart, or null
  T* y;               // (M, Cout), rows ldy apart
  int64_t M, K, Cout, ldx, ldr, ldy;  // in elements
  int act;
  bool mma;  // fp16/bf16 with K % 8 == 0 and 16-byte aligned rows: the tensor-core kernel
  // The backward's recompute (csrc/cuda/pwconv_backward.cuh): with grad set, the kernels write
  // u = sum_k x w and gz = grad act'(u scale + shift), both (M, Cout) contiguous, instead of y.
  const T* grad = nullptr;  // (M, Cout) contiguous
  float* gz = nullptr;
  float* u = nullptr;
};

template <typename T>
void launch_pwconv_bn_act(const PwParams<T>& p, Stream stream);

// pwconv_bn_act backward (csrc/cuda/pwconv_backward.cuh): with the forward's PwParams (x, w,
// scale, shift, shapes, act; grad, gz, u set; y unused) and fp32 scratch, it writes the
// gradients of x, w (transposed), scale and shift in fp32.
template <typename T>
struct PwBackParams {
  PwParams<T> f;
  const float* wt;        // (K, Cout) contiguous: scale[n] w[n, k] at k*Cout + n
  const float *ones, *zeros;  // (K,): the grad-x GEMM's epilogue
  float* gx;              // (M, K) contiguous
  float* partial;         // scratch (slices, K + 2, Cout): per slice of kPwBackSlice pixels, the
                          // sums of gw (transposed), gscale, gshift in that order
  float *gw, *gscale, *gshift;  // (K, Cout), (Cout,), (Cout,)
};

template <typename T>
void launch_pwconv_bn_act_backward(const PwBackParams<T>& p, Stream stream);

inline constexpr int kPwBackSlice = 256;

// inverted_residual forward on channels_last tensors, one fused kernel
// (csrc/cuda/inverted_residual.cuh). The expand is absent where ew is null (hidden == Cin).
// With d set (a squeeze-excite) the kernel writes d and the per-tile sums instead of y, and
// se_gate_project finishes the block.
// The side of the square output tile a block of the fused kernel computes.
inline constexpr int kIrTile = 8;

template <typename T>
struct IrParams {
  const T* x;                        // (N, H, W, Cin) at strides xs_*, channel stride 1
  const T* ew;                       // (hidden, Cin) contiguous, or null
  const float *es, *eb;              // (hidden,), with ew
  const float* dw;                   // (k*k, hidden) contiguous: tap (i, j) at (i*k + j)*hidden
  const float *ds, *db;              // (hidden,)
  const T* pw;                       // (Cout, hidden) contiguous
  const float *ps, *pb;              // (Cout,)
  T* y;                              // (N, OH, OW, Cout) at strides ys_*, channel stride 1
  int64_t N, Cin, H, W, hidden, Cout, OH, OW;
  int64_t xs_n, xs_h, xs_w, ys_n, ys_h, ys_w;  // in elements
  int k, stride, pad, act;
  bool residual;  // y += x (stride 1, Cin == Cout)
  T* d;            // (N, OH, OW, hidden) contiguous: the depthwise output, or null
  float* partial;  // (N, tiles, hidden): per 8 x 8 tile (row-major), the sum of d over it
};

// The squeeze-excite's gates, numbered as the host ops parse them (fastdw.contract.SE_GATES).
enum SeGate : int { kGateHardsigmoid = 0, kGateSigmoid };

// The second kernel of a block with a squeeze-excite: the gate from the per-tile sums, then
// y = project(d * gate) (+ x), as the fused kernel's epilogue.
template <typename T>
struct SeParams {
  const T* d;             // (N, OH, OW, hidden) contiguous
  const float* partial;   // (N, tiles, hidden)
  const float *w1, *b1;   // (squeeze, hidden), (squeeze,)
  const float *w2, *b2;   // (hidden, squeeze), (hidden,)
  const T* pw;            // (Cout, hidden) contiguous
  const float *ps, *pb;   // (Cout,)
  const T* x;             // the residual's x, at strides xs_*, channel stride 1
  T* y;                   // (N, OH, OW, Cout) at strides ys_*, channel stride 1
  int64_t N, hidden, squeeze, Cout, OH, OW, tiles;
  int64_t xs_n, xs_h, xs_w, ys_n, ys_h, ys_w;  // in elements
  int se_act, se_gate;
  bool residual;
};

// Launches the fused kernel on `stream` and returns true, or returns false (launching nothing)
// when the shape's shared memory exceeds the GPU's per-block limit; throws as
// launch_dwconv_bn_act does.
template <typename T>
bool launch_inverted_residual(const IrParams<T>& p, Stream stream);

// Launches the kernel and returns true, or returns false (launching nothing) when the gate's
// shared memory (4 bytes a hidden channel) exceeds the GPU's; throws std::invalid_argument when
// the grid exceeds the limits.
template <typename T>
bool launch_se_gate_project(const SeParams<T>& p, Stream stream);

// dwconv_bn_act backward on channels_last tensors (csrc/cuda/dwconv_backward.cuh): with the
// forward's DwParams (x, w, scale, shift, shapes, strides; y unused), the incoming gradient and
// fp32 scratch, it writes the gradients of x (T), of the taps (fp32, tap-major as w), of scale
// and of shift (fp32).
template <typename T>
struct DwBackParams {
  DwParams<T> f;
  const T* grad;       // (N, OH, OW, C) contiguous
  T* gx;               // (N, H, W, C) contiguous
  float* gu;           // scratch (N, OH, OW, C): the gradient of the conv's output
  float* partial;      // scratch (slices, k*k + 2, C): per slice of pixels, the sums of gw,
                       // gscale, gshift in that order
  float *gw, *gscale, *gshift;  // (k*k, C), (C,), (C,)
};

template <typename T>
void launch_dwconv_bn_act_backward(const DwBackParams<T>& p, Stream stream);

// The slices of output pixels whose partial sums the backward keeps: the size of `partial`.
inline constexpr int kDwBackSlice = 128;

}  // namespace fastdw_cuda
