// Small file helpers shared by the torch-free parts.
#pragma once

#include <string>

namespace grpo {

// Whole file as bytes; throws grpo::Error naming the path when it cannot be read.
std::string read_file(const std::string& path);

// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
// A reader never sees a half-written file, and a crash leaves the old file in place.
void write_file_atomic(const std::string& path, const std::string& bytes);

bool is_directory(const std::string& path);
bool file_exists(const std::string& path);
// Creates `path` and its parents; throws grpo::Error on failure.
void make_directories(const std::string& path);

}  // namespace grpo
