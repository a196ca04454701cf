// batchmax info: what a GGUF file holds, read from its header only (no weights loaded).
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "core/error.h"
#include "format/gguf_reader.h"
#include "model/hparams.h"

namespace batchmax::cli {
namespace {

struct InfoArgs {
  std::string model;
  bool json = false;
};

const char* style_name(ChatStyle s) {
  switch (s) {
    case ChatStyle::ChatML: return "chatml";
    case ChatStyle::Llama3: return "llama3";
  }
  return "?";
}

// A float as JSON shows it best: 1e-05, not the double 9.999999747378752e-06.
double shortest(float f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.7g", f);
  return std::strtod(buf, nullptr);
}

int run_info(const InfoArgs& a) {
  check_model_path(a.model);
  auto file = gguf::File::open(a.model);
  const HParams hp = read_hparams(*file);  // throws for unknown architectures

  // The tokenizer and the chat template are reported even when they cannot be used.
  nlohmann::ordered_json tokj;
  try {
    auto tok = Tokenizer::from_gguf(*file);
    tokj["model"] = tok->model_name();
    tokj["pre"] = tok->pre_name();
    tokj["n_vocab"] = tok->n_vocab();
    tokj["bos_id"] = tok->bos_id();
    tokj["eos_id"] = tok->eos_id();
    if (tok->bos_id() >= 0) tokj["bos"] = tok->token_to_piece(tok->bos_id(), true);
    if (tok->eos_id() >= 0) tokj["eos"] = tok->token_to_piece(tok->eos_id(), true);
  } catch (const Error& e) {
    tokj["error"] = e.what();
  }
  std::string chat;
  if (!file->has("tokenizer.chat_template")) {
    chat = "none";
  } else {
    try {
      chat = style_name(ChatTemplate::from_gguf(*file).style());
    } catch (const Error& e) {
      chat = std::string("unsupported (") + e.what() + ")";
    }
  }

  struct TypeStat {
    int64_t count = 0, bytes = 0, elements = 0;
  };
  std::map<std::string, TypeStat> types;
  int64_t total_bytes = 0, total_params = 0;
  for (const auto& t : file->tensors()) {
    TypeStat& st = types[type_name(t.type)];
    st.count += 1;
    st.bytes += static_cast<int64_t>(t.n_bytes);
    st.elements += t.n_elements();
    total_bytes += static_cast<int64_t>(t.n_bytes);
    total_params += t.n_elements();
  }

  nlohmann::ordered_json j;
  j["file"] = a.model;
  j["gguf_version"] = file->version();
  j["file_bytes"] = file->file_size();
  j["architecture"] = hp.arch;
  j["name"] = hp.name;
  j["n_layer"] = hp.n_layer;
  j["n_embd"] = hp.n_embd;
  j["n_head"] = hp.n_head;
  j["n_head_kv"] = hp.n_head_kv;
  j["head_dim"] = hp.head_dim;
  j["n_ff"] = hp.n_ff;
  j["n_vocab"] = hp.n_vocab;
  j["context_length"] = hp.n_ctx_train;
  j["rope_theta"] = shortest(hp.rope_theta);
  j["rms_eps"] = shortest(hp.rms_eps);
  j["tied_embeddings"] = hp.tied_embeddings;
  j["n_tensors"] = file->tensors().size();
  j["n_params"] = total_params;
  j["weight_bytes"] = total_bytes;
  nlohmann::ordered_json tj = nlohmann::ordered_json::object();
  for (const auto& [name, st] : types)
    tj[name] = {{"tensors", st.count}, {"elements", st.elements}, {"bytes", st.bytes}};
  j["tensor_types"] = tj;
  j["tokenizer"] = tokj;
  j["chat_template"] = chat;
  j["kv_bytes_per_token"] = {{"f32", hp.kv_bytes_per_token(4)},
                             {"bf16", hp.kv_bytes_per_token(2)}};

  if (a.json) {
    std::cout << j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
    return 0;
  }
  auto row = [](const char* key, const std::string& value) {
    std::printf("%-18s %s\n", key, value.c_str());
  };
  auto num = [](int64_t v) { return std::to_string(v); };
  row("file", a.model + " (GGUF v" + num(file->version()) + ", " +
                  human_bytes(double(file->file_size())) + ")");
  row("architecture", hp.arch);
  row("name", hp.name.empty() ? "-" : hp.name);
  row("layers", num(hp.n_layer));
  row("embedding", num(hp.n_embd));
  row("heads", num(hp.n_head) + " (kv heads " + num(hp.n_head_kv) + ", head dim " +
                   num(hp.head_dim) + ")");
  row("feed-forward", num(hp.n_ff));
  row("vocabulary", num(hp.n_vocab));
  row("context length", num(hp.n_ctx_train));
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", hp.rope_theta);
  row("rope theta", buf);
  row("parameters", num(total_params) + " in " + num(int64_t(file->tensors().size())) +
                        " tensors" + (hp.tied_embeddings ? " (tied embeddings)" : ""));
  row("weights", human_bytes(double(total_bytes)) + " (" + num(total_bytes) + " bytes)");
  for (const auto& [name, st] : types)
    std::printf("  %-16s %5lld tensors  %s\n", name.c_str(), static_cast<long long>(st.count),
                human_bytes(double(st.bytes)).c_str());
  if (tokj.contains("error")) {
    row("tokenizer", "unsupported (" + tokj["error"].get<std::string>() + ")");
  } else {
    row("tokenizer", tokj["model"].get<std::string>() + " (pre " +
                         tokj["pre"].get<std::string>() + ")");
    auto special = [&](const char* key) {
      int id = tokj[std::string(key) + "_id"].get<int>();
      return id < 0 ? std::string("none")
                    : num(id) + " " + nlohmann::ordered_json(tokj.value(key, "")).dump(
                                          -1, ' ', false,
                                          nlohmann::ordered_json::error_handler_t::replace);
    };
    row("bos", special("bos"));
    row("eos", special("eos"));
  }
  row("chat template", chat);
  row("kv per token", human_bytes(double(hp.kv_bytes_per_token(4))) + " f32, " +
                          human_bytes(double(hp.kv_bytes_per_token(2))) + " bf16");
  return 0;
}

}  // namespace

Command add_info(CLI::App& root) {
  auto args = std::make_shared<InfoArgs>();
  CLI::App* cmd = root.add_subcommand("info", "describe a GGUF model file (without loading it)");
  add_model_flag(*cmd, args->model);
  cmd->add_flag("--json", args->json, "print JSON");
  return {cmd, [args] { return run_info(*args); }};
}

}  // namespace batchmax::cli
