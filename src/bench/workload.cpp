#include "bench/workload.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <sstream>

#include "core/error.h"

namespace batchmax::bench {
namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, sep);) out.push_back(item);
  return out;
}

int64_t parse_count(const std::string& s, const std::string& spec) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || s.empty())
    throw Error("length '" + spec + "': '" + s + "' is not a whole number");
  return v;
}

}  // namespace

LengthDist LengthDist::parse(const std::string& spec) {
  const std::vector<std::string> p = split(spec, ':');
  LengthDist d;
  if (p.size() == 1 || (p.size() == 2 && p[0] == "fixed")) {
    d.a = d.b = parse_count(p.back(), spec);
  } else if (p.size() == 3 && p[0] == "uniform") {
    d.kind = Kind::Uniform;
    d.a = parse_count(p[1], spec);
    d.b = parse_count(p[2], spec);
    if (d.b < d.a) throw Error("length '" + spec + "': the upper bound is below the lower");
  } else if (p.size() == 3 && p[0] == "normal") {
    d.kind = Kind::Normal;
    d.a = parse_count(p[1], spec);
    d.b = parse_count(p[2], spec);
    if (d.b < 0) throw Error("length '" + spec + "': negative standard deviation");
  } else {
    throw Error("length '" + spec +
                "' is not N, fixed:N, uniform:MIN:MAX or normal:MEAN:STD");
  }
  if (d.a < 1) throw Error("length '" + spec + "': lengths must be at least 1");
  return d;
}

int64_t LengthDist::max() const {
  switch (kind) {
    case Kind::Fixed: return a;
    case Kind::Uniform: return b;
    case Kind::Normal: return a + 4 * b;
  }
  return a;
}

std::string LengthDist::str() const {
  switch (kind) {
    case Kind::Fixed: return std::to_string(a);
    case Kind::Uniform: return "uniform:" + std::to_string(a) + ":" + std::to_string(b);
    case Kind::Normal: return "normal:" + std::to_string(a) + ":" + std::to_string(b);
  }
  return "?";
}

uint64_t Rng::next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double Rng::uniform01() { return double(next() >> 11) * 0x1.0p-53; }

int64_t Rng::uniform(int64_t lo, int64_t hi) {
  const uint64_t span = uint64_t(hi - lo) + 1;
  return lo + int64_t(next() % span);  // the modulo bias is irrelevant at these spans
}

double Rng::normal() {  // Box-Muller; 1 - u keeps the log finite
  const double u = 1.0 - uniform01(), v = uniform01();
  return std::sqrt(-2.0 * std::log(u)) * std::cos(2 * std::numbers::pi * v);
}

int64_t Rng::sample(const LengthDist& d) {
  switch (d.kind) {
    case LengthDist::Kind::Fixed: return d.a;
    case LengthDist::Kind::Uniform: return uniform(d.a, d.b);
    case LengthDist::Kind::Normal:
      return std::clamp<int64_t>(std::llround(double(d.a) + double(d.b) * normal()), 1, d.max());
  }
  return d.a;
}

std::string WorkloadSpec::label() const {
  if (!name.empty()) return name;
  return prompts + " n=" + std::to_string(requests) + " in=" + input.str() +
         " out=" + output.str();
}

int64_t Workload::input_tokens() const {
  int64_t n = 0;
  for (const auto& p : prompts) n += int64_t(p.size());
  return n;
}

int64_t Workload::output_tokens() const {
  int64_t n = 0;
  for (int64_t m : max_tokens) n += m;
  return n;
}

Workload make_workload(const WorkloadSpec& spec, int64_t n_vocab, std::span<const int32_t> text,
                       int32_t bos) {
  if (spec.requests < 1) throw Error("a workload needs at least one request");
  if (spec.prompts != "random" && spec.prompts != "text")
    throw Error("prompts must be 'random' or 'text', not '" + spec.prompts + "'");
  if (spec.prompts == "text" && text.empty())
    throw Error("text prompts need a tokenised text (and so a model with a tokenizer)");
  if (n_vocab < 1) throw Error("make_workload: empty vocabulary");
  Workload w;
  w.name = spec.label();
  w.input_len = spec.input.str();
  w.output_len = spec.output.str();
  // Lengths and contents come from separate streams: changing the prompt kind keeps
  // every request's lengths.
  Rng lengths(spec.seed), tokens(spec.seed ^ 0xA5A5A5A5DEADBEEFull);
  for (int64_t i = 0; i < spec.requests; ++i) {
    const int64_t n_in = lengths.sample(spec.input);
    w.max_tokens.push_back(lengths.sample(spec.output));
    std::vector<int32_t> p;
    p.reserve(size_t(n_in));
    if (spec.prompts == "random") {
      for (int64_t j = 0; j < n_in; ++j) p.push_back(int32_t(tokens.uniform(0, n_vocab - 1)));
    } else {
      if (bos >= 0) p.push_back(bos);
      size_t at = size_t(tokens.uniform(0, int64_t(text.size()) - 1));
      while (int64_t(p.size()) < n_in) {
        p.push_back(text[at]);
        at = (at + 1) % text.size();
      }
    }
    w.prompts.push_back(std::move(p));
  }
  return w;
}

}  // namespace batchmax::bench
