// End-to-end throughput of the engine on a real model: prefill and decode tokens/s at
// several batch sizes. Prints a table and, with --json, one JSON object per row.
//   bench_generate --model M.gguf [--prompt-tokens 512] [--gen-tokens 64] [--batch 1,8]
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "batchmax/engine.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

using namespace batchmax;

namespace {

// Plain English prose, repeated and shifted per request so prompts differ.
const char* kText =
    "The river ran slowly through the valley, past the old mill and the fields where "
    "farmers had grown wheat for three hundred years. In the spring the water rose and "
    "covered the low meadows; in the autumn it fell back and left a band of dark silt "
    "that the children of the village used for building dams and castles. Nobody could "
    "remember when the bridge had been built, but everyone agreed it had been there "
    "longer than the church, and that the stones at its base came from a quarry that "
    "no longer existed. ";

std::vector<int32_t> make_prompt(const Tokenizer& tok, int n, int shift) {
  std::string text;
  std::vector<int32_t> ids;
  while (int(ids.size()) < n + shift + 1) {
    text += kText;
    ids = tok.encode(text, true, false);
  }
  return std::vector<int32_t>(ids.begin() + shift, ids.begin() + shift + n);
}

double run(Engine& e, const std::vector<Request>& reqs, int64_t* generated) {
  auto t0 = std::chrono::steady_clock::now();
  auto outs = e.generate(reqs);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  *generated = 0;
  for (const auto& o : outs) {
    if (o.finish_reason == "error") throw Error("request failed: " + o.error);
    *generated += int64_t(o.tokens.size());
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"batchmax end-to-end generation benchmark"};
  std::string model, json_path, batches = "1,8";
  int prompt_tokens = 512, gen_tokens = 64, threads = 0;
  bool q8 = false;
  app.add_option("--model", model, "GGUF model")->required();
  app.add_option("--prompt-tokens", prompt_tokens, "prompt length");
  app.add_option("--gen-tokens", gen_tokens, "tokens generated per request");
  app.add_option("--batch", batches, "comma-separated batch sizes");
  app.add_option("--threads", threads, "CPU threads (0: all)");
  app.add_option("--json", json_path, "append JSON rows to this file");
  app.add_flag("--q8", q8, "integer-dot decode matmuls (CPU)");
  CLI11_PARSE(app, argc, argv);
  try {
    std::vector<int> bs;
    std::stringstream ss(batches);
    for (std::string item; std::getline(ss, item, ',');) bs.push_back(std::stoi(item));
    int max_b = *std::max_element(bs.begin(), bs.end());
    EngineOptions eo;
    eo.model_path = model;
    eo.n_threads = threads;
    eo.max_batch = max_b;
    eo.step_tokens = std::max(512, prompt_tokens);
    eo.q8_activations = q8;
    auto engine = Engine::create(eo);
    const unsigned hw = threads > 0 ? unsigned(threads) : std::thread::hardware_concurrency();
    std::printf("%-6s %-8s %-8s %12s %12s %10s %10s\n", "batch", "prompt", "gen", "prefill tok/s",
                "decode tok/s", "prefill s", "decode s");
    std::ofstream js;
    if (!json_path.empty()) js.open(json_path, std::ios::app);
    for (int b : bs) {
      std::vector<Request> pre, full;
      for (int i = 0; i < b; ++i) {
        Request r;
        r.id = std::to_string(i);
        r.prompt = make_prompt(engine->tokenizer(), prompt_tokens, i * 7);
        r.sampling.ignore_eos = true;
        r.sampling.max_tokens = 1;
        pre.push_back(r);
        r.sampling.max_tokens = gen_tokens + 1;
        full.push_back(r);
      }
      int64_t g = 0;
      run(*engine, pre, &g);  // warm up: page in weights, size buffers
      double t_pre = run(*engine, pre, &g);
      double t_full = run(*engine, full, &g);
      double t_dec = std::max(1e-9, t_full - t_pre);
      double prefill_tps = double(b) * prompt_tokens / t_pre;
      double decode_tps = double(b) * gen_tokens / t_dec;
      std::printf("%-6d %-8d %-8d %12.1f %12.1f %10.3f %10.3f\n", b, prompt_tokens, gen_tokens,
                  prefill_tps, decode_tps, t_pre, t_dec);
      if (js) {
        nlohmann::json row = {{"bench", "generate"},       {"model", model},
                              {"batch", b},                {"prompt_tokens", prompt_tokens},
                              {"gen_tokens", gen_tokens},  {"threads", hw}, {"q8_activations", q8},
                              {"prefill_tok_s", prefill_tps}, {"decode_tok_s", decode_tps},
                              {"prefill_s", t_pre},        {"decode_s", t_dec}};
        js << row.dump() << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_generate: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
