// Small file helpers shared by the torch-free parts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace grpo {

// Whole file as bytes; throws grpo::Error naming the path when it cannot be read.
// Only regular files (a FIFO, a device like /dev/zero or a directory is refused at once, never
// read), and at most `max_bytes` (the file's size is checked before reading).
constexpr int64_t kMaxReadFileBytes = int64_t(1) << 30;
std::string read_file(const std::string& path, int64_t max_bytes = kMaxReadFileBytes);

// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
// A reader never sees a half-written file, and a crash leaves the old file in place.
void write_file_atomic(const std::string& path, const std::string& bytes);

bool is_directory(const std::string& path);
bool file_exists(const std::string& path);
// Creates `path` and its parents; throws grpo::Error on failure.
void make_directories(const std::string& path);

// Removes `path` and everything under it; nothing to do when it is absent. Throws grpo::Error.
void remove_tree(const std::string& path);

// The names in `dir` (not . and ..), in no particular order; empty when it cannot be read.
std::vector<std::string> list_directory(const std::string& dir);

// Moves the finished directory `from` to `to` by renames, no copy. An existing `to` is first
// renamed to `to.old` and removed last, so at every moment one complete directory exists under
// `to` or `to.old` (a reader that finds `to` missing looks at `to.old`). Throws grpo::Error.
void replace_directory(const std::string& from, const std::string& to);

}  // namespace grpo
