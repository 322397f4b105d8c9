#include "trainer/reward_model_reward.h"

#include <c10/core/GradMode.h>

#include <condition_variable>
#include <deque>
#include <mutex>

#include "model/reward_model.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"
#include "trainer/prompt_format.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::trainer {
namespace {

class RewardModelReward : public rewards::Reward {
 public:
  explicit RewardModelReward(const nlohmann::json& o)
      : path_(o.value("path", "")), device_(o.value("device", "cpu")), max_batch_(o.value("max_batch", 32)) {
    if (path_.empty())
      throw std::invalid_argument("reward_model needs a model: the rewards key reward_model: DIR (or "
                                  "grpo reward-worker --reward-model DIR)");
    if (max_batch_ < 1) throw std::invalid_argument("reward_model: max_batch must be at least 1");
  }

  bool slow() const override { return true; }  // a forward pass: scored on its own threads beside rule rewards

  rewards::RewardResult score(const rewards::RewardItem& item) const override {
    std::call_once(loaded_, [&] { load(); });
    Example ex;
    ex.prompt = item.prompt;
    ex.where = "reward_model";
    Request req;
    req.ids = format_->prompt_ids(ex);
    std::vector<int64_t> c = format_->encode_text(item.completion);
    req.ids.insert(req.ids.end(), c.begin(), c.end());
    if ((int64_t)req.ids.size() > max_context_)
      throw std::runtime_error("prompt + completion are " + std::to_string(req.ids.size()) +
                               " tokens, past the reward model's context of " + std::to_string(max_context_));
    std::unique_lock<std::mutex> lk(mu_);
    pending_.push_back(&req);
    // Leader-follower batching: whoever finds the model idle runs a forward for everything queued.
    while (!req.done) {
      if (busy_) {
        cv_.wait(lk);
        continue;
      }
      busy_ = true;
      std::vector<Request*> batch;
      while (!pending_.empty() && (int64_t)batch.size() < max_batch_) {
        batch.push_back(pending_.front());
        pending_.pop_front();
      }
      lk.unlock();
      std::string error;
      std::vector<double> values;
      try {
        std::vector<std::vector<int64_t>> seqs;
        for (auto* r : batch) seqs.push_back(r->ids);
        at::NoGradGuard g;
        at::Tensor rw = rm_.rewards(seqs).to(at::kCPU);
        for (int64_t i = 0; i < rw.size(0); ++i) values.push_back(rw[i].item<double>());
      } catch (const std::exception& e) {
        error = e.what();
      }
      lk.lock();
      for (size_t i = 0; i < batch.size(); ++i) {
        batch[i]->error = error;
        if (error.empty()) batch[i]->value = values[i];
        batch[i]->done = true;
      }
      busy_ = false;
      cv_.notify_all();
    }
    if (!req.error.empty()) throw std::runtime_error(req.error);
    rewards::RewardResult out;
    out.reward = req.value;
    out.components["reward_model"] = req.value;
    return out;
  }

 private:
  struct Request {
    std::vector<int64_t> ids;
    double value = 0;
    std::string error;
    bool done = false;
  };

  void load() const {
    rm_ = model::load_reward_model(path_, {at::kFloat, at::Device(device_)});
    max_context_ = rm_.backbone->config().max_position_embeddings;
    const std::string tok_path = path_ + "/tokenizer.json";
    if (!file_exists(tok_path)) throw Error(path_ + ": no tokenizer.json beside the reward model");
    auto tok = std::make_shared<const text::Tokenizer>(text::Tokenizer::load(tok_path));
    DataSettings d;
    const std::string format_path = path_ + "/grpo_reward_model.json";
    if (file_exists(format_path)) {
      nlohmann::json f = parse_json(read_file(format_path), format_path);
      d.prompt_template = f.value("prompt_template", d.prompt_template);
      d.prompt_format = f.value("prompt_format", d.prompt_format);
      d.system_prompt = f.value("system_prompt", d.system_prompt);
    }
    std::shared_ptr<const text::ChatTemplate> chat;
    if (d.prompt_format == "chat") {
      auto t = text::ChatTemplate::load(path_);
      if (!t) throw Error(path_ + ": grpo_reward_model.json asks for the chat format, but there is no chat template");
      chat = std::make_shared<const text::ChatTemplate>(std::move(*t));
    }
    const int64_t eos = rm_.backbone->config().eos_token_id.value_or(0);
    format_ = std::make_unique<PromptFormat>(d, tok, chat, eos);
  }

  std::string path_, device_;
  int64_t max_batch_;
  mutable std::once_flag loaded_;
  mutable model::RewardModel rm_;
  mutable int64_t max_context_ = 0;
  mutable std::unique_ptr<PromptFormat> format_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  mutable std::deque<Request*> pending_;
  mutable bool busy_ = false;
};

}  // namespace

void register_reward_model_reward(rewards::RewardRegistry& registry) {
  if (registry.has("reward_model")) return;
  registry.add(
      "reward_model", [](const nlohmann::json& o) { return std::make_unique<RewardModelReward>(o); },
      "a trained reward model's score of prompt + completion (options: path, device, max_batch)");
}

}  // namespace grpo::trainer
