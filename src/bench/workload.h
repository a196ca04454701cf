#pragma once
// Benchmark workloads: N requests whose prompt and output lengths follow a fixed,
// uniform or normal distribution; prompts are random token ids or windows of a
// tokenised text, all drawn from one seed so every run of a workload is the same.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace batchmax::bench {

// A length distribution, written "2048", "uniform:1024:4096" or "normal:2048:256"
// (mean, standard deviation; samples are clipped to [1, mean + 4 std]).
struct LengthDist {
  enum class Kind { Fixed, Uniform, Normal };
  Kind kind = Kind::Fixed;
  int64_t a = 1, b = 1;  // fixed: a; uniform: [a, b]; normal: mean a, std b

  static LengthDist parse(const std::string& spec);  // throws batchmax::Error
  int64_t max() const;  // no sample is larger
  std::string str() const;
};

// Deterministic, library-independent random numbers (splitmix64), so a workload is
// the same on every platform and standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  double uniform01();                  // [0, 1)
  int64_t uniform(int64_t lo, int64_t hi);  // [lo, hi]
  double normal();                     // mean 0, std 1
  int64_t sample(const LengthDist& d);

 private:
  uint64_t state_;
};

struct WorkloadSpec {
  int64_t requests = 16;
  LengthDist input = LengthDist::parse("2048");
  LengthDist output = LengthDist::parse("64");
  std::string prompts = "random";  // "random" token ids or "text"
  uint64_t seed = 1;
  std::string name;                // empty: made from the fields

  std::string label() const;       // name, or e.g. "random n=16 in=2048 out=64"
};

struct Workload {
  std::string name;
  std::string input_len, output_len;  // the distributions, as LengthDist::str()
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int64_t> max_tokens;
  int64_t input_tokens() const;    // all prompts
  int64_t output_tokens() const;   // all requested outputs
};

// Random prompts take ids in [0, n_vocab). Text prompts are windows of `text` (the
// tokenised corpus, cycled as often as needed) at seeded offsets, after `bos` when
// bos >= 0. Throws when text prompts are asked for without text.
Workload make_workload(const WorkloadSpec& spec, int64_t n_vocab,
                       std::span<const int32_t> text = {}, int32_t bos = -1);

}  // namespace batchmax::bench
