#include "packed_weights.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <c10/core/Storage.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

namespace fastdw_cpu {
namespace {

enum Kind { kGemmB, kDwTaps };

using Pack = at::Tensor (*)(const at::Tensor&);

thread_local bool trusting_snapshots = false;

// Whether a and b hold the same n bytes; large blocks are compared by all threads (at batch 1
// the comparison of a late block's weights is as long as the block).
bool same_bytes(const void* a, const void* b, size_t n) {
  constexpr size_t kGrain = size_t{256} << 10;
  if (n < 2 * kGrain) return std::memcmp(a, b, n) == 0;
  std::atomic<bool> same{true};
  const auto* pa = static_cast<const char*>(a);
  const auto* pb = static_cast<const char*>(b);
  at::parallel_for(0, static_cast<int64_t>((n + kGrain - 1) / kGrain), 1,
                   [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end && same.load(std::memory_order_relaxed); ++i) {
      const size_t offset = static_cast<size_t>(i) * kGrain;
      if (std::memcmp(pa + offset, pb + offset, std::min(kGrain, n - offset)) != 0)
        same.store(false, std::memory_order_relaxed);
    }
  });
  return same.load();
}

// Immutable once made; a lookup takes a reference under the lock and compares outside it.
struct Entry {
  // While held weakly, that StorageImpl's address is not reused: a key found for a live weight
  // names that weight's own storage (and an expired one marks an entry to drop).
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  at::ScalarType dtype;
  std::vector<int64_t> sizes, strides;
  at::Tensor copy;    // the weight's bytes when packed (none under TrustSnapshots)
  at::Tensor packed;  // pack(copy), or pack(weight) under TrustSnapshots

  // Whether the weight still is what was packed: same layout, same bytes. The weight's memory
  // is one dense block (cached() checks), so its bytes are nbytes from its data pointer.
  bool serves(const at::Tensor& w) const {
    return w.scalar_type() == dtype && w.sizes() == sizes && w.strides() == strides &&
           (trusting_snapshots || (copy.defined() && same_bytes(w.const_data_ptr(),
                                                                copy.const_data_ptr(),
                                                                w.nbytes())));
  }
};

// A cap on live entries, far above a few models' weights; past it the cache starts over (the
// sweep below then drops every entry).
constexpr size_t kMaxEntries = 4096;

std::mutex cache_mutex;
std::map<std::tuple<const c10::StorageImpl*, int64_t, int>, std::shared_ptr<const Entry>> cache;

// fork() waits for a lookup or insertion in progress; parent and child go on with the lock free.
[[maybe_unused]] const int fork_handlers_registered = pthread_atfork(
    [] { cache_mutex.lock(); }, [] { cache_mutex.unlock(); }, [] { cache_mutex.unlock(); });

std::shared_ptr<const Entry> make_entry(const at::Tensor& w, Pack pack) {
  at::Tensor copy;
  if (!trusting_snapshots) {
    copy = at::empty_strided(w.sizes(), w.strides(), w.options());
    std::memcpy(copy.mutable_data_ptr(), w.const_data_ptr(), w.nbytes());
  }
  at::Tensor packed = pack(copy.defined() ? copy : w);
  return std::make_shared<const Entry>(Entry{.storage = w.storage().getWeakStorageImpl(),
                                             .dtype = w.scalar_type(), .sizes = w.sizes().vec(),
                                             .strides = w.strides().vec(),
                                             .copy = std::move(copy),
                                             .packed = std::move(packed)});
}

at::Tensor cached(const at::Tensor& w, Kind kind, Pack pack) {
  if (!w.has_storage() || w.numel() == 0 || !w.is_non_overlapping_and_dense()) return pack(w);
  const auto key = std::make_tuple(w.storage().unsafeGetStorageImpl(), w.storage_offset(),
                                   static_cast<int>(kind));
  std::shared_ptr<const Entry> found;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) found = it->second;
  }
  if (found && found->serves(w)) return found->packed;
  const std::shared_ptr<const Entry> entry = make_entry(w, pack);
  std::vector<std::shared_ptr<const Entry>> dropped;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(cache_mutex);
  for (auto it = cache.begin(); it != cache.end();) {
    if (!it->second->storage.expired() && cache.size() < kMaxEntries) {
      ++it;
      continue;
    }
    dropped.push_back(std::move(it->second));
    it = cache.erase(it);
  }
  // Two threads packing the same weight at once both store an entry that serves it.
  cache.insert_or_assign(key, entry);
  return entry->packed;
}

at::Tensor pack_gemm(const at::Tensor& w) {
  const at::Tensor w2 = w.reshape({w.size(0), w.size(1)});
  at::Tensor out = at::empty({gemm_packed_floats(w2.size(0), w2.size(1))}, w2.options());
  pack_gemm_b(w2.data_ptr<float>(), w2.stride(0), w2.stride(1), w2.size(0), w2.size(1),
              out.data_ptr<float>());
  return out;
}

// Always a copy: for 1x1 windows or one channel the transpose already is contiguous, and a view
// of a weight packed under TrustSnapshots would keep its storage alive in the cache.
at::Tensor pack_dw(const at::Tensor& w) {
  return w.reshape({w.size(0), w.size(2) * w.size(3)}).to(at::kFloat).t().clone(
      at::MemoryFormat::Contiguous);
}

}  // namespace

at::Tensor packed_gemm_weight(const at::Tensor& weight) {
  return cached(weight, kGemmB, pack_gemm);
}

at::Tensor packed_dw_taps(const at::Tensor& weight) { return cached(weight, kDwTaps, pack_dw); }

TrustSnapshots::TrustSnapshots() : previous_(trusting_snapshots) { trusting_snapshots = true; }

TrustSnapshots::~TrustSnapshots() { trusting_snapshots = previous_; }

}  // namespace fastdw_cpu
