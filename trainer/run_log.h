// What a run reports, and where: one JSON object per step in OUT/metrics.jsonl, every number also
// as a TensorBoard scalar (OUT/events.out.tfevents.*), and the console, whose every line also goes
// to OUT/train.log with a timestamp. On a terminal the per-step line is a progress line redrawn in
// place; elsewhere it is printed every `logging_steps` steps.
//
// Resuming from step S keeps the metrics of steps <= S, drops the later ones (they are about to be
// run again) and rewrites the TensorBoard events from what is kept, so no step appears twice.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainer/tensorboard.h"

namespace grpo::trainer {

// Thread-safe: a rollout thread (async_rollout) may report while the trainer does.
class RunLog {
 public:
  // resume_step < 0: a fresh run (metrics.jsonl starts empty). An empty out_dir makes a silent log
  // that writes nothing anywhere (the ranks of a data-parallel job other than rank 0).
  RunLog(const std::string& out_dir, int64_t resume_step, int64_t logging_steps);
  ~RunLog();

  void metrics(const nlohmann::json& m, int64_t step);
  // TensorBoard only: a distribution (Histograms tab) and markdown text (Text tab).
  void histogram(const std::string& tag, const std::vector<double>& values, int64_t step);
  void text(const std::string& tag, const std::string& markdown, int64_t step);
  // A line for the console and train.log ("grpo train: " is prepended).
  void line(const std::string& text);
  // The per-step line: redrawn in place on a terminal; printed every logging_steps steps otherwise.
  void progress(const std::string& text, int64_t step);

 private:
  void end_progress();
  std::string out_;
  int64_t logging_steps_;
  bool tty_;
  bool progress_open_ = false;
  std::ofstream metrics_, log_;
  std::unique_ptr<EventWriter> events_;
  std::recursive_mutex mutex_;
};

// "1:02:03" / "4:05" for a number of seconds.
std::string format_duration(double seconds);

}  // namespace grpo::trainer
