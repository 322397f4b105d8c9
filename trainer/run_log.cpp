#include "trainer/run_log.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <sstream>
#include <vector>

#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::trainer {

namespace {
std::string timestamp() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", std::localtime(&t));
  return buf;
}
}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600) snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

RunLog::RunLog(const std::string& out_dir, int64_t resume_step, int64_t logging_steps)
    : out_(out_dir), logging_steps_(std::max<int64_t>(1, logging_steps)), tty_(::isatty(2)) {
  if (out_.empty()) return;  // a silent log (the ranks other than 0)
  const std::string path = out_ + "/metrics.jsonl";
  std::vector<nlohmann::json> kept;
  if (resume_step >= 0 && file_exists(path)) {
    std::istringstream lines(read_file(path));
    std::string text, rewritten;
    for (std::string l; std::getline(lines, l);) {
      if (l.empty()) continue;
      nlohmann::json m;
      try {
        m = parse_json(l, "metrics");
      } catch (const Error&) {
        continue;  // a line cut by the kill that stopped the run
      }
      if (m.value("step", int64_t(0)) > resume_step) continue;
      rewritten += l + "\n";
      kept.push_back(std::move(m));
    }
    write_file_atomic(path, rewritten);
  } else {
    write_file_atomic(path, "");  // a fresh start: nothing of an earlier attempt stays
  }
  // The event files are rebuilt from the metrics kept.
  for (const std::string& name : list_directory(out_))
    if (name.rfind("events.out.tfevents.", 0) == 0) std::remove((out_ + "/" + name).c_str());
  events_ = std::make_unique<EventWriter>(out_);
  for (const auto& m : kept)
    for (const auto& [k, v] : m.items())
      if (v.is_number() && k != "step") events_->scalar(k, v.get<double>(), m.value("step", int64_t(0)));
  events_->flush();
  metrics_.open(path, std::ios::app);
  log_.open(out_ + "/train.log", std::ios::app);
  if (!metrics_ || !log_) throw Error(out_ + ": cannot write metrics.jsonl or train.log");
}

RunLog::~RunLog() { end_progress(); }

void RunLog::metrics(const nlohmann::json& m, int64_t step) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  if (out_.empty()) return;
  metrics_ << m.dump() << "\n";
  metrics_.flush();
  for (const auto& [k, v] : m.items())
    if (v.is_number() && k != "step") events_->scalar(k, v.get<double>(), step);
  events_->flush();
}

void RunLog::histogram(const std::string& tag, const std::vector<double>& values, int64_t step) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  if (out_.empty()) return;
  events_->histogram(tag, values, step);
  events_->flush();
}

void RunLog::text(const std::string& tag, const std::string& markdown, int64_t step) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  if (out_.empty()) return;
  events_->text(tag, markdown, step);
  events_->flush();
}

void RunLog::end_progress() {
  if (progress_open_) fprintf(stderr, "\n");
  progress_open_ = false;
}

void RunLog::line(const std::string& text) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  if (out_.empty()) return;
  end_progress();
  fprintf(stderr, "grpo train: %s\n", text.c_str());
  log_ << timestamp() << " " << text << "\n";
  log_.flush();
}

void RunLog::progress(const std::string& text, int64_t step) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  if (out_.empty()) return;
  log_ << timestamp() << " " << text << "\n";
  log_.flush();
  if (tty_) {
    fprintf(stderr, "\r\033[Kgrpo train: %s", text.c_str());
    progress_open_ = true;
  } else if (step % logging_steps_ == 0) {
    fprintf(stderr, "grpo train: %s\n", text.c_str());
  }
}

}  // namespace grpo::trainer
