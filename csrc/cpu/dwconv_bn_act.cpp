// fastdw_cpp::dwconv_bn_act on CPU:
//   y[n,c,oh,ow] = act(scale[c] * sum_{i,j} x[n,c,oh*s-p+i*d,ow*s-p+j*d] * w[c,0,i,j] + shift[c])
// computed channels-last by the vectorised loops in csrc/cpu/isa (see dw_chunk there).
#include "checks.h"
#include "output_arena.h"
#include "ops.h"
#include "packed_weights.h"
#include <ATen/Parallel.h>

#include <torch/library.h>

namespace fastdw_cpu {

at::Tensor dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         const at::Tensor& shift, int64_t stride, int64_t padding,
                         int64_t dilation, c10::string_view act) {
  check_feature_map(x, "x", /*allow_bf16=*/true);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  check_shape(weight, "weight", x.scalar_type(), {-1, 1, -1, -1});
  TORCH_CHECK(weight.size(0) == C, "weight must have C = ", C, " output channels (channel "
              "multiplier 1; multipliers > 1 run on the reference backend), got shape ",
              weight.sizes());
  const int64_t k = weight.size(2);
  TORCH_CHECK(k >= 1 && weight.size(3) == k, "weight must be (C, 1, k, k) with a square window, "
              "got shape ", weight.sizes());
  check_shape(scale, "scale", at::kFloat, {C});
  check_shape(shift, "shift", at::kFloat, {C});
  const auto [OH, OW] = check_window(x, k, stride, padding, dilation);
  const Act a = parse_act(act);

  // The loops need channel stride 1; any other strides of x are used as they are.
  const at::Tensor xc = (x.stride(1) == 1 || C == 1)
                            ? x : x.contiguous(at::MemoryFormat::ChannelsLast);
  // Packed [k*k][C] fp32 taps: one vector load per tap and channel block.
  const at::Tensor wp = packed_dw_taps(weight);
  const at::Tensor sc = scale.contiguous(), sh = shift.contiguous();
  at::Tensor y = new_output(x, N, C, OH, OW);

  const DwParams p{
      .x = xc.data_ptr(), .y = y.data_ptr(), .w = wp.data_ptr<float>(),
      .scale = sc.data_ptr<float>(), .shift = sh.data_ptr<float>(),
      .C = C, .H = H, .W = W, .OH = OH, .OW = OW,
      .xs_n = xc.stride(0), .xs_h = xc.stride(2), .xs_w = xc.stride(3),
      .ys_n = y.stride(0), .ys_h = y.stride(2), .ys_w = y.stride(3),
      .k = k, .stride = stride, .pad = padding, .dil = dilation,
      .act = a, .dtype = x.scalar_type() == at::kBFloat16 ? kBFloat16 : kFloat};
  // Parallel over output rows of all images; a grain of ~16k multiply-adds keeps thread
  // start-up small against the work of a chunk.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, OW * C * k * k));
  at::parallel_for(0, N * OH, grain, [&](int64_t begin, int64_t end) { dw_rows(p, begin, end); });
  return output_memory_format(x) == at::MemoryFormat::ChannelsLast ? y : y.contiguous();
}

}  // namespace fastdw_cpu

TORCH_LIBRARY_IMPL(fastdw_cpp, CPU, m) {
  m.impl("dwconv_bn_act", &fastdw_cpu::dwconv_bn_act);
}
