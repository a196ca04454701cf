// A CPU backend that keeps the KV cache's block tables, in host memory, the way a GPU
// backend keeps them on the device (Backend::keeps_block_tables): the tests check what
// the cache writes there and that runs with them match runs without.
#pragma once

#include <gtest/gtest.h>

#include <span>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace batchmax {

class TableKeepingBackend : public CpuBackend {
 public:
  TableKeepingBackend() : CpuBackend(CpuBackendOptions{}) {}
  bool keeps_block_tables() const override { return true; }
  void alloc_block_tables(KVPoolView& pool, int64_t n) override {
    tables.assign(size_t(n), -7);
    pool.tables = tables.data();
    pool.table_ints = n;
  }
  void write_block_tables(std::span<const int32_t> pairs, KVPoolView& pool) override {
    ASSERT_EQ(pool.tables, tables.data());
    for (size_t i = 0; i < pairs.size(); i += 2) {
      ASSERT_GE(pairs[i], 0);
      ASSERT_LT(pairs[i], pool.table_ints);
      ASSERT_GE(pairs[i + 1], 0);
      ASSERT_LT(pairs[i + 1], pool.n_blocks);
      tables[size_t(pairs[i])] = pairs[i + 1];
    }
    writes += int64_t(pairs.size() / 2);
  }
  std::vector<int32_t> tables;
  int64_t writes = 0;
};

}  // namespace batchmax
