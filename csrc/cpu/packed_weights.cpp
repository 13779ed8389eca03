#include "packed_weights.h"

#include <ATen/ops/empty.h>
#include <c10/core/Storage.h>

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace fastdw_cpu {
namespace {

enum Kind { kGemmB, kDwTaps };

// While an entry holds its storage weakly, that StorageImpl's address is not reused, so a key
// found for a live tensor always names that tensor's own storage.
struct Entry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const void* data;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  int64_t version;
  at::Tensor packed;

  bool matches(const at::Tensor& w) const {
    return data == w.data_ptr() && w.sizes().vec() == sizes &&
           w.strides().vec() == strides && w.scalar_type() == dtype && w._version() == version;
  }
};

// A cap on live entries, far above a few models' weights; past it the cache starts over (the
// sweep below then drops every entry).
constexpr size_t kMaxEntries = 4096;

std::mutex cache_mutex;
std::map<std::tuple<const c10::StorageImpl*, int64_t, int>, Entry> cache;

at::Tensor cached(const at::Tensor& w, Kind kind, at::Tensor (*pack)(const at::Tensor&)) {
  if (w.is_inference() || !w.has_storage()) return pack(w);
  const auto key = std::make_tuple(w.storage().unsafeGetStorageImpl(), w.storage_offset(),
                                   static_cast<int>(kind));
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    const auto it = cache.find(key);
    if (it != cache.end() && it->second.matches(w)) return it->second.packed;
  }
  // Packed outside the lock; two threads packing the same weight both store the same result.
  at::Tensor packed = pack(w);
  std::vector<at::Tensor> dropped;  // freed after the lock is released (declared before it)
  std::lock_guard<std::mutex> lock(cache_mutex);
  for (auto it = cache.begin(); it != cache.end();) {
    if (!it->second.storage.expired() && cache.size() < kMaxEntries) {
      ++it;
      continue;
    }
    dropped.push_back(std::move(it->second.packed));
    it = cache.erase(it);
  }
  cache.insert_or_assign(key, Entry{.storage = w.storage().getWeakStorageImpl(),
                                    .data = w.data_ptr(), .sizes = w.sizes().vec(),
                                    .strides = w.strides().vec(), .dtype = w.scalar_type(),
                                    .version = w._version(), .packed = packed});
  return packed;
}

at::Tensor pack_gemm(const at::Tensor& w) {
  const at::Tensor w2 = w.reshape({w.size(0), w.size(1)});
  at::Tensor out = at::empty({gemm_packed_floats(w2.size(0), w2.size(1))}, w2.options());
  pack_gemm_b(w2.data_ptr<float>(), w2.stride(0), w2.stride(1), w2.size(0), w2.size(1),
              out.data_ptr<float>());
  return out;
}

// Always a copy: for 1x1 windows or one channel the transpose is already contiguous, and a view
// of w would keep w's storage alive in the cache (never expiring).
at::Tensor pack_dw(const at::Tensor& w) {
  return w.reshape({w.size(0), w.size(2) * w.size(3)}).to(at::kFloat).t().clone(
      at::MemoryFormat::Contiguous);
}

}  // namespace

at::Tensor packed_gemm_weight(const at::Tensor& weight) {
  return cached(weight, kGemmB, pack_gemm);
}

at::Tensor packed_dw_taps(const at::Tensor& weight) { return cached(weight, kDwTaps, pack_dw); }

}  // namespace fastdw_cpu
