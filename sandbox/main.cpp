// grpo-sandbox: run one command in the sandbox and print the result as one JSON object.
//   grpo-sandbox run [--timeout-s S] [--memory-mb M] [--stdin FILE] [--file NAME=PATH ...] -- CMD ARGS...
//   grpo-sandbox probe [--verbose]   what isolation this host supports (and the allowed system calls)
#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <sstream>

#include "sandbox/sandbox.h"
#include "sandbox/seccomp_filter.h"
#include "util/error.h"

namespace {
std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw grpo::Error(path + ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"grpo-sandbox: run untrusted programs isolated by the kernel"};
  app.require_subcommand(1);
  grpo::sandbox::Limits L;
  std::string stdin_file;
  std::vector<std::string> files, cmd;
  bool weaker = false;
  auto* run = app.add_subcommand("run", "run CMD ARGS... in a fresh sandbox; prints one JSON object");
  run->add_option("--timeout-s", L.timeout_s, "wall-clock limit")->capture_default_str();
  run->add_option("--cpu-s", L.cpu_s, "CPU-time limit (default: the timeout)");
  run->add_option("--memory-mb", L.memory_mb, "address-space limit")->capture_default_str();
  run->add_option("--max-processes", L.max_processes, "process limit")->capture_default_str();
  run->add_option("--max-output-bytes", L.max_output_bytes, "cap per output stream")->capture_default_str();
  run->add_option("--stdin", stdin_file, "file fed to the program's standard input");
  run->add_option("--file", files, "NAME=PATH: copy PATH into the working directory as NAME (repeatable)");
  run->add_flag("--allow-weaker-isolation", weaker, "run even when the host lacks a mechanism (namespaces, seccomp)");
  auto* pr = app.add_subcommand("probe", "print what isolation this host supports");
  bool verbose = false;
  pr->add_flag("--verbose", verbose, "also list the system calls the program's filter allows");
  // Everything after "--" is the command, dashes included.
  int split = argc;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--") {
      split = i;
      break;
    }
  for (int i = split + 1; i < argc; ++i) cmd.push_back(argv[i]);
  CLI11_PARSE(app, split, argv);
  if (*run && cmd.empty()) {
    std::cerr << "grpo-sandbox: error: run needs a command after --\n";
    return 2;
  }
  try {
    if (*pr) {
      std::cout << grpo::sandbox::probe().summary() << "\n";
      if (verbose) {
        std::cout << "allowed system calls:";
        for (const auto& name : grpo::sandbox::allowed_syscalls()) std::cout << " " << name;
        std::cout << "\n";
      }
      return grpo::sandbox::probe().complete() ? 0 : 1;
    }
    const auto& iso = grpo::sandbox::probe();
    if (!iso.complete()) std::cerr << "grpo-sandbox: " << iso.summary() << "\n";
    grpo::sandbox::Workspace ws;
    for (const auto& f : files) {
      auto eq = f.find('=');
      if (eq == std::string::npos) throw grpo::Error("--file " + f + ": expected NAME=PATH");
      ws.write(f.substr(0, eq), slurp(f.substr(eq + 1)));
    }
    grpo::sandbox::Options opt;
    opt.allow_weaker_isolation = weaker;
    auto r = grpo::sandbox::run(cmd, stdin_file.empty() ? "" : slurp(stdin_file), L, ws, opt);
    std::cout << grpo::sandbox::to_json(r) << "\n";
    return r.status == grpo::sandbox::Status::SandboxError ? 2 : 0;
  } catch (const std::exception& e) {
    std::cerr << "grpo-sandbox: error: " << e.what() << "\n";
    return 2;
  }
}
