// fastdw_cpp::pwconv_bn_act on CPU (float32):
//   y[n,o,h,w] = act(sum_i x[n,i,h,w] * weight[o,i] * scale[o] + shift[o]) + residual[n,o,h,w]
// On channels-last memory this is one GEMM, Y (N*H*W, C_out) = X (N*H*W, C_in) @ (W*scale)^T,
// done by ATen's sgemm (MKL/oneDNN), then one vectorised epilogue pass (shift, act, residual)
// instead of the three passes of eager conv -> BN -> act (+ add).
#include "checks.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

namespace fastdw_cpu {
namespace {

at::Tensor pwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         const at::Tensor& shift, c10::string_view act,
                         const std::optional<at::Tensor>& residual) {
  check_feature_map(x, "x", /*allow_bf16=*/false);
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  check_shape(weight, "weight", at::kFloat, {-1, Cin});
  const int64_t Cout = weight.size(0);
  TORCH_CHECK(Cout >= 1, "weight must have at least one output channel, got shape ",
              weight.sizes());
  check_shape(scale, "scale", at::kFloat, {Cout});
  check_shape(shift, "shift", at::kFloat, {Cout});
  if (residual) check_shape(*residual, "residual", at::kFloat, {N, Cout, H, W});
  const Act a = parse_act(act);

  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor ws = weight.mul(scale.unsqueeze(1)).t();  // (C_in, C_out) view
  const at::Tensor sh = shift.contiguous();
  at::Tensor y = at::empty({N, Cout, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t M = N * H * W;
  at::Tensor y2 = y.permute({0, 2, 3, 1}).view({M, Cout});
  at::mm_out(y2, xc.permute({0, 2, 3, 1}).view({M, Cin}), ws);

  at::Tensor rc;
  if (residual) rc = residual->contiguous(at::MemoryFormat::ChannelsLast);
  EpilogueParams e{y.data_ptr<float>(), sh.data_ptr<float>(),
                   residual ? rc.data_ptr<float>() : nullptr, Cout, Cout, Cout, a};
  const int64_t grain = std::max<int64_t>(1, 16384 / Cout);
  at::parallel_for(0, M, grain, [&](int64_t b, int64_t end) { epilogue_rows(e, b, end); });
  return output_memory_format(x) == at::MemoryFormat::ChannelsLast ? y : y.contiguous();
}

}  // namespace
}  // namespace fastdw_cpu

TORCH_LIBRARY_IMPL(fastdw_cpp, CPU, m) {
  m.impl("pwconv_bn_act", &fastdw_cpu::pwconv_bn_act);
}
