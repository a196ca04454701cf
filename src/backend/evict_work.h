// The host side of the GPU eviction kernel (src/backend/cuda/evict_kernels.cu): a call's
// tasks grouped into launches whose entries fit the reserved key scratch, and each
// launch's tasks checked and packed into the int32 buffer the kernel reads. Plain C++,
// so the CPU build tests it.
//
// Layout of meta(): kEvictTaskInts ints per task that shrinks (n_entries > keep), in
// order: offset of its block ids in the buffer, n_entries, keep, mass row (-1: none),
// score kind, pool half-width, sinks, window, seed low, seed high, offset of its keys in
// the launch's key scratch, 0; then the block ids. Tasks that do not shrink are skipped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "backend/backend.h"

namespace batchmax {

constexpr int kEvictTaskInts = 12;

// Where each launch ends: launch i takes tasks [ends[i-1], ends[i]) (from 0). A launch
// holds at most `keys_per_launch` entries of shrinking tasks, or one task that alone
// holds more. Empty when no task shrinks.
std::vector<size_t> evict_launch_ends(std::span<const EvictTask> tasks, int64_t keys_per_launch);

struct EvictWork {
  int n_tasks = 0;   // tasks that shrink: CTAs of the launch
  int64_t keys = 0;  // entries of those tasks: the key scratch the launch needs
};

class EvictWorkPacker {
 public:
  // Packs one launch's tasks. Throws Error on a task the kernel cannot take: keep below
  // sinks + window, more entries than its blocks hold, block ids outside the pool, an
  // unknown score, h2o without slot mass in the pool, a mass-scored task without its F32
  // mass row in `mass`, an even pooling width.
  EvictWork pack(std::span<const EvictTask> tasks, const KVPoolView& pool, const Tensor* mass);
  // The buffer of the last pack() (empty when no task shrinks).
  std::span<const int32_t> meta() const { return meta_; }

 private:
  std::vector<int32_t> meta_;
};

}  // namespace batchmax
