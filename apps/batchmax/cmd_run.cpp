// batchmax run: an OpenAI Batch API input file in, the output file out. Every non-blank
// input line gets exactly one output line, in input order. Lines are written to
// "<output>.partial" as soon as they and every line before them are done (so a crash
// loses little), and the file is renamed to <output> at the end.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>

#include "cli_common.h"
#include "core/error.h"
#include "engine/batch_file.h"

namespace batchmax::cli {
namespace {

struct RunArgs {
  EngineFlags engine;
  std::string input, output;
  int default_max_tokens = 256;
  size_t max_line_bytes = batch::ParseOptions::kDefaultMaxLineBytes;
  bool progress = false;
};

// Output lines arrive out of order; they are written in order as soon as possible.
class OrderedWriter {
 public:
  OrderedWriter(const std::string& path, size_t n) : path_(path), slots_(n) {
    f_ = std::fopen(path.c_str(), "wb");
    if (!f_) throw Error("cannot write " + path + ": " + std::strerror(errno));
  }
  ~OrderedWriter() {
    if (f_) std::fclose(f_);
  }
  void put(size_t i, std::string line) {
    std::lock_guard<std::mutex> lock(mu_);
    if (slots_[i]) return;  // first answer wins
    slots_[i] = std::move(line);
    bool wrote = false;
    while (next_ < slots_.size() && slots_[next_]) {
      write(*slots_[next_]);
      slots_[next_].emplace();  // free the text (it is on disk) but stay marked done
      ++next_;
      wrote = true;
    }
    if (wrote && std::fflush(f_) != 0) fail();
  }
  bool done(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return i < next_ || slots_[i].has_value();
  }
  void close() {
    if (next_ != slots_.size()) throw Error("internal: output incomplete");
    if (std::fflush(f_) != 0 || fsync(fileno(f_)) != 0) fail();
    if (std::fclose(f_) != 0) {
      f_ = nullptr;
      fail();
    }
    f_ = nullptr;
  }

 private:
  void write(const std::string& s) {
    if (std::fwrite(s.data(), 1, s.size(), f_) != s.size()) fail();
  }
  [[noreturn]] void fail() { throw Error("cannot write " + path_ + ": " + std::strerror(errno)); }

  std::string path_;
  std::FILE* f_ = nullptr;
  std::mutex mu_;
  std::vector<std::optional<std::string>> slots_;
  size_t next_ = 0;
};

// "[ 12/100]  35.2 tok/s  ETA 1m05s" on one refreshed stderr line, at most 4 per second.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  void update(const Progress& p, bool force = false) {
    if (!enabled_) return;
    double t = now_s();
    latest_ = p;
    if (!force && t - last_ < 0.25) return;
    last_ = t;
    double tps = p.elapsed_s > 0 ? p.generated_tokens / p.elapsed_s : 0;
    std::string eta =
        p.done > 0 ? human_duration(p.elapsed_s * (p.total - p.done) / p.done) : "?";
    const int width = 24;
    int filled = p.total > 0 ? static_cast<int>(width * p.done / p.total) : width;
    std::fprintf(stderr, "\r[%s%s] %lld/%lld  %.1f tok/s  ETA %s   ",
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 static_cast<long long>(p.done), static_cast<long long>(p.total), tps,
                 eta.c_str());
    std::fflush(stderr);
    shown_ = true;
  }
  // Draws the final state (the throttle may have skipped it) and ends the line.
  void finish() {
    if (!shown_) return;
    update(latest_, true);
    std::fputc('\n', stderr);
  }

 private:
  bool enabled_;
  bool shown_ = false;
  double last_ = -1;
  Progress latest_;
};

// Request ids are line indices; anything else maps past the end.
size_t line_index(const std::string& id, size_t n) {
  size_t i = 0;
  if (id.empty() || id.size() > 18) return n;
  for (char c : id) {
    if (c < '0' || c > '9') return n;
    i = i * 10 + static_cast<size_t>(c - '0');
  }
  return i < n ? i : n;
}

std::string model_label(const std::string& path) {
  return std::filesystem::path(path).stem().string();
}

// Tokenises a valid line into its prompt; a problem becomes the line's error.
std::vector<int32_t> build_prompt(batch::BatchLine& line, const Engine& engine) {
  const Tokenizer& tok = engine.tokenizer();
  std::vector<int32_t> ids;
  try {
    if (line.endpoint == batch::Endpoint::ChatCompletions) {
      const ChatTemplate* tmpl = engine.chat_template();
      if (!tmpl) {
        line.error = {batch::code::kInvalidUrl,
                      "the model has no chat template; use /v1/completions"};
        return {};
      }
      ids = tokenize_chat(tok, *tmpl, line.messages);
    } else if (line.prompt_is_ids) {
      for (int32_t id : line.prompt_ids)
        if (id >= tok.n_vocab()) {
          line.error = {batch::code::kInvalidValue,
                        "'body.prompt' holds token id " + std::to_string(id) +
                            ", past the vocabulary (" + std::to_string(tok.n_vocab()) + ")"};
          return {};
        }
      ids = line.prompt_ids;
    } else {
      ids = tokenize_text(tok, line.prompt);
    }
  } catch (const std::exception& e) {
    line.error = {batch::code::kInvalidValue, e.what()};
    return {};
  }
  if (ids.empty()) {
    line.error = {batch::code::kInvalidValue, "the prompt is empty (no tokens)"};
    return {};
  }
  // At least one token must fit after the prompt; max_tokens is cut to what fits.
  const int64_t ctx = engine.context_length();
  const int64_t n = static_cast<int64_t>(ids.size());
  if (ctx > 0 && n >= ctx) {
    line.error = {batch::code::kContextLengthExceeded,
                  "the prompt has " + std::to_string(n) + " tokens; the model's context holds " +
                      std::to_string(ctx) + " (prompt plus at least one generated token)"};
    return {};
  }
  if (ctx > 0 && line.sampling.max_tokens > ctx - n)
    line.sampling.max_tokens = static_cast<int>(ctx - n);
  return ids;
}

int run_batch(const RunArgs& a) {
  const double t0 = now_s();
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  std::ifstream in(a.input, std::ios::binary);
  if (!in) throw Error("cannot open input " + a.input + ": " + std::strerror(errno));

  // Fail on an unwritable output before spending time on the model.
  const std::string partial = a.output + ".partial";
  if (std::FILE* probe = std::fopen(partial.c_str(), "wb")) {
    std::fclose(probe);
    std::remove(partial.c_str());
  } else {
    throw Error("cannot write " + partial + ": " + std::strerror(errno));
  }

  double load_s = 0;
  auto engine = load_engine(a.engine, &load_s);
  const std::string default_model = model_label(a.engine.model);

  // Parse every line first: errors are known before any generation starts.
  batch::ParseOptions popts;
  popts.default_max_tokens = a.default_max_tokens;
  popts.max_line_bytes = a.max_line_bytes;
  std::vector<batch::BatchLine> lines;
  std::string text;
  int64_t line_no = 0;
  size_t line_bytes = 0;
  // Bounded reads: a line over --max-line-bytes is reported, never held whole in memory.
  while (batch::read_line(in, text, popts.max_line_bytes, line_bytes)) {
    ++line_no;
    if (line_bytes > popts.max_line_bytes) {
      lines.push_back(batch::oversize_line(line_no, line_bytes, popts));
      continue;
    }
    if (batch::is_blank(text)) continue;
    lines.push_back(batch::parse_line(text, line_no, popts));
  }
  if (in.bad()) throw Error("cannot read input " + a.input);
  batch::mark_duplicate_ids(lines);

  std::vector<Request> requests;
  std::vector<int64_t> prompt_len(lines.size(), 0);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (!lines[i].ok()) continue;
    std::vector<int32_t> ids = build_prompt(lines[i], *engine);
    if (!lines[i].ok()) continue;
    prompt_len[i] = static_cast<int64_t>(ids.size());
    Request req;
    req.id = std::to_string(i);
    req.prompt = std::move(ids);
    req.sampling = lines[i].sampling;
    req.kv = lines[i].kv_settings(a.engine.kv);
    requests.push_back(std::move(req));
  }

  OrderedWriter writer(partial, lines.size());
  size_t n_failed = 0;
  auto put_error = [&](size_t i, const batch::LineError& err) {
    writer.put(i, batch::to_jsonl(batch::error_line(lines[i], int64_t(i) + 1, err)));
  };
  for (size_t i = 0; i < lines.size(); ++i)
    if (!lines[i].ok()) {
      put_error(i, *lines[i].error);
      ++n_failed;
    }

  int64_t total_prompt = 0, total_gen = 0;
  std::mutex stats_mu;
  auto on_output = [&](const Output& out) {
    size_t i = line_index(out.id, lines.size());
    if (i >= lines.size()) return;  // not one of ours
    std::lock_guard<std::mutex> lock(stats_mu);
    if (out.finish_reason == "error") {
      put_error(i, {batch::code::kEngineError, out.error.empty() ? "generation failed" : out.error});
      ++n_failed;
      return;
    }
    batch::Completion c{out.text, out.finish_reason, prompt_len[i],
                        static_cast<int64_t>(out.tokens.size())};
    total_prompt += c.prompt_tokens;
    total_gen += c.completion_tokens;
    writer.put(i, batch::to_jsonl(batch::success_line(lines[i], int64_t(i) + 1, c, created,
                                                      default_model)));
  };
  ProgressBar bar(a.progress || stderr_is_tty());
  std::mutex bar_mu;
  auto on_progress = [&](const Progress& p) {
    std::lock_guard<std::mutex> lock(bar_mu);
    bar.update(p);
  };

  std::string engine_failure;
  try {
    std::vector<Output> outs = engine->generate(std::move(requests), on_output, on_progress);
    // Outputs the engine did not report through the callback still count.
    for (const Output& o : outs)
      if (size_t i = line_index(o.id, lines.size()); i < lines.size() && !writer.done(i))
        on_output(o);
  } catch (const std::exception& e) {
    engine_failure = e.what();
  }
  bar.finish();
  // Whatever did not finish still gets its line, so that nothing is lost silently.
  for (size_t i = 0; i < lines.size(); ++i)
    if (!writer.done(i)) {
      put_error(i, {batch::code::kEngineError,
                    engine_failure.empty() ? "the engine returned no output for this request"
                                           : "the engine failed: " + engine_failure});
      ++n_failed;
    }
  writer.close();
  std::error_code ec;
  std::filesystem::rename(partial, a.output, ec);
  if (ec) throw Error("cannot rename " + partial + " to " + a.output + ": " + ec.message());

  const double secs = now_s() - t0;
  std::fprintf(stderr,
               "batchmax run: %zu lines (%zu ok, %zu failed); %lld prompt + %lld generated "
               "tokens in %s (load %.1fs, %.1f generated tok/s) -> %s\n",
               lines.size(), lines.size() - n_failed, n_failed,
               static_cast<long long>(total_prompt), static_cast<long long>(total_gen),
               human_duration(secs).c_str(), load_s,
               secs - load_s > 0 ? total_gen / (secs - load_s) : 0.0, a.output.c_str());
  if (!engine_failure.empty()) throw Error("the engine failed: " + engine_failure);
  return 0;
}

}  // namespace

Command add_run(CLI::App& root) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* cmd = root.add_subcommand(
      "run", "run an OpenAI Batch API input file (JSONL) and write the output file");
  add_engine_flags(*cmd, args->engine);
  cmd->add_option("-i,--input", args->input, "input JSONL (one request per line)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", args->output, "output JSONL (one line per input line)")
      ->required();
  cmd->add_option("--default-max-tokens", args->default_max_tokens,
                  "max_tokens for requests that give none")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-line-bytes", args->max_line_bytes,
                  "longest input line accepted; longer ones fail with request_too_large")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("--progress", args->progress,
                "show the progress bar even when stderr is not a terminal");
  return {cmd, [args] { return run_batch(*args); }};
}

}  // namespace batchmax::cli
