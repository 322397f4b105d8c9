// `grpo init`, `grpo merge-adapter` and `grpo logprobs`.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "model/checkpoint.h"
#include "model/lora.h"
#include "util/error.h"
#include "util/files.h"
#include "util/jsonl.h"

namespace grpo::cli {

using json = nlohmann::json;

namespace {

bool stderr_is_tty() { return ::isatty(2); }

}  // namespace

int run_init(const InitArgs& args) {
  return torch_guard([&] {
    std::string text = read_file(args.config);
    ModelConfig config = parse_model_config(text, args.config);
    model::CausalLM m(config);
    model::init_weights(m, args.seed);
    model::SaveOptions opts;
    opts.dtype = model::parse_dtype_name(args.dtype);
    model::save_model(m, text, args.output, opts);
    int64_t n = 0;
    for (const auto& p : m.parameters()) n += p.numel();
    std::cerr << "grpo: wrote " << args.output << " (" << n << " parameters, seed " << args.seed << ")\n";
    return 0;
  });
}

int run_merge_adapter(const MergeAdapterArgs& args) {
  return torch_guard([&] {
    if (!model::is_adapter_dir(args.adapter)) throw Error(args.adapter + ": no adapter_config.json (not a LoRA adapter)");
    std::string base;
    model::read_adapter_config(args.adapter, &base);
    const std::string base_dir = model::resolve_adapter_base(args.adapter, base);
    auto m = model::load_model(args.adapter, {at::kFloat, at::kCPU});
    model::SaveOptions opts;
    opts.dtype = model::parse_dtype_name(args.dtype);
    model::save_model(*m, read_file(base_dir + "/config.json"), args.output, opts);  // merged: see save_model
    // The tokenizer and generation files: the adapter's own, else the base's.
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                          "chat_template.jinja"}) {
      for (const std::string& dir : {args.adapter, base_dir})
        if (file_exists(dir + "/" + f)) {
          write_file_atomic(args.output + "/" + f, read_file(dir + "/" + f));
          break;
        }
    }
    std::cerr << "grpo: wrote " << args.output << ": " << base_dir << " with the adapter of " << args.adapter
              << " folded in\n";
    return 0;
  });
}

int run_logprobs(const LogprobsArgs& args) {
  return torch_guard([&] {
    // Read and check every input row before loading the model: bad input fails fast.
    std::vector<std::vector<int64_t>> prompts, completions;
    for_each_jsonl_object(args.input, [&](const json& row, const std::string& where) {
      prompts.push_back(read_ids(row, "prompt_ids", where));
      completions.push_back(read_ids(row, "completion_ids", where));
      if (prompts.back().empty()) throw Error(where + ": prompt_ids is empty (the first completion token needs context)");
    });
    const at::Device device = parse_device(args.device);
    auto model = model::load_model(args.model, {model::parse_dtype_name(args.dtype), device});
    const int64_t V = model->config().vocab_size;
    for (size_t i = 0; i < prompts.size(); ++i)
      for (const auto* ids : {&prompts[i], &completions[i]})
        for (int64_t t : *ids)
          if (t < 0 || t >= V)
            throw Error(args.input + ": row " + std::to_string(i + 1) + ": token id " + std::to_string(t) +
                        " is outside the model's vocabulary [0, " + std::to_string(V) + ")");

    // Longest first, packed into batches of at most batch_tokens padded tokens.
    std::vector<size_t> order(prompts.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    auto len = [&](size_t i) { return (int64_t)(prompts[i].size() + completions[i].size()); };
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return len(a) > len(b); });
    std::vector<std::vector<float>> results(prompts.size());
    const int64_t depths = args.mtp ? model->config().num_nextn_predict_layers : 0;
    if (args.mtp && depths == 0) throw Error(args.model + ": --mtp: the model has no MTP module (num_nextn_predict_layers)");
    std::vector<std::vector<std::vector<float>>> mtp_results(prompts.size(), std::vector<std::vector<float>>(depths));
    auto floats = [](const at::Tensor& t) {
      at::Tensor c = t.to(at::kCPU).contiguous();
      return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
    };
    at::InferenceMode inference;
    const bool tty = stderr_is_tty();
    auto t0 = std::chrono::steady_clock::now();
    int64_t done_tokens = 0;
    for (size_t s = 0; s < order.size();) {
      size_t e = s + 1;
      while (e < order.size() && (int64_t)(e - s + 1) * len(order[s]) <= args.batch_tokens) ++e;
      std::vector<std::vector<int64_t>> bp, bc;
      for (size_t k = s; k < e; ++k) {
        bp.push_back(prompts[order[k]]);
        bc.push_back(completions[order[k]]);
      }
      model::CausalLM::CompletionOptions options;
      options.mtp_depths = depths;
      auto out = model->completion_forward(bp, bc, options);
      for (size_t k = s; k < e; ++k) {
        results[order[k]] = floats(out.logprobs[k - s]);
        for (int64_t d = 0; d < depths; ++d) mtp_results[order[k]][d] = floats(out.mtp_logprobs[d][k - s]);
        done_tokens += len(order[k]);
      }
      s = e;
      if (tty) {
        double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        fprintf(stderr, "\rgrpo logprobs: %zu/%zu sequences, %.0f tokens/s", s, order.size(), done_tokens / std::max(sec, 1e-9));
      }
    }
    if (tty) fprintf(stderr, "\n");
    std::string out;
    for (size_t i = 0; i < results.size(); ++i) {
      json row = {{"logprobs", json::array()}};
      for (float v : results[i]) row["logprobs"].push_back(static_cast<double>(v));
      if (args.mtp) {
        row["mtp_logprobs"] = json::array();
        for (const auto& d : mtp_results[i]) {
          json a = json::array();
          for (float v : d) a.push_back(static_cast<double>(v));
          row["mtp_logprobs"].push_back(a);
        }
      }
      out += row.dump() + "\n";
    }
    write_file_atomic(args.output, out);
    return 0;
  });
}

}  // namespace grpo::cli
