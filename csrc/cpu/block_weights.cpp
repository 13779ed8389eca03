// The weights list of an inverted-residual block checked and unpacked (block_weights.h).
#include "block_weights.h"

#include <c10/util/Exception.h>

#include "checks.h"

#include <iterator>
#include <utility>

namespace fastdw_cpu {
namespace {

struct Name {
  const char* name;
  bool required;
};

constexpr Name kNames[] = {
#define FASTDW_NAME(name, required) {#name, required},
    FASTDW_BLOCK_WEIGHTS(FASTDW_NAME)
#undef FASTDW_NAME
};
constexpr size_t kCount = std::size(kNames);

// "expand_w?, expand_scale?, ..., se_b2?", for the message of a list of the wrong length.
std::string expected() {
  std::string s;
  for (const Name& n : kNames)
    s += std::string(s.empty() ? "" : ", ") + n.name + (n.required ? "" : "?");
  return s;
}

void take(std::optional<at::Tensor>& field, std::optional<at::Tensor> t, const char*, size_t) {
  field = std::move(t);
}

void take(at::Tensor& field, std::optional<at::Tensor> t, const char* name, size_t i) {
  TORCH_CHECK(t.has_value(), name, " is required (weights[", i, "]), got None");
  field = std::move(*t);
}

}  // namespace

BlockWeights block_weights(const c10::List<std::optional<at::Tensor>>& weights) {
  TORCH_CHECK(weights.size() == kCount, "weights must have ", kCount, " entries (", expected(),
              "; ? = may be None), got ", weights.size());
  BlockWeights w;
  size_t i = 0;
#define FASTDW_TAKE(name, required) \
  take(w.name, weights.get(i), #name, i); \
  ++i;
  FASTDW_BLOCK_WEIGHTS(FASTDW_TAKE)
#undef FASTDW_TAKE
  w.project_w = as_matrix(w.project_w);
  for (std::optional<at::Tensor>* conv : {&w.expand_w, &w.se_w1, &w.se_w2})
    if (*conv) **conv = as_matrix(**conv);
  return w;
}

std::vector<std::string> block_weight_names() {
  std::vector<std::string> names;
  for (const Name& n : kNames) names.emplace_back(n.name);
  return names;
}

}  // namespace fastdw_cpu
