// batchmax generate: one prompt, one completion. stdout receives exactly the generated
// text (plus a final newline only when stdout is a terminal), or with --json one JSON
// object; a one-line timing summary goes to stderr unless --quiet.
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "core/error.h"

namespace batchmax::cli {
namespace {

struct GenerateArgs {
  EngineFlags engine;
  std::string prompt;
  bool chat = false;
  std::string system;
  SamplingParams sampling;
  bool json = false;
  bool quiet = false;
};

int run_generate(const GenerateArgs& a) {
  double load_s = 0;
  auto engine = load_engine(a.engine, &load_s);
  const Tokenizer& tok = engine->tokenizer();

  Request req;
  req.id = "0";
  req.sampling = a.sampling;
  if (a.chat) {
    const ChatTemplate* tmpl = engine->chat_template();
    if (!tmpl) throw Error(a.engine.model + ": the model has no chat template; drop --chat");
    std::vector<ChatMessage> messages;
    if (!a.system.empty()) messages.push_back({"system", a.system});
    messages.push_back({"user", a.prompt});
    req.prompt = tokenize_chat(tok, *tmpl, messages);
  } else {
    req.prompt = tokenize_text(tok, a.prompt);
  }
  if (req.prompt.empty()) throw UsageError("the prompt is empty (no tokens)");
  if (engine->context_length() > 0 &&
      static_cast<int64_t>(req.prompt.size()) >= engine->context_length())
    throw Error("the prompt has " + std::to_string(req.prompt.size()) +
                " tokens; the context holds " + std::to_string(engine->context_length()));

  const int64_t n_prompt = static_cast<int64_t>(req.prompt.size());
  std::vector<Output> outs = engine->generate({std::move(req)});
  if (outs.size() != 1) throw Error("engine returned " + std::to_string(outs.size()) + " outputs");
  const Output& out = outs[0];
  if (out.finish_reason == "error") throw Error(out.error.empty() ? "generation failed" : out.error);

  // Prefill ends with the first token; decode produces the rest.
  const int64_t n_gen = static_cast<int64_t>(out.tokens.size());
  const double prefill_s = out.first_token_s;
  const double decode_s = out.total_s > out.first_token_s ? out.total_s - out.first_token_s : 0;
  const double prefill_tps = prefill_s > 0 ? n_prompt / prefill_s : 0;
  const double decode_tps = decode_s > 0 && n_gen > 1 ? (n_gen - 1) / decode_s : 0;

  if (a.json) {
    nlohmann::ordered_json j;
    j["prompt_tokens"] = n_prompt;
    j["completion_tokens"] = n_gen;
    j["token_ids"] = out.tokens;
    j["text"] = out.text;
    j["finish_reason"] = out.finish_reason;
    j["timings"] = {{"load_s", load_s},         {"prefill_s", prefill_s},
                    {"decode_s", decode_s},     {"total_s", out.total_s},
                    {"prefill_tok_s", prefill_tps}, {"decode_tok_s", decode_tps}};
    std::cout << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
              << "\n";
  } else {
    std::cout << out.text;
    if (stdout_is_tty()) std::cout << "\n";
  }
  std::cout.flush();
  if (!a.quiet) {
    std::fprintf(stderr,
                 "batchmax: %lld prompt + %lld generated tokens (%s); load %.2fs, "
                 "prefill %.1f tok/s, decode %.1f tok/s\n",
                 static_cast<long long>(n_prompt), static_cast<long long>(n_gen),
                 out.finish_reason.c_str(), load_s, prefill_tps, decode_tps);
  }
  return 0;
}

}  // namespace

Command add_generate(CLI::App& root) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = root.add_subcommand("generate", "generate a completion for one prompt");
  add_engine_flags(*cmd, args->engine);
  cmd->add_option("-p,--prompt", args->prompt, "prompt text")->required();
  auto* chat = cmd->add_flag("--chat", args->chat,
                             "wrap the prompt as a user message in the model's chat template");
  cmd->add_option("--system", args->system, "system message (with --chat)")->needs(chat);
  SamplingParams& s = args->sampling;
  cmd->add_option("-n,--max-tokens", s.max_tokens, "tokens to generate at most")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--temperature", s.temperature, "0: greedy")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--top-k", s.top_k, "0: off")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", s.top_p, "1: off")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", s.seed, "sampling seed")->capture_default_str();
  cmd->add_option("--stop", s.stop, "stop string (repeatable); not part of the output");
  cmd->add_flag("--ignore-eos", s.ignore_eos, "keep generating past end-of-sequence tokens");
  cmd->add_flag("--json", args->json, "print one JSON object with tokens, text and timings");
  cmd->add_flag("-q,--quiet", args->quiet, "no timing summary on stderr");
  return {cmd, [args] { return run_generate(*args); }};
}

}  // namespace batchmax::cli
