// fastdw_cpp::pwconv_bn_act on CPU (float32):
//   y[n,o,h,w] = act(sum_i x[n,i,h,w] * weight[o,i] * scale[o] + shift[o]) + residual[n,o,h,w]
// On channels-last memory this is one GEMM, Y (N*H*W, C_out) = (X (N*H*W, C_in) @ W^T) * scale,
// with scale, shift, act and residual applied while each output block is in registers (gemm in
// csrc/cpu/isa/loops.h): one pass over memory instead of eager's conv -> BN -> act (+ add).
// The K and N of MobileNet 1x1 layers are small (<= 1280), so a register-blocked kernel without
// cache blocking over K is adequate; bench/cpu_ops.py times it against torch.compile.
#include "checks.h"
#include "output_arena.h"
#include "ops.h"
#include "packed_weights.h"
#include "parallel_gemm.h"

#include <torch/library.h>

namespace fastdw_cpu {

at::Tensor pwconv_bn_act(const at::Tensor& x, const at::Tensor& conv_weight,
                         const at::Tensor& scale, const at::Tensor& shift, c10::string_view act,
                         const std::optional<at::Tensor>& residual) {
  check_feature_map(x, "x", /*allow_bf16=*/false);
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor weight = as_matrix(conv_weight);
  check_shape(weight, "weight", at::kFloat, {-1, Cin});
  const int64_t Cout = weight.size(0);
  TORCH_CHECK(Cout >= 1, "weight must have at least one output channel, got shape ",
              weight.sizes());
  check_shape(scale, "scale", at::kFloat, {Cout});
  check_shape(shift, "shift", at::kFloat, {Cout});
  if (residual) check_shape(*residual, "residual", at::kFloat, {N, Cout, H, W});
  const Act a = parse_act(act);

  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor wp = packed_gemm_weight(weight);
  const at::Tensor sc = scale.contiguous(), sh = shift.contiguous();
  at::Tensor y = new_output(x, N, Cout, H, W);
  at::Tensor rc;
  if (residual) rc = residual->contiguous(at::MemoryFormat::ChannelsLast);
  const GemmParams g{.a = xc.data_ptr<float>(), .b = wp.data_ptr<float>(), .c = y.data_ptr<float>(),
                     .scale = sc.data_ptr<float>(), .shift = sh.data_ptr<float>(),
                     .res = residual ? rc.data_ptr<float>() : nullptr,
                     .K = Cin, .N = Cout, .lda = Cin, .ldc = Cout, .ldr = Cout, .act = a};
  parallel_gemm(g, N * H * W);
  return output_memory_format(x) == at::MemoryFormat::ChannelsLast ? y : y.contiguous();
}

}  // namespace fastdw_cpu

TORCH_LIBRARY_IMPL(fastdw_cpp, CPU, m) {
  m.impl("pwconv_bn_act", &fastdw_cpu::pwconv_bn_act);
}
