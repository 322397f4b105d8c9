// Fuzz target: tokenizer.json loading, then encoding and decoding with what loaded. The first byte
// picks how the input is used: as a whole tokenizer.json, or as text for a fixed byte-level BPE.
#include <cstdint>
#include <string>

#include "text/tokenizer.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string input(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] & 1) {
      auto tok = grpo::text::Tokenizer::from_json(input, "fuzz");
      auto ids = tok.encode("Hello, world! 123 \xe4\xbd\xa0\xe5\xa5\xbd <|endoftext|>");
      tok.decode(ids);
    } else {
      static const auto tok = grpo::text::Tokenizer::byte_level();
      auto ids = tok.encode(input);
      tok.decode(ids);
    }
  } catch (const grpo::Error&) {
  }
  return 0;
}
