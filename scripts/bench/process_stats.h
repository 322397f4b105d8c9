// What the benchmarks report about their own process.
#pragma once

#include <fstream>
#include <string>

namespace grpo::bench {

// Resident set size of this process in MB (VmRSS of /proc/self/status), 0 when unreadable.
inline double rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

}  // namespace grpo::bench
