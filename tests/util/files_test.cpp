// File helpers: directory replacement by renames, with names a shell would choke on.
#include "util/files.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "util/error.h"

namespace fs = std::filesystem;
using namespace grpo;

namespace {
std::string scratch(const std::string& name) {
  std::string dir = (fs::temp_directory_path() / ("grpo_files_test_" + std::to_string(::getpid()))).string();
  make_directories(dir);
  return dir + "/" + name;
}
}  // namespace

TEST(ReplaceDirectory, ReplacesAnExistingDirectoryWhoseNameHasQuotesAndSpaces) {
  const std::string to = scratch("run 'a' \"b\" $(x)/checkpoint-1"), from = to + ".tmp";
  make_directories(to);
  write_file_atomic(to + "/weights", "old");
  write_file_atomic(to + "/only-in-old", "x");
  make_directories(from);
  write_file_atomic(from + "/weights", "new");
  replace_directory(from, to);
  EXPECT_EQ(read_file(to + "/weights"), "new");
  EXPECT_FALSE(file_exists(to + "/only-in-old"));
  EXPECT_FALSE(file_exists(from));
  EXPECT_FALSE(file_exists(to + ".old"));
  remove_tree(fs::path(to).parent_path().string());
  EXPECT_FALSE(file_exists(to));
}

TEST(ReplaceDirectory, MovesIntoPlaceWhenNothingIsThereAndFailsLoudlyWhenTheSourceIsMissing) {
  const std::string to = scratch("fresh"), from = to + ".tmp";
  make_directories(from);
  write_file_atomic(from + "/f", "1");
  replace_directory(from, to);
  EXPECT_EQ(read_file(to + "/f"), "1");
  try {
    replace_directory(from, to);  // `from` is gone now
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(from), std::string::npos) << e.what();
  }
  // The failed call left the previous directory in place.
  EXPECT_EQ(read_file(to + "/f"), "1");
  remove_tree(fs::path(to).parent_path().string());
}

TEST(RemoveTree, AbsentPathIsNotAnError) { EXPECT_NO_THROW(remove_tree(scratch("never-made/deeper"))); }
