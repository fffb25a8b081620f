// Reuse of large CPU output buffers across calls (natten_ext.cpp's outputs).
//
// MLX's CPU allocator keeps at most 32 MiB of freed buffers by default
// (mx.set_cache_limit), so each call that writes a large output gets fresh
// pages from the OS and takes their faults while the kernel writes: 16,384 of
// them for the 67 MB output of the B8 64x64 H8 D64 vision forward, 48 MiB of
// dq/dk/dv for the 32^3 3-D backward (docs/cpu-kernels.md).  This pool keeps
// the buffers of our outputs of at least kMinBytes after their arrays die, up
// to a byte limit (NATTEN_CPU_OUTPUT_POOL_MB, default 512; 0 turns it off),
// and hands one to the next output of the same size.
//
// The buffers stay MLX's own (allocator::malloc).  The pool holds the owning
// allocator::Data; an output array gets a non-owning Data over the same buffer
// whose deleter gives it back when MLX drops the last reference (after any
// buffer donation).  Dropping a pooled buffer destroys the owning Data, so MLX
// frees it as it would have.
//
// Large outputs also start on a 64-byte boundary (place()): MLX's CPU buffers
// begin 24 bytes past one (a size header after malloc's own), and the blocked
// forward streams aligned f32 outputs past the cache (non-temporal stores, no
// read-for-ownership) but must read-modify-write misaligned ones.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/array.h"

namespace natten_ext {

class OutputPool {
 public:
  static constexpr size_t kMinBytes = size_t(8) << 20;

  // Never destroyed: deleters of arrays alive at exit still call give_back.
  static OutputPool& get() {
    static OutputPool* pool = new OutputPool();
    return *pool;
  }

  mlx::core::allocator::Data take(size_t n) {
    namespace al = mlx::core::allocator;
    if (n < kMinBytes) return al::malloc(n);
    std::shared_ptr<al::Data> owner;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (limit_ > 0) {
        auto it = free_.find(n);
        if (it != free_.end() && !it->second.empty()) {
          owner = std::move(it->second.back());
          it->second.pop_back();
          held_ -= n;
          ++hits_;
        } else {
          ++misses_;
        }
      }
    }
    if (!owner) owner = std::make_shared<al::Data>(al::malloc(n));  // outside the lock: it may map pages
    al::Buffer buf = owner->buffer();
    return al::Data(buf, [owner, n](al::Buffer) { OutputPool::get().give_back(owner, n); });
  }

  // Give output o its buffer: pooled, and 64-byte aligned through the array's
  // byte offset when large (NATTEN_CPU_OUTPUT_ALIGN=0: as MLX allocates).
  void place(mlx::core::array& o) {
    const size_t n = o.nbytes();
    if (n < kMinBytes || !align_) {
      o.set_data(take(n));
      return;
    }
    mlx::core::allocator::Data d = take(n + kAlign);
    const auto p = reinterpret_cast<uintptr_t>(d.buffer().raw_ptr());
    int64_t off = int64_t((kAlign - p % kAlign) % kAlign);  // 40 today: malloc's 16-byte alignment + 8
    if (off % int64_t(o.itemsize()) != 0) off = 0;  // an element must not straddle: keep MLX's placement
    mlx::core::Strides st(o.ndim(), 1);
    for (int i = int(o.ndim()) - 2; i >= 0; --i) st[i] = st[i + 1] * o.shape(i + 1);
    mlx::core::array::Flags fl;
    fl.contiguous = fl.row_contiguous = true;
    size_t longest = 1;
    for (auto e : o.shape()) longest = std::max(longest, size_t(e));
    fl.col_contiguous = o.size() <= 1 || o.size() == longest;
    o.set_data(std::move(d), o.size(), std::move(st), fl, off);
  }

  // Bytes held when the limit is lowered past them are released at once.
  void set_limit(size_t bytes) {
    std::vector<std::shared_ptr<mlx::core::allocator::Data>> drop;
    std::lock_guard<std::mutex> lk(mu_);
    limit_ = bytes;
    for (auto it = free_.begin(); it != free_.end() && held_ > limit_; ++it)
      while (!it->second.empty() && held_ > limit_) {
        drop.push_back(std::move(it->second.back()));
        it->second.pop_back();
        held_ -= it->first;
      }
  }

  struct Stats {
    size_t hits, misses, held, limit;
  };
  Stats stats() {
    std::lock_guard<std::mutex> lk(mu_);
    return {hits_, misses_, held_, limit_};
  }

 private:
  OutputPool() {
    const char* e = std::getenv("NATTEN_CPU_OUTPUT_POOL_MB");
    long mb = e && *e ? std::strtol(e, nullptr, 10) : 512;
    limit_ = mb > 0 ? size_t(mb) << 20 : 0;
    const char* a = std::getenv("NATTEN_CPU_OUTPUT_ALIGN");
    align_ = !(a && a[0] == '0');
  }

  static constexpr size_t kAlign = 64;

  void give_back(const std::shared_ptr<mlx::core::allocator::Data>& owner, size_t n) {
    std::lock_guard<std::mutex> lk(mu_);
    if (held_ + n > limit_) return;  // the deleter's copy was the last owner: MLX frees it
    free_[n].push_back(owner);
    held_ += n;
  }

  std::mutex mu_;
  std::map<size_t, std::vector<std::shared_ptr<mlx::core::allocator::Data>>> free_;
  size_t held_ = 0, limit_ = 0, hits_ = 0, misses_ = 0;
  bool align_ = true;
};

}  // namespace natten_ext
