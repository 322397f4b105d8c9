// LibTorch errors carry a C++ backtrace and source locations; users need the first line only.
#pragma once

#include <c10/util/Exception.h>

#include <string>

namespace grpo {

// "torch: <first line of the message>".
inline std::string torch_message(const c10::Error& e) {
  std::string msg = e.what_without_backtrace();
  if (auto nl = msg.find('\n'); nl != std::string::npos) msg = msg.substr(0, nl);
  return "torch: " + msg;
}

}  // namespace grpo
