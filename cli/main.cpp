// `grpo`: the command-line entry point. Parses arguments (CLI11), runs one subcommand, and turns
// every failure into a single line on stderr and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <iostream>

#include "cli/commands.h"
#include "trainer/recipe.h"
#include "util/error.h"

int main(int argc, char** argv) {
  using namespace grpo::cli;
  CLI::App app{"grpo: GRPO reinforcement-learning post-training (DeepSeek-V2/V3, Qwen2/2.5, Llama 3, Qwen3, Qwen3-MoE)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("grpo 0.1.0"));

  InitArgs init;
  auto* c_init = app.add_subcommand("init", "Write a randomly initialised checkpoint directory from a config.json");
  c_init->add_option("--config", init.config, "HF config.json (model_type deepseek_v2, deepseek_v3, qwen2, llama, qwen3 or qwen3_moe)")->required();
  c_init->add_option("--output", init.output, "output checkpoint directory")->required();
  c_init->add_option("--seed", init.seed, "random seed")->capture_default_str();
  c_init->add_option("--dtype", init.dtype, "on-disk dtype: float32|bfloat16")->capture_default_str();

  LaunchArgs launch;
  auto* c_launch = app.add_subcommand(
      "launch", "Start and supervise the local ranks of a distributed job, as torchrun does: "
                "grpo launch --nproc-per-node N -- grpo train RECIPE.yaml");
  c_launch->add_option("--nproc-per-node", launch.nproc_per_node, "ranks on this node (one GPU each on CUDA)")->capture_default_str();
  c_launch->add_option("--nnodes", launch.nnodes, "nodes in the job")->capture_default_str();
  c_launch->add_option("--node-rank", launch.node_rank, "this node's index in [0, nnodes)")->capture_default_str();
  c_launch->add_option("--master-addr", launch.master_addr, "address of rank 0's node (rendezvous)")->capture_default_str();
  c_launch->add_option("--master-port", launch.master_port, "rendezvous port on the master")->capture_default_str();
  c_launch->add_option("--grace-seconds", launch.grace_seconds,
                       "after one rank fails, how long the others get between SIGTERM and SIGKILL")->capture_default_str();
  c_launch->add_option("command", launch.command, "the command each rank runs (after --)")->required()->expected(-1);

  MergeAdapterArgs merge;
  auto* c_merge = app.add_subcommand("merge-adapter",
                                     "Fold a LoRA adapter into its base and write the full model (PEFT's merge_and_unload)");
  c_merge->add_option("--adapter", merge.adapter, "adapter directory (adapter_config.json, adapter_model.safetensors)")->required();
  c_merge->add_option("--output", merge.output, "output checkpoint directory")->required();
  c_merge->add_option("--dtype", merge.dtype, "on-disk dtype: float32|bfloat16")->capture_default_str();

  LogprobsArgs lp;
  auto* c_lp = app.add_subcommand("logprobs", "Per-token log-probabilities of completions given prompts");
  c_lp->add_option("--model", lp.model, "HF checkpoint directory")->required();
  c_lp->add_option("--input", lp.input, "JSONL, lines {\"prompt_ids\":[...],\"completion_ids\":[...]}")->required();
  c_lp->add_option("--output", lp.output, "JSONL, lines {\"logprobs\":[...]} in input order")->required();
  c_lp->add_option("--dtype", lp.dtype, "compute dtype: float32|bfloat16")->capture_default_str();
  c_lp->add_option("--device", lp.device, "cpu|cuda|cuda:N")->capture_default_str();
  c_lp->add_option("--batch-tokens", lp.batch_tokens, "padded tokens per forward batch")->capture_default_str();
  c_lp->add_flag("--mtp", lp.mtp,
                 "also \"mtp_logprobs\": per MTP module k, log p of completion tokens j >= max(0, k + 1 - prompt "
                 "length), predicted k + 1 places ahead");

  TokenizeArgs tk;
  auto* c_tk = app.add_subcommand("tokenize", "Print token ids of each input line (byte-level BPE tokenizer.json)");
  c_tk->add_option("--tokenizer", tk.tokenizer, "tokenizer.json or a directory holding one")->required();
  c_tk->add_option("--input", tk.input, "text file; each line is encoded on its own")->required();
  c_tk->add_flag("--no-special-tokens", tk.no_special_tokens, "do not add the post-processor's BOS/EOS");
  c_tk->add_flag("--decode", tk.decode, "input lines are space-separated ids; print their text");
  c_tk->add_flag("--jsonl", tk.jsonl, "input lines are JSON strings (for texts with newlines); with --decode, print JSON strings");

  ChatTemplateArgs ct;
  auto* c_ct = app.add_subcommand("chat-template", "Render conversations with a model's chat template (as transformers' apply_chat_template)");
  c_ct->add_option("--model", ct.model, "model or tokenizer directory (tokenizer_config.json chat_template, or chat_template.jinja)")->required();
  c_ct->add_option("--input", ct.input, "JSONL: a messages array per line, or {\"messages\": [...], \"tools\": [...], other template variables}")->required();
  c_ct->add_option("--output", ct.output, "write here instead of stdout");
  c_ct->add_flag("--add-generation-prompt", ct.add_generation_prompt, "end with the assistant's turn opener");
  c_ct->add_flag("--text", ct.text, "print the rendered text itself (default: one JSON string per line)");

  GenerateArgs gen;
  auto* c_gen = app.add_subcommand("generate", "Sample completions for prompts (local engine or --server)");
  c_gen->add_option("--model", gen.model, "HF checkpoint directory (local generation)");
  c_gen->add_option("--prompts", gen.prompts, "JSONL, lines {\"prompt\": text} or {\"prompt_ids\": [...]}")->required();
  c_gen->add_option("--output", gen.output, "JSONL, one line per completion, ordered by prompt and sample")->required();
  c_gen->add_option("-n", gen.n, "completions per prompt (G)")->capture_default_str();
  c_gen->add_option("--temperature", gen.temperature, "0 = greedy")->capture_default_str();
  c_gen->add_option("--top-p", gen.top_p, "nucleus mass kept, (0, 1]")->capture_default_str();
  c_gen->add_option("--top-k", gen.top_k, "keep the k most likely tokens (0 = all)")->capture_default_str();
  c_gen->add_option("--max-new-tokens", gen.max_new_tokens, "longest completion")->capture_default_str();
  c_gen->add_option("--seed", gen.seed, "random seed (samples depend only on seed, prompt and sample index)")->capture_default_str();
  c_gen->add_option("--stop", gen.stop, "stop string (repeatable); kept at the end of the completion");
  c_gen->add_option("--stop-token-id", gen.stop_token_ids, "stop token id (repeatable), besides eos");
  c_gen->add_flag("--ignore-eos", gen.ignore_eos, "do not stop at the model's eos_token_id");
  c_gen->add_option("--server", gen.server, "address of a grpo rollout-server (host:port)");
  c_gen->add_option("--timeout", gen.timeout, "deadline in seconds for the call to --server")->capture_default_str();
  c_gen->add_option("--dtype", gen.dtype, "compute dtype: float32|bfloat16")->capture_default_str();
  c_gen->add_option("--device", gen.device, "cpu|cuda|cuda:N")->capture_default_str();
  c_gen->add_option("--max-batch", gen.max_batch, "sequences decoded together")->capture_default_str();
  c_gen->add_option("--block-size", gen.block_size, "tokens per KV-cache block")->capture_default_str();
  c_gen->add_option("--kv-cache-mb", gen.kv_cache_mb, "KV-cache budget in MiB (0: 256 MiB on CPU, half the free GPU memory)")->capture_default_str();
  c_gen->add_flag("--speculative-mtp", gen.speculative_mtp, "speculative decoding with the model's MTP module as the draft");
  c_gen->add_option("--num-speculative-tokens", gen.num_speculative_tokens, "drafts per speculative step (the MTP module chained)")
      ->capture_default_str();
  c_gen->add_flag("--fp8", gen.fp8, "decode with FP8 copies of the weights (128x128 block scales; Hopper GPUs, bf16 models)");

  ServeArgs srv;
  auto* c_srv = app.add_subcommand("rollout-server", "Serve RolloutService (gRPC) for a model");
  c_srv->add_option("--model", srv.model, "HF checkpoint directory")->required();
  c_srv->add_option("--host", srv.host, "address to listen on")->capture_default_str();
  c_srv->add_option("--port", srv.port, "port (0 = any free port)")->capture_default_str();
  c_srv->add_option("--port-file", srv.port_file, "write the port here once listening");
  c_srv->add_option("--dtype", srv.dtype, "compute dtype: float32|bfloat16")->capture_default_str();
  c_srv->add_option("--device", srv.device, "cpu|cuda|cuda:N")->capture_default_str();
  c_srv->add_option("--max-batch", srv.max_batch, "sequences decoded together")->capture_default_str();
  c_srv->add_option("--block-size", srv.block_size, "tokens per KV-cache block")->capture_default_str();
  c_srv->add_option("--kv-cache-mb", srv.kv_cache_mb, "KV-cache budget in MiB (0: 256 MiB on CPU, half the free GPU memory)")->capture_default_str();
  c_srv->add_flag("--speculative-mtp", srv.speculative_mtp, "speculative decoding with the model's MTP module as the draft");
  c_srv->add_option("--num-speculative-tokens", srv.num_speculative_tokens, "drafts per speculative step (the MTP module chained)")
      ->capture_default_str();
  c_srv->add_flag("--fp8", srv.fp8, "decode with FP8 copies of the weights (128x128 block scales; Hopper GPUs, bf16 models)");

  auto server_security = [](CLI::App* c, SecurityArgs& s) {
    c->add_option("--tls-cert", s.tls_cert, "PEM certificate chain: serve TLS (with --tls-key)");
    c->add_option("--tls-key", s.tls_key, "PEM private key of --tls-cert");
    c->add_option("--token-file", s.token_file, "file holding a shared token callers must send (Bearer)");
    c->add_flag("--insecure", s.insecure, "allow a non-loopback --host without TLS or a token");
  };
  auto client_security = [](CLI::App* c, SecurityArgs& s) {
    c->add_option("--tls-ca", s.tls_ca, "PEM root certificate to verify the server's TLS certificate");
    c->add_option("--token-file", s.token_file, "file holding the shared token the server expects");
  };
  server_security(c_srv, srv.security);
  client_security(c_gen, gen.security);
  c_srv->add_option("--max-samples", srv.max_samples, "n per prompt a call may ask for")->capture_default_str();
  c_srv->add_option("--max-prompts", srv.max_prompts, "prompts per call")->capture_default_str();
  c_srv->add_option("--max-total-samples", srv.max_total_samples, "prompts x n per call")->capture_default_str();
  c_srv->add_option("--max-new-tokens", srv.max_new_tokens, "new tokens per completion (0 = the context)")->capture_default_str();
  c_srv->add_option("--max-prompt-bytes", srv.max_prompt_bytes, "bytes of one text prompt")->capture_default_str();

  TrainArgs tr;
  auto* c_tr = app.add_subcommand("train", "GRPO training from a recipe (R1-Zero loop)");
  c_tr->add_option("recipe", tr.recipe, "recipe YAML (see recipes/)")->required();
  c_tr->add_option("overrides", tr.overrides, "key=value, section.key=value or STAGE.key=value: recipe keys overridden (YAML values)");
  c_tr->add_option("--output", tr.output, "output directory (default runs/<recipe name>); must be empty unless --resume");
  c_tr->add_flag("--resume", tr.resume, "continue from the output directory's last checkpoint");
  c_tr->footer("Recipe keys (section: key = default, meaning):\n" + grpo::trainer::describe_recipe_keys());

  EvalArgs ev;
  auto* c_ev = app.add_subcommand("eval", "Benchmark a model: n samples per problem, scored as in training, pass@k");
  c_ev->add_option("--model", ev.model, "checkpoint directory (with tokenizer.json)");
  c_ev->add_option("--benchmark", ev.benchmark, "gsm8k | math500 | humaneval | mbpp | FILE.jsonl")->required();
  c_ev->add_option("--data-dir", ev.data_dir, "directory with the benchmark files")->capture_default_str();
  c_ev->add_option("-n", ev.n, "samples per problem")->capture_default_str();
  c_ev->add_option("-k", ev.k, "pass@k reported besides pass@1 (k <= n)")->capture_default_str();
  c_ev->add_option("--temperature", ev.temperature, "0 = greedy")->capture_default_str();
  c_ev->add_option("--top-p", ev.top_p)->capture_default_str();
  c_ev->add_option("--max-new-tokens", ev.max_new_tokens)->capture_default_str();
  c_ev->add_option("--prompt-format", ev.prompt_format, "r1 (R1-Zero template; code: answer in a fenced block) | plain | chat (the model's chat template)")->capture_default_str();
  c_ev->add_option("--limit", ev.limit, "the first N problems (0: all)")->capture_default_str();
  c_ev->add_option("--output", ev.output, "SUMMARY.json: benchmark, problems, n, pass@1, pass@k, mean_reward, ...");
  c_ev->add_option("--samples-output", ev.samples_output, "SAMPLES.jsonl: {problem, sample, completion, reward, correct} per sample");
  c_ev->add_option("--server", ev.server, "a grpo rollout-server to sample from instead of --model");
  c_ev->add_option("--dtype", ev.dtype)->capture_default_str();
  c_ev->add_option("--device", ev.device)->capture_default_str();
  c_ev->add_option("--seed", ev.seed)->capture_default_str();
  c_ev->add_option("--threads", ev.threads, "scoring threads")->capture_default_str();
  c_ev->add_option("--kv-cache-mb", ev.kv_cache_mb)->capture_default_str();
  client_security(c_ev, ev.security);

  RewardArgs rw;
  auto* c_rw = app.add_subcommand("reward", "Score completions with rewards (in process, or --workers)");
  c_rw->add_option("--name", rw.name, "reward or weighted combination: math | format | math,format:0.2 | ...")->capture_default_str();
  c_rw->add_option("--input", rw.input, "JSONL, lines {\"completion\": ..., \"reference\": ..., \"prompt\": ..., \"metadata\": {...}}")->required();
  c_rw->add_option("--output", rw.output, "JSONL, lines {\"reward\": x, \"components\": {...}, \"error\": null|\"...\"} in input order")->required();
  c_rw->add_option("--plugin", rw.plugins, "shared object with GRPO_REWARD_PLUGIN rewards (repeatable)");
  c_rw->add_option("--options", rw.options, "JSON object of per-reward options, e.g. {\"math\": {\"precision\": 4}}");
  c_rw->add_option("--workers", rw.workers, "comma-separated reward-worker addresses (host:port); default: in process");
  c_rw->add_option("--threads", rw.threads, "scoring threads in process")->capture_default_str();
  c_rw->add_option("--timeout", rw.timeout, "deadline in seconds of each call to a worker")->capture_default_str();

  RewardWorkerArgs rwk;
  auto* c_rwk = app.add_subcommand("reward-worker", "Serve RewardService (gRPC) for the named rewards");
  c_rwk->add_option("--host", rwk.host, "address to listen on")->capture_default_str();
  c_rwk->add_option("--port", rwk.port, "port (0 = any free port)")->capture_default_str();
  c_rwk->add_option("--port-file", rwk.port_file, "write the port here once listening");
  c_rwk->add_option("--rewards", rwk.rewards, "the rewards served and the default spec (requests may reweigh them)")->capture_default_str();
  c_rwk->add_option("--plugin", rwk.plugins, "shared object with GRPO_REWARD_PLUGIN rewards (repeatable)");
  c_rwk->add_option("--options", rwk.options, "JSON object of per-reward options, e.g. {\"code\": {\"timeout_s\": 2}}");
  c_rwk->add_option("--reward-model", rwk.reward_model, "serve this reward-model directory as the reward reward_model (batched forwards)");
  c_rwk->add_option("--reward-model-device", rwk.reward_model_device, "cpu | cuda | cuda:N for --reward-model")->capture_default_str();
  c_rwk->add_option("--threads", rwk.threads, "scoring threads for fast rewards, and as many for slow ones (code)")->capture_default_str();
  server_security(c_rwk, rwk.security);
  client_security(c_rw, rw.security);

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
    if (*c_merge) return run_merge_adapter(merge);
    if (*c_launch) return run_launch(launch);
    if (*c_lp) return run_logprobs(lp);
    if (*c_tk) return run_tokenize(tk);
    if (*c_ct) return run_chat_template(ct);
    if (*c_gen) return run_generate(gen);
    if (*c_srv) return run_rollout_server(srv);
    if (*c_rw) return run_reward(rw);
    if (*c_ev) return run_eval(ev);
    if (*c_tr) return run_train(tr);
    if (*c_rwk) {
      rwk.rewards_given = c_rwk->count("--rewards") > 0;
      return run_reward_worker(rwk);
    }
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
