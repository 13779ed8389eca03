// conv_bias_act on CPU (float32), a program's stem:
//   y[n,o,oh,ow] = act(sum_{c,i,j} x[n,c,oh*s-p+i*d,ow*s-p+j*d] * weight[o,c,i,j] + bias[o])
// as a GEMM of the implicit im2col matrix (one row per output pixel, one column per tap) and the
// packed weight, by the register-blocked micro-kernel of csrc/cpu/isa/loops.h (conv_rows). A
// stem has 3 input channels, so the 27 taps are read straight from x in whatever layout the
// caller passed (an NCHW image needs no conversion), and the output, channels-last, goes to the
// program's arena like every other step's.
#include "checks.h"
#include "ops.h"
#include "output_arena.h"
#include "packed_weights.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace fastdw_cpu {

at::Tensor conv_bias_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         int64_t stride, int64_t padding, int64_t dilation,
                         c10::string_view act) {
  check_feature_map(x, "x", /*allow_bf16=*/false);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  check_shape(weight, "weight", at::kFloat, {-1, -1, -1, -1});
  TORCH_CHECK(weight.size(1) == C, "x has ", C, " channels but weight takes ", weight.size(1),
              " (weight shape ", weight.sizes(), ")");
  const int64_t Cout = weight.size(0), k = weight.size(2);
  TORCH_CHECK(Cout >= 1 && k >= 1 && weight.size(3) == k, "weight must be (C_out >= 1, ", C,
              ", k, k), got shape ", weight.sizes());
  TORCH_CHECK(C * k * k <= kMaxConvTaps, "weight has ", C * k * k, " taps (C_in*k*k); this "
              "kernel takes at most ", kMaxConvTaps);
  check_shape(bias, "bias", at::kFloat, {Cout});
  const auto [OH, OW] = check_window(x, k, stride, padding, dilation);
  const Act a = parse_act(act);

  // The weight as the GEMM's (C_out, C*k*k) matrix. For a contiguous weight (a program keeps it
  // so) that is a view, so the packed copy is cached on the weight's own storage and version.
  const at::Tensor wp = packed_gemm_weight(weight.reshape({Cout, C * k * k}));
  const at::Tensor b = bias.contiguous();
  at::Tensor y = new_output(x, N, Cout, OH, OW);

  const ConvParams p{
      .x = x.data_ptr<float>(), .y = y.data_ptr<float>(), .w = wp.data_ptr<float>(),
      .bias = b.data_ptr<float>(),
      .C = C, .H = H, .W = W, .OH = OH, .OW = OW, .Cout = Cout,
      .xs_n = x.stride(0), .xs_c = x.stride(1), .xs_h = x.stride(2), .xs_w = x.stride(3),
      .k = k, .stride = stride, .pad = padding, .dil = dilation,
      .act = a};
  // Parallel over output rows; a grain of ~64k multiply-adds per chunk.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, OW * Cout * C * k * k));
  at::parallel_for(0, N * OH, grain, [&](int64_t begin, int64_t end) {
    conv_rows(p, begin, end);
  });
  return y;
}

}  // namespace fastdw_cpu
