// batchmax: one program, subcommands generate, run, info, tokenize, eval, plan, bench and
// serve (builds with the server: BATCHMAX_SERVER).
// Exit status: 0 success, 1 failure (bad model file, I/O, engine), 2 usage error.
#include <iostream>

#include "cli_common.h"
#include "core/error.h"
#ifdef BATCHMAX_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

int main(int argc, char** argv) {
  using namespace batchmax::cli;
  CLI::App app{"batchmax: LLM inference with KV compression during prefill (Batch-Max), continuous batching, GGUF models",
               "batchmax"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "print help for every subcommand");
#ifdef BATCHMAX_HAVE_CUDA
  batchmax::register_cuda_backend();
#endif
  std::vector<Command> commands = {add_generate(app), add_run(app), add_info(app),
                                   add_tokenize(app), add_eval(app), add_plan(app),
                                   add_bench(app)};
#ifdef BATCHMAX_HAVE_SERVER
  commands.push_back(add_serve(app));
#endif
  set_command_line(argc, argv);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "batchmax: error: " << e.what() << "\n"
              << "run 'batchmax --help' (or 'batchmax <command> --help') for usage\n";
    return 2;
  }
  try {
    for (const auto& c : commands)
      if (c.app->parsed()) return c.run();
    return 2;  // unreachable: require_subcommand(1)
  } catch (const UsageError& e) {
    std::cerr << "batchmax: error: " << e.what() << "\n";
    return 2;
  } catch (const batchmax::Error& e) {
    std::cerr << "batchmax: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "batchmax: error: " << e.what() << "\n";
    return 1;
  }
}
