// `grpo`: the command-line entry point. Parses arguments (CLI11), runs one subcommand, and turns
// every failure into a single line on stderr and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <iostream>

#include "cli/commands.h"
#include "util/error.h"

int main(int argc, char** argv) {
  using namespace grpo::cli;
  CLI::App app{"grpo: GRPO reinforcement-learning post-training for DeepSeek-V2/V3-family models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("grpo 0.1.0"));

  InitArgs init;
  auto* c_init = app.add_subcommand("init", "Write a randomly initialised checkpoint directory from a config.json");
  c_init->add_option("--config", init.config, "HF config.json (model_type deepseek_v2 or deepseek_v3)")->required();
  c_init->add_option("--output", init.output, "output checkpoint directory")->required();
  c_init->add_option("--seed", init.seed, "random seed")->capture_default_str();
  c_init->add_option("--dtype", init.dtype, "on-disk dtype: float32|bfloat16")->capture_default_str();

  LogprobsArgs lp;
  auto* c_lp = app.add_subcommand("logprobs", "Per-token log-probabilities of completions given prompts");
  c_lp->add_option("--model", lp.model, "HF checkpoint directory")->required();
  c_lp->add_option("--input", lp.input, "JSONL, lines {\"prompt_ids\":[...],\"completion_ids\":[...]}")->required();
  c_lp->add_option("--output", lp.output, "JSONL, lines {\"logprobs\":[...]} in input order")->required();
  c_lp->add_option("--dtype", lp.dtype, "compute dtype: float32|bfloat16")->capture_default_str();
  c_lp->add_option("--device", lp.device, "cpu|cuda|cuda:N")->capture_default_str();
  c_lp->add_option("--batch-tokens", lp.batch_tokens, "padded tokens per forward batch")->capture_default_str();

  TokenizeArgs tk;
  auto* c_tk = app.add_subcommand("tokenize", "Print token ids of each input line (byte-level BPE tokenizer.json)");
  c_tk->add_option("--tokenizer", tk.tokenizer, "tokenizer.json or a directory holding one")->required();
  c_tk->add_option("--input", tk.input, "text file; each line is encoded on its own")->required();
  c_tk->add_flag("--no-special-tokens", tk.no_special_tokens, "do not add the post-processor's BOS/EOS");
  c_tk->add_flag("--decode", tk.decode, "input lines are space-separated ids; print their text");
  c_tk->add_flag("--jsonl", tk.jsonl, "input lines are JSON strings (for texts with newlines); with --decode, print JSON strings");

  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    for (auto* s : app.get_subcommands({})) known |= s->get_name() == argv[1];
    if (!known) {
      std::string names;
      for (auto* s : app.get_subcommands({})) names += (names.empty() ? "" : ", ") + s->get_name();
      std::cerr << "grpo: error: unknown command '" << argv[1] << "' (commands: " << names << ")\n";
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string sub;
    for (auto* s : app.get_subcommands()) sub = s->get_name() + ": ";
    std::cerr << "grpo: error: " << sub << e.what() << " (see grpo " << (sub.empty() ? "" : sub.substr(0, sub.size() - 2) + " ") << "--help)\n";
    return 2;
  }
  try {
    if (*c_init) return run_init(init);
    if (*c_lp) return run_logprobs(lp);
    if (*c_tk) return run_tokenize(tk);
  } catch (const grpo::Error& e) {
    std::cerr << "grpo: error: " << e.what() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "grpo: error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (auto nl = msg.find('\n'); nl != std::string::npos) msg = msg.substr(0, nl);
    std::cerr << "grpo: error: " << msg << "\n";
    return 1;
  }
  return 0;
}
