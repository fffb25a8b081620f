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
#pragma once

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "mlx/allocator.h"

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
  }

  void give_back(const std::shared_ptr<mlx::core::allocator::Data>& owner, size_t n) {
    std::lock_guard<std::mutex> lk(mu_);
    if (held_ + n > limit_) return;  // the deleter's copy was the last owner: MLX frees it
    free_[n].push_back(owner);
    held_ += n;
  }

  std::mutex mu_;
  std::map<size_t, std::vector<std::shared_ptr<mlx::core::allocator::Data>>> free_;
  size_t held_ = 0, limit_ = 0, hits_ = 0, misses_ = 0;
};

}  // namespace natten_ext
