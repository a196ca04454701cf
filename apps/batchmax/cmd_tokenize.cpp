// batchmax tokenize: the token count of a text (or the ids with --ids), with the same
// tokenisation `generate` uses for a plain prompt. Reads only the vocabulary.
#include <iostream>

#include "cli_common.h"
#include "core/error.h"
#include "format/gguf_reader.h"

namespace batchmax::cli {
namespace {

struct TokenizeArgs {
  std::string model, text, file;
  bool ids = false, special = false, no_bos = false;
};

int run_tokenize(const TokenizeArgs& a) {
  check_model_path(a.model);
  auto gguf_file = gguf::File::open(a.model);
  auto tok = Tokenizer::from_gguf(*gguf_file);
  const std::string text = a.file.empty() ? a.text : read_file(a.file);
  std::vector<int32_t> ids = tok->encode(text, !a.no_bos, a.special);
  if (!a.ids) {
    std::cout << ids.size() << "\n";
    return 0;
  }
  for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
  return 0;
}

}  // namespace

Command add_tokenize(CLI::App& root) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = root.add_subcommand("tokenize", "count (or list) the tokens of a text");
  add_model_flag(*cmd, args->model);
  auto* text = cmd->add_option("--text", args->text, "text to tokenise");
  auto* file = cmd->add_option("--file", args->file, "file whose contents to tokenise")
                   ->check(CLI::ExistingFile);
  text->excludes(file);
  file->excludes(text);
  cmd->callback([cmd, text, file] {
    if (text->count() == 0 && file->count() == 0)
      throw CLI::RequiredError("--text or --file");
  });
  cmd->add_flag("--ids", args->ids, "print the token ids instead of their count");
  cmd->add_flag("--special", args->special,
                "parse special-token text such as <|im_start|> into its token");
  cmd->add_flag("--no-bos", args->no_bos, "do not add BOS/EOS as the vocabulary asks");
  return {cmd, [args] { return run_tokenize(*args); }};
}

}  // namespace batchmax::cli
