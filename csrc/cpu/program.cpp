// torch.classes.fastdw_cpp.Program: a frozen eval-mode forward, i.e. a fixed sequence of steps
// (fastdw kernels, plus the ATen ops a MobileNet may need around them: a grouped conv for a
// depthwise layer with a channel multiplier, in-place activations) run back to back in one C++
// call. fastdw/nn/freeze.py builds it from a model, with every BatchNorm folded: for freeze(),
// every tensor a private snapshot; for the models' own eval forward, views of the model's
// tensors under a stamp that sees their edits.
//
// Why: at batch 1 a MobileNet block's kernel is short enough that the Python around it in a
// module-by-module forward (nn.Module call, the fold cache's stamp, argument passing) is a large
// share of its time (bench/compare_cpu.py: fastdw_cpp against fastdw_frozen). A program has none
// of that between steps, and it keeps activations channels-last from the first step to the last
// whatever the input's layout.
#include "checks.h"
#include "ops.h"
#include "output_arena.h"
#include "packed_weights.h"

#include <ATen/ops/conv2d.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/hardsigmoid.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/hardtanh.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fastdw_cpu {
namespace {

// y = act(y) in place, by the ATen op torch's own activation module runs (nn.ReLU6 is
// hardtanh(0, 6)), so a frozen stem computes what the module-by-module forward does.
void activate_(at::Tensor& y, Act act) {
  switch (act) {
    case kNone: return;
    case kRelu: at::relu_(y); return;
    case kRelu6: at::hardtanh_(y, 0, 6); return;
    case kHardswish: at::hardswish_(y); return;
    case kHardsigmoid: at::hardsigmoid_(y); return;
    case kSilu: at::silu_(y); return;
  }
}

// The steps call the kernels as plain C++ functions, not through the dispatcher, so nothing
// unwraps a Python subclass, a functorch (vmap, grad, functionalize) wrapper or a lazily
// negated view on the way in, and inside a functorch transform even the outputs the kernels
// allocate would be such wrappers: refuse all of them.
void check_plain(const at::Tensor& x) {
  using c10::DispatchKey;
  const c10::DispatchKeySet wrappers({DispatchKey::Python, DispatchKey::PythonTLSSnapshot,
                                      DispatchKey::Functionalize, DispatchKey::FuncTorchBatched,
                                      DispatchKey::FuncTorchGradWrapper,
                                      DispatchKey::FuncTorchDynamicLayerFrontMode,
                                      DispatchKey::FuncTorchDynamicLayerBackMode,
                                      DispatchKey::FuncTorchVmapMode});
  TORCH_CHECK(!x.key_set().has_any(wrappers) && !x.is_neg() && !x.is_conj(),
              "x must be a plain tensor, not a tensor subclass, functorch wrapper or lazy view");
  TORCH_CHECK(!c10::impl::tls_local_dispatch_key_set().included_.has_any(wrappers),
              "a program cannot run inside a functorch transform (vmap, grad, functionalize) "
              "or a Python dispatch mode");
}

void check_matrix(const at::Tensor& x, const char* name, int64_t cols) {
  check_tensor(x, name);
  TORCH_CHECK(x.scalar_type() == at::kFloat, name, " must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == cols && x.size(0) >= 1, name, " must be (N >= 1, ",
              cols, "), got shape ", x.sizes());
}

class Program : public torch::CustomClassHolder {
 public:
  Program() = default;
  ~Program() override {
    for (auto& slot : spare_arenas_) delete slot.load();
  }
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;

  // Each add_* appends a step; its tensors are kept as given (snapshots or views), and
  // the kernel validates them, and x, on every run.

  // Conv2d with bias (BN folded in) + activation: the stem, and layers no other step covers.
  // A square conv with few taps (C_in*k*k <= kMaxConvTaps, groups 1: the stem) runs fastdw's
  // direct kernel, which reads x in any layout, so as the first step it takes the caller's x as
  // it is; its weight is kept contiguous, the layout whose packed copy is cached. Others (a
  // depthwise conv with a channel multiplier) run ATen's conv2d.
  void add_conv(at::Tensor weight, at::Tensor bias, int64_t stride, int64_t padding,
                int64_t dilation, int64_t groups, const std::string& act) {
    const Act a = parse_act(act);
    check_range(stride, "stride", 1);
    check_range(padding, "padding", 0);
    check_range(dilation, "dilation", 1);
    check_range(groups, "groups", 1);
    check_tensor(weight, "weight");
    TORCH_CHECK(weight.dim() == 4, "weight must be 4-D, got shape ", weight.sizes());
    if (groups == 1 && weight.size(2) == weight.size(3) &&
        weight.size(1) * weight.size(2) * weight.size(3) <= kMaxConvTaps) {
      if (steps_.empty()) first_step_takes_any_layout_ = true;
      const at::Tensor w = weight.contiguous();
      add("conv", [=](const at::Tensor& x) {
        return conv_bias_act(x, w, bias, stride, padding, dilation, act);
      });
      return;
    }
    add("conv", [=](const at::Tensor& x) {
      at::Tensor y = at::conv2d(x, weight, bias, stride, padding, dilation, groups);
      activate_(y, a);
      return y;
    });
  }

  void add_dwconv_bn_act(at::Tensor weight, at::Tensor scale, at::Tensor shift, int64_t stride,
                         int64_t padding, int64_t dilation, const std::string& act) {
    parse_act(act);
    add("dwconv_bn_act", [=](const at::Tensor& x) {
      return dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act);
    });
  }

  void add_pwconv_bn_act(at::Tensor weight, at::Tensor scale, at::Tensor shift,
                         const std::string& act) {
    parse_act(act);
    add("pwconv_bn_act", [=](const at::Tensor& x) {
      return pwconv_bn_act(x, weight, scale, shift, act, std::nullopt);
    });
  }

  // weights: the block's tensors in block_weights.h's order, unpacked once here; se_act and
  // se_gate: its squeeze-excite's inner activation and gate, as the op takes them.
  void add_inverted_residual(const c10::List<std::optional<at::Tensor>>& weights, int64_t stride,
                             const std::string& act, bool residual, const std::string& se_act,
                             const std::string& se_gate) {
    parse_act(act);
    parse_act(se_act, "se_act");
    parse_se_gate(se_gate);
    const BlockWeights w = block_weights(weights);
    add("inverted_residual", [=](const at::Tensor& x) {
      return inverted_residual(x, w, stride, act, residual, se_act, se_gate);
    });
  }

  // (N, C, H, W) -> (N, C): adaptive_avg_pool2d(x, 1) flattened.
  void add_global_avg_pool() {
    add("global_avg_pool", [](const at::Tensor& x) {
      check_feature_map(x, "x", /*allow_bf16=*/false);
      const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
      const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
      at::Tensor y = at::empty({N, C}, x.options());
      for (int64_t n = 0; n < N; ++n)
        column_means(xc.data_ptr<float>() + n * HW * C, HW, C, y.data_ptr<float>() + n * C);
      return y;
    });
  }

  // (N, K) -> act(x W^T + b), (N, M): pwconv_bn_act on x as (N, K, 1, 1) with unit scale.
  void add_linear(at::Tensor weight, at::Tensor bias, const std::string& act) {
    parse_act(act);
    check_shape(weight, "weight", at::kFloat, {-1, -1});
    check_shape(bias, "bias", at::kFloat, {weight.size(0)});
    const at::Tensor scale = at::ones_like(bias);
    add("linear", [=](const at::Tensor& x) {
      check_matrix(x, "x", weight.size(1));
      const at::Tensor y = pwconv_bn_act(x.reshape({x.size(0), x.size(1), 1, 1}), weight, scale,
                                         bias, act, std::nullopt);
      return y.reshape({x.size(0), weight.size(0)});
    });
  }

  // y = act(x), for an activation no other step could absorb: in place on the step before's
  // output, on a copy when it is the first step (its input is the caller's tensor).
  void add_act(const std::string& act) {
    const Act a = parse_act(act);
    const bool first = steps_.empty();
    add("act", [a, first](const at::Tensor& x) {
      at::Tensor y = first ? x.clone() : x;
      activate_(y, a);
      return y;
    });
  }

  // The steps in order, for repr and tests.
  std::vector<std::string> steps() const { return names_; }

  // Declares that every tensor the steps hold is a private snapshot nothing else can write
  // (freeze()): runs then use their packed weights with no byte comparison (TrustSnapshots).
  void hold_snapshots() { snapshots_ = true; }

  // Runs every step. Steps pass channels-last activations (a first conv step reads a 4-D x in
  // its own layout; otherwise x is made channels-last first), and a 4-D result comes back in x's
  // layout (fastdw's rule: channels-last in, channels-last out; otherwise NCHW).
  at::Tensor run(const at::Tensor& x) const {
    TORCH_CHECK(!steps_.empty(), "the program has no steps");
    check_tensor(x, "x");
    check_plain(x);
    // A program computes in float32 throughout: autocast would turn the ATen steps' outputs
    // (a grouped conv) to bf16/fp16, which the next kernel refuses.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const ArenaLease arena(*this);
    std::optional<TrustSnapshots> trust;
    if (snapshots_) trust.emplace();
    at::Tensor y = x.dim() == 4 && !first_step_takes_any_layout_
                       ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
    for (size_t i = 0; i < steps_.size(); ++i) {
      // The last step's output is the result: a new tensor, not an arena buffer.
      const UseArena use(i + 1 < steps_.size() ? arena.get() : nullptr);
      try {
        y = steps_[i](y);
      } catch (c10::Error& err) {
        err.add_context("in step " + std::to_string(i) + " (" + names_[i] + ") of the program");
        throw;
      }
    }
    if (y.dim() == 4 && output_memory_format(x) == at::MemoryFormat::Contiguous)
      y = y.contiguous();
    // A last step that works in place (an act step) would hand out an arena buffer.
    if (arena.get()->holds(y)) y = y.clone(at::MemoryFormat::Preserve);
    return y;
  }

 private:
  using Step = std::function<at::Tensor(const at::Tensor&)>;

  void add(const char* name, Step step) {
    names_.emplace_back(name);
    steps_.push_back(std::move(step));
  }

  // One arena per run in progress: a run takes a spare one, or a new one, and puts it back
  // when it ends, so runs from several threads at once never share buffers. The spares sit in
  // atomic slots rather than behind a lock: a lock another thread held at fork() would stay
  // held in the child forever.
  class ArenaLease {
   public:
    explicit ArenaLease(const Program& program) : program_(program) {
      for (auto& slot : program_.spare_arenas_) {
        arena_.reset(slot.exchange(nullptr));
        if (arena_) break;
      }
      if (!arena_) arena_ = std::make_unique<OutputArena>();
      arena_->restart();
    }
    ~ArenaLease() {
      for (auto& slot : program_.spare_arenas_) {
        OutputArena* empty = nullptr;
        if (slot.compare_exchange_strong(empty, arena_.get())) {
          arena_.release();
          return;
        }
      }  // every slot taken: this one is freed
    }
    ArenaLease(const ArenaLease&) = delete;
    ArenaLease& operator=(const ArenaLease&) = delete;
    OutputArena* get() const { return arena_.get(); }

   private:
    const Program& program_;
    std::unique_ptr<OutputArena> arena_;
  };

  std::vector<Step> steps_;
  std::vector<std::string> names_;
  bool first_step_takes_any_layout_ = false;
  bool snapshots_ = false;
  // Spare arenas (or null), enough for a few threads running the program at once.
  mutable std::array<std::atomic<OutputArena*>, 4> spare_arenas_{};
};

}  // namespace
}  // namespace fastdw_cpu

TORCH_LIBRARY_FRAGMENT(fastdw_cpp, m) {
  using fastdw_cpu::Program;
  m.class_<Program>("Program")
      .def(torch::init<>())
      .def("add_conv", &Program::add_conv)
      .def("add_dwconv_bn_act", &Program::add_dwconv_bn_act)
      .def("add_pwconv_bn_act", &Program::add_pwconv_bn_act)
      .def("add_inverted_residual", &Program::add_inverted_residual)
      .def("add_global_avg_pool", &Program::add_global_avg_pool)
      .def("add_linear", &Program::add_linear)
      .def("add_act", &Program::add_act)
      .def("steps", &Program::steps)
      .def("hold_snapshots", &Program::hold_snapshots)
      .def("run", &Program::run);
}
