#pragma once
// A dependency-free SVG of benchmark rows: output tokens/s against the largest batch
// reached (left) and against the memory budget (right), one series per KV mode.
#include <string>
#include <vector>

#include "bench/bench_runner.h"

namespace batchmax::bench {

std::string throughput_svg(const std::vector<BenchRow>& rows, const std::string& title);
// Throws batchmax::Error when the file cannot be written.
void write_throughput_svg(const std::vector<BenchRow>& rows, const std::string& title,
                          const std::string& path);

}  // namespace batchmax::bench
