// fastdw_cpp::inverted_residual on CPU (float32), a MobileNetV2/V3 block in one call:
//   h = act((x @ We^T) * es + eb)               expand 1x1 (skipped without expand_w)
//   d = act(dwconv_kxk(h, stride) * ds + db)    depthwise, padding (k-1)/2
//   d = d * se_gate(W2 se_act(W1 mean_hw(d) + b1) + b2)        squeeze-excite (optional)
//   y = (d @ Wp^T) * ps + pb  (+ x)             project 1x1 (+ residual)
// all on channels-last memory, where a 1x1 conv is a GEMM over pixels.
//
// Eager PyTorch writes the expanded tensor h (6x the block's input) to DRAM and reads it back
// twice. Here the work is split into units (an image, or a band of its output rows), each run
// by one thread, which streams its output rows in groups (1x1 convs by the register-blocked GEMM
// with fused epilogue of csrc/cpu/isa/loops.h, depthwise by dw_rows): a group expands only the
// input rows its depthwise windows need that the previous group has not already expanded (the
// k - s rows two consecutive groups share are kept, like a line buffer), runs the depthwise
// rows, and projects them. The rows of h a group needs are sized to kGroupBytes, so h and the
// group's d stay in the 1 MiB L2 of this class of CPU; h is never recomputed except at the
// edges of bands.
// Squeeze-excite needs the spatial mean of d over the whole image before anything is projected,
// so with SE a unit is one image: its groups fill d for the whole image (one image of d fits
// in L2 for the SE layers of MobileNetV3), then the gate scales either d or the rows of the
// project weights (y = (Wp diag(g)) d, which equals Wp (g * d)) and one GEMM projects it.
#include "checks.h"
#include "output_arena.h"
#include "ops.h"
#include "packed_weights.h"
#include "parallel_gemm.h"

#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <ATen/Context.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace fastdw_cpu {
namespace {

// Target size of one group's expanded rows, a quarter of a 1 MiB L2.
constexpr int64_t kGroupBytes = 256 * 1024;
// Fewest output rows of a band (a unit smaller than an image): each band recomputes the k - s
// rows of h it shares with the band above, at most 2/16 of its expand work.
constexpr int64_t kMinBandRows = 16;

// This thread's scratch for a group's h and d, kept from call to call: allocated per call, blocks
// this large (hundreds of KiB) can be mapped and page-faulted in afresh every time (glibc maps
// blocks above its mmap threshold anew and trims OpenMP workers' arenas on free). When the
// tests poison uninitialised memory (as at::empty does under
// torch.utils.deterministic.fill_uninitialized_memory), the scratch is NaN-filled too, so a
// read of a value no stage wrote still shows up in the output.
float* scratch(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats) buf.resize(floats);
  const auto& ctx = at::globalContext();
  if (ctx.deterministicAlgorithms() && ctx.deterministicFillUninitializedMemory())
    std::fill(buf.begin(), buf.begin() + floats, std::numeric_limits<float>::quiet_NaN());
  return buf.data();
}

// Shapes, packed weights and pointers of one call; the per-unit work reads only this.
struct Block {
  const float* x;
  float* y;
  int64_t H, W, Cin, hidden, Cout, OH, OW, k, s, pad;
  int64_t group_rows, band_rows;  // output rows of a group and of a unit (OH: whole images)
  Act act;
  bool residual;
  at::Tensor we, es, eb;  // packed expand weights (packed_gemm_weight), scale, shift; or none
  at::Tensor wp, ps, pb;  // packed project weights, scale, shift
  DwParams dw;            // depthwise taps/scale/shift/shape; pointers filled per group
  at::Tensor se_w1, se_b1, se_w2, se_b2;  // se_w1/se_w2 packed (packed_gemm_weight); or none
  int64_t squeeze;                        // se_w1's output channels
  Act se_act;                             // the SE's inner activation
  SeGate gate;                            // and its gate

  // Input rows [lo, hi) of the image being streamed, expanded into h (row lo at h[0]).
  struct Window {
    int64_t lo = 0, hi = 0;
  };

  // Expand and depthwise for output rows [oh0, oh1) of image n; d row oh goes to
  // d + (oh - d_h0) * OW * hidden. Rows of h the previous group of this unit expanded and this
  // one needs too are moved to the front of h, not recomputed.
  void expand_dw(int64_t n, int64_t oh0, int64_t oh1, float* h, Window& win, float* d,
                 int64_t d_h0) const {
    DwParams p = dw;
    const float* xn = x + n * H * W * Cin;
    if (we.defined()) {
      const int64_t lo = std::max<int64_t>(0, oh0 * s - pad);
      const int64_t hi = std::min<int64_t>(H, (oh1 - 1) * s - pad + k);
      const int64_t row = W * hidden;
      if (lo < win.lo || lo >= win.hi) {
        win.lo = win.hi = lo;
      } else if (lo > win.lo) {
        std::memmove(h, h + (lo - win.lo) * row, (win.hi - lo) * row * sizeof(float));
        win.lo = lo;
      }
      if (hi > win.hi) {
        parallel_gemm(GemmParams{.a = xn + win.hi * W * Cin, .b = we.data_ptr<float>(),
                                 .c = h + (win.hi - win.lo) * row, .scale = es.data_ptr<float>(),
                                 .shift = eb.data_ptr<float>(), .K = Cin, .N = hidden,
                                 .lda = Cin, .ldc = hidden, .act = act},
                      (hi - win.hi) * W);
        win.hi = hi;
      }
      p.x = h;
      p.x_h0 = win.lo;
    } else {
      p.x = xn;
      p.x_h0 = 0;
    }
    p.y = d;
    p.y_h0 = d_h0;
    at::parallel_for(oh0, oh1, 1, [&](int64_t b, int64_t end) { dw_rows(p, b, end); });
  }

  // y rows [oh0, oh1) of image n = (d @ w) * ps + pb (+ x), epilogue fused into the GEMM.
  void project(int64_t n, int64_t oh0, int64_t oh1, const float* d, const at::Tensor& w) const {
    const int64_t rows = (oh1 - oh0) * OW;
    float* out = y + (n * OH + oh0) * OW * Cout;
    const float* res = residual ? x + (n * H + oh0) * W * Cin : nullptr;
    parallel_gemm(GemmParams{.a = d, .b = w.data_ptr<float>(), .c = out,
                             .scale = ps.data_ptr<float>(), .shift = pb.data_ptr<float>(),
                             .res = res, .K = hidden, .N = Cout, .lda = hidden, .ldc = Cout,
                             .ldr = Cin, .act = kNone},
                  rows);
  }

  int64_t bands_per_image() const { return (OH + band_rows - 1) / band_rows; }
  int64_t h_floats() const {
    return we.defined() ? ((group_rows - 1) * s + k) * W * hidden : 0;
  }
  int64_t d_floats() const { return (se_w1.defined() ? OH : group_rows) * OW * hidden; }

  // The squeeze-excite gate of one image's d (OH*OW x hidden): the spatial mean, then fc1 +
  // se_act and fc2 + the gate as 1-row GEMMs with the activation in the epilogue (a sigmoid gate
  // after it, over the hidden floats: the GEMM epilogues have the act names only). Returns a
  // pointer into a thread-local buffer (hidden floats), valid until the next call on this thread.
  const float* se_gate(const float* d) const {
    thread_local std::vector<float> buf;
    buf.resize(2 * hidden + squeeze);
    float* pooled = buf.data();
    float* z = pooled + hidden;
    float* g = z + squeeze;
    column_means(d, OH * OW, hidden, pooled);
    gemm(GemmParams{.a = pooled, .b = se_w1.data_ptr<float>(), .c = z,
                    .shift = se_b1.data_ptr<float>(), .K = hidden, .N = squeeze, .lda = hidden,
                    .ldc = squeeze, .act = se_act},
         0, 1, 0, squeeze);
    const bool sigmoid = gate == SeGate::kSigmoid;
    gemm(GemmParams{.a = z, .b = se_w2.data_ptr<float>(), .c = g,
                    .shift = se_b2.data_ptr<float>(), .K = squeeze, .N = hidden, .lda = squeeze,
                    .ldc = hidden, .act = sigmoid ? kNone : kHardsigmoid},
         0, 1, 0, hidden);
    if (sigmoid)  // 1 / (1 + e^-u): exp overflows to inf for u < -88, giving 0; NaN stays NaN
      for (int64_t c = 0; c < hidden; ++c) g[c] = 1.f / (1.f + std::exp(-g[c]));
    return g;
  }

  // Unit u: (image, band of output rows) without SE, an image with SE.
  void run(int64_t u, float* h, float* d) const {
    Window win;
    if (!se_w1.defined()) {
      const int64_t n = u / bands_per_image(), r0 = (u % bands_per_image()) * band_rows;
      const int64_t r1 = std::min(OH, r0 + band_rows);
      for (int64_t oh0 = r0; oh0 < r1; oh0 += group_rows) {
        const int64_t oh1 = std::min(r1, oh0 + group_rows);
        expand_dw(n, oh0, oh1, h, win, d, oh0);
        project(n, oh0, oh1, d, wp);
      }
      return;
    }
    for (int64_t oh0 = 0; oh0 < OH; oh0 += group_rows)
      expand_dw(u, oh0, std::min(OH, oh0 + group_rows), h, win, d, 0);
    const float* g = se_gate(d);
    // (g * d) @ Wp = d @ (diag(g) Wp): scale the operand with fewer elements, d (OH*OW x hidden)
    // in place or a copy of the packed Wp (hidden x C_out; row k of each panel times g[k]).
    // Small late-stage maps (7x7 = 49 pixels against C_out = 160) take the first.
    if (OH * OW <= Cout) {
      scale_columns(d, OH * OW, hidden, g);
      project(u, 0, OH, d, wp);
      return;
    }
    at::Tensor scaled = at::empty_like(wp);
    scale_gemm_b_rows(wp.data_ptr<float>(), g, Cout, hidden, scaled.data_ptr<float>());
    project(u, 0, OH, d, scaled);
  }
};

void check_affine(const at::Tensor& scale, const char* sname, const at::Tensor& shift,
                  const char* bname, int64_t c) {
  check_shape(scale, sname, at::kFloat, {c});
  check_shape(shift, bname, at::kFloat, {c});
}

// Block's copy of an optional tensor: packed for the GEMM, or contiguous; undefined when absent.
at::Tensor packed_or_none(const std::optional<at::Tensor>& t) {
  return t ? packed_gemm_weight(*t) : at::Tensor();
}
at::Tensor contiguous_or_none(const std::optional<at::Tensor>& t) {
  return t ? t->contiguous() : at::Tensor();
}

}  // namespace

at::Tensor inverted_residual(const at::Tensor& x, const BlockWeights& w, int64_t stride,
                             c10::string_view act, bool residual, c10::string_view se_act,
                             c10::string_view se_gate) {
  check_feature_map(x, "x", /*allow_bf16=*/false);
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  int64_t hidden = Cin;
  if (w.expand_w) {
    check_shape(*w.expand_w, "expand_w", at::kFloat, {-1, Cin});
    hidden = w.expand_w->size(0);
    TORCH_CHECK(hidden >= 1, "expand_w must have at least one output channel");
    TORCH_CHECK(w.expand_scale && w.expand_shift, "expand_scale and expand_shift are required "
                "with expand_w");
    check_affine(*w.expand_scale, "expand_scale", *w.expand_shift, "expand_shift", hidden);
  } else {
    TORCH_CHECK(!w.expand_scale && !w.expand_shift, "expand_scale/expand_shift given without "
                "expand_w");
  }
  check_shape(w.dw_w, "dw_w", at::kFloat, {hidden, 1, -1, -1});
  const int64_t k = w.dw_w.size(2);
  TORCH_CHECK(w.dw_w.size(3) == k && k % 2 == 1, "dw_w must have an odd square k x k window, "
              "got shape ", w.dw_w.sizes());
  check_affine(w.dw_scale, "dw_scale", w.dw_shift, "dw_shift", hidden);
  check_shape(w.project_w, "project_w", at::kFloat, {-1, hidden});
  const int64_t Cout = w.project_w.size(0);
  TORCH_CHECK(Cout >= 1, "project_w must have at least one output channel");
  check_affine(w.project_scale, "project_scale", w.project_shift, "project_shift", Cout);
  check_range(stride, "stride", 1);
  const Act a = parse_act(act);
  const Act sa = parse_act(se_act, "se_act");
  const SeGate sg = parse_se_gate(se_gate);
  const bool has_se = w.se_w1.has_value();
  TORCH_CHECK(has_se == w.se_b1.has_value() && has_se == w.se_w2.has_value() &&
              has_se == w.se_b2.has_value(), "squeeze-excite needs all of se_w1, se_b1, se_w2, "
              "se_b2, or none");
  int64_t squeeze = 0;
  if (has_se) {
    check_shape(*w.se_w1, "se_w1", at::kFloat, {-1, hidden});
    squeeze = w.se_w1->size(0);
    TORCH_CHECK(squeeze >= 1, "se_w1 must have at least one output channel");
    check_shape(*w.se_b1, "se_b1", at::kFloat, {squeeze});
    check_shape(*w.se_w2, "se_w2", at::kFloat, {hidden, squeeze});
    check_shape(*w.se_b2, "se_b2", at::kFloat, {hidden});
  }
  const int64_t pad = (k - 1) / 2;
  const int64_t OH = conv_out(H, k, stride, pad, 1, "x (height)");
  const int64_t OW = conv_out(W, k, stride, pad, 1, "x (width)");
  TORCH_CHECK(!residual || (stride == 1 && Cin == Cout), "residual needs stride 1 and C_in == "
              "C_out, got stride ", stride, ", C_in ", Cin, ", C_out ", Cout);

  // Units are handed to threads whole, each running its GEMMs and depthwise rows single-threaded:
  // no synchronisation inside the block. Without SE that takes a unit count that is a multiple of
  // the thread count (up to rounding of band sizes): whole images when the batch allows (no halo
  // rows recomputed at all), else bands of at least kMinBandRows rows. Otherwise (batch 1 at 28x28
  // and below, or SE with a batch below twice the threads) the units run in turn and the GEMMs and
  // depthwise rows inside each use all threads.
  const int64_t threads = at::get_num_threads();
  int64_t bands = (threads + N - 1) / N;
  while ((N * bands) % threads) ++bands;
  int64_t band_rows = (OH + bands - 1) / bands;
  const bool whole_units = threads > 1 && (has_se ? N >= 2 * threads
                                                  : bands == 1 || band_rows >= kMinBandRows);
  if (!whole_units || has_se) band_rows = OH;
  // A group run by all threads together spreads its h over their L2s: a larger group, so fewer
  // synchronised steps.
  const int64_t row_bytes = W * hidden * static_cast<int64_t>(sizeof(float));
  const int64_t group_bytes = whole_units ? kGroupBytes : kGroupBytes * threads;
  const int64_t group_rows = std::clamp<int64_t>((group_bytes / row_bytes - k) / stride + 1, 1,
                                                 OH);

  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = new_output(x, N, Cout, OH, OW);
  const at::Tensor dwp = packed_dw_taps(w.dw_w);
  const at::Tensor dws = w.dw_scale.contiguous(), dwb = w.dw_shift.contiguous();
  const Block blk{
      .x = xc.data_ptr<float>(), .y = y.data_ptr<float>(),
      .H = H, .W = W, .Cin = Cin, .hidden = hidden, .Cout = Cout, .OH = OH, .OW = OW, .k = k,
      .s = stride, .pad = pad, .group_rows = group_rows, .band_rows = band_rows,
      .act = a, .residual = residual,
      .we = packed_or_none(w.expand_w), .es = contiguous_or_none(w.expand_scale),
      .eb = contiguous_or_none(w.expand_shift),
      .wp = packed_gemm_weight(w.project_w), .ps = w.project_scale.contiguous(),
      .pb = w.project_shift.contiguous(),
      // NHWC rows of one image of x or h (hidden channels either way); x, y and their row
      // origins are set per group.
      .dw = DwParams{.x = nullptr, .y = nullptr, .w = dwp.data_ptr<float>(),
                     .scale = dws.data_ptr<float>(), .shift = dwb.data_ptr<float>(),
                     .C = hidden, .H = H, .W = W, .OH = OH, .OW = OW,
                     .xs_n = 0, .xs_h = W * hidden, .xs_w = hidden,
                     .ys_n = 0, .ys_h = OW * hidden, .ys_w = hidden,
                     .k = k, .stride = stride, .pad = pad, .dil = 1, .act = a, .dtype = kFloat},
      .se_w1 = packed_or_none(w.se_w1), .se_b1 = contiguous_or_none(w.se_b1),
      .se_w2 = packed_or_none(w.se_w2), .se_b2 = contiguous_or_none(w.se_b2),
      .squeeze = squeeze, .se_act = sa, .gate = sg};
  const int64_t units = has_se ? N : N * blk.bands_per_image();
  auto work = [&](int64_t begin, int64_t end) {
    float* h = scratch(blk.h_floats() + blk.d_floats());
    for (int64_t u = begin; u < end; ++u) blk.run(u, h, h + blk.h_floats());
  };
  if (whole_units) at::parallel_for(0, units, 1, work);
  else work(0, units);
  return output_memory_format(x) == at::MemoryFormat::ChannelsLast ? y : y.contiguous();
}

}  // namespace fastdw_cpu

TORCH_LIBRARY_IMPL(fastdw_cpp, CPU, m) {
  m.impl("inverted_residual", [](const at::Tensor& x,
                                 const c10::List<std::optional<at::Tensor>>& weights,
                                 int64_t stride, c10::string_view act, bool residual,
                                 c10::string_view se_act, c10::string_view se_gate) {
    return fastdw_cpu::inverted_residual(x, fastdw_cpu::block_weights(weights), stride, act,
                                         residual, se_act, se_gate);
  });
}
