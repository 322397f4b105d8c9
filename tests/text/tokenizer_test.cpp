// Byte-level BPE on hand-built tokenizer.json files whose answers are worked out by hand.
// (tokenizer_parity_test.py compares with HF `tokenizers` on real corpora.)
#include "text/tokenizer.h"

#include <gtest/gtest.h>

#include "common/byte_tokenizer.h"
#include "text/unicode.h"
#include "util/error.h"

using grpo::text::Tokenizer;
using grpo::testing::byte_char;
using grpo::testing::make_tokenizer;

namespace {

const char* kByteLevel = R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})";

}  // namespace

TEST(Tokenizer, MergesApplyLowestRankFirstLeftmostAmongEquals) {
  // ranks: (a,a)=256 (aa,a)=257 ; "aaa": (a,a) at 0 first -> [aa, a] -> (aa,a) -> [aaa]
  auto tok = Tokenizer::from_json(make_tokenizer(kByteLevel, {{"a", "a"}, {"aa", "a"}}), "t");
  EXPECT_EQ(tok.encode("aaa"), (std::vector<int32_t>{257}));
  // "aaaa": (a,a) at 0 -> [aa, a, a]; next (a,a) at 1 (rank 256) beats (aa,a) -> [aa, aa]
  EXPECT_EQ(tok.encode("aaaa"), (std::vector<int32_t>{256, 256}));
  // Bytes outside ASCII go through the byte alphabet: "é" = C3 A9 -> two byte tokens.
  EXPECT_EQ(tok.encode("\xC3\xA9"), (std::vector<int32_t>{0xC3, 0xA9}));
}

TEST(Tokenizer, WhitespaceLookaheadGivesLastSpaceToTheNextWord) {
  // GPT-2 regex: "a   b" -> "a", "  " (\s+(?!\S) leaves one space), " b".
  auto tok = Tokenizer::from_json(make_tokenizer(kByteLevel, {{byte_char(' '), byte_char(' ')}}), "t");
  // ids: 'a'=97, "ĠĠ"=256, 'Ġ'=32 then 'b'=98 (no merge Ġb)
  EXPECT_EQ(tok.encode("a   b"), (std::vector<int32_t>{97, 256, 32, 98}));
  // Trailing whitespace at the end of text stays whole: "a  " -> "a", "  "
  EXPECT_EQ(tok.encode("a  "), (std::vector<int32_t>{97, 256}));
  // A single space before a word belongs to the word: "a b" -> "a", " b"
  EXPECT_EQ(tok.encode("a b"), (std::vector<int32_t>{97, 32, 98}));
  // Unicode whitespace counts as \s: U+3000 then a letter.
  auto ids = tok.encode("a\xE3\x80\x80\xE3\x80\x80x");
  EXPECT_EQ(tok.decode(ids), "a\xE3\x80\x80\xE3\x80\x80x");
}

TEST(Tokenizer, AddedAndSpecialTokensAndTemplate) {
  std::string added = R"([{"id":300,"content":"<|bos|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
                          {"id":301,"content":"<think>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":false}])";
  std::string post = R"({"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<|bos|>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
                         "pair":[],"special_tokens":{"<|bos|>":{"id":"<|bos|>","ids":[300],"tokens":["<|bos|>"]}}})";
  auto tok = Tokenizer::from_json(make_tokenizer(kByteLevel, {}, added, post), "t");
  EXPECT_EQ(tok.encode("x<think>y", false), (std::vector<int32_t>{120, 301, 121}));
  EXPECT_EQ(tok.encode("x<think>y", true), (std::vector<int32_t>{300, 120, 301, 121}));
  EXPECT_EQ(tok.decode({300, 120, 301, 121}), "<|bos|>x<think>y");
  EXPECT_EQ(tok.decode({300, 120}, /*skip_special_tokens=*/true), "x");
  EXPECT_EQ(tok.vocab_size(), 302);
}

TEST(Tokenizer, DecodeReplacesInvalidUtf8LikeTokenizers) {
  auto tok = Tokenizer::from_json(make_tokenizer(kByteLevel, {}), "t");
  EXPECT_EQ(tok.decode({0xE4, 0xBD}), "\xEF\xBF\xBD");  // truncated 3-byte sequence: one U+FFFD
  EXPECT_EQ(tok.decode({0xFF, 'a'}), "\xEF\xBF\xBD" "a");
  std::string text = "héllo wörld 你好 🙂\n\ttabs";
  EXPECT_EQ(tok.decode(tok.encode(text)), text);
}

TEST(Tokenizer, SplitPreTokenizerSequenceLikeDeepSeekV3) {
  std::string pre = R"({"type":"Sequence","pretokenizers":[
      {"type":"Split","pattern":{"Regex":"\\p{N}{1,3}"},"behavior":"Isolated","invert":false},
      {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})";
  auto tok = Tokenizer::from_json(make_tokenizer(pre, {{"1", "2"}, {"3", "4"}, {"12", "3"}}), "t");
  // "12345" -> "123" "45" -> [123] [4, 5]; with 3-digit groups the merge (3,4) never applies.
  EXPECT_EQ(tok.encode("12345"), (std::vector<int32_t>{258, '4', '5'}));
}

TEST(Tokenizer, UnsupportedComponentsAreErrors) {
  EXPECT_THROW(Tokenizer::from_json(make_tokenizer(R"({"type":"Whitespace"})", {}), "t"), grpo::Error);
  EXPECT_THROW(Tokenizer::from_json(make_tokenizer(
                   R"X({"type":"Split","pattern":{"Regex":"a(?=b)"},"behavior":"Isolated","invert":false})X", {}), "t"),
               grpo::Error);
  EXPECT_THROW(Tokenizer::from_json("{\"model\": 3", "t"), grpo::Error);
  EXPECT_THROW(Tokenizer::from_json(R"({"model":{"type":"WordPiece","vocab":{}}})", "t"), grpo::Error);
}

TEST(Tokenizer, TokenIdsOutsideTheTableAreRefusedNamingThem) {
  // Found by the tokenizer_json fuzz target: a negative id indexed the id -> token table, and a
  // float id was converted to an integer out of range.
  const std::string vocab_neg = R"({"model":{"type":"BPE","vocab":{"a":0,"b":-3},"merges":[]}})";
  const std::string vocab_huge = R"({"model":{"type":"BPE","vocab":{"a":0,"b":2147483647},"merges":[]}})";
  const std::string vocab_float = R"({"model":{"type":"BPE","vocab":{"a":0,"b":5.5e27},"merges":[]}})";
  const std::string added_neg =
      R"({"added_tokens":[{"id":-1,"content":"<s>"}],"model":{"type":"BPE","vocab":{"a":0},"merges":[]}})";
  for (const auto& [json, needle] : std::vector<std::pair<std::string, std::string>>{
           {vocab_neg, "model.vocab token 'b' has id -3, outside [0, 16777216)"},
           {vocab_huge, "model.vocab token 'b' has id 2147483647"},
           {vocab_float, "model.vocab token 'b' has an id that is not an integer"},
           {added_neg, "added token has id -1"}}) {
    try {
      Tokenizer::from_json(json, "t.json");
      FAIL() << "accepted " << json;
    } catch (const grpo::Error& e) {
      EXPECT_NE(std::string(e.what()).find("t.json: " + needle), std::string::npos) << e.what();
    }
  }
}
