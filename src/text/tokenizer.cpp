#include "text/tokenizer.h"

#include <re2/re2.h>

#include <algorithm>
#include <array>
#include <functional>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "text/split_regex.h"
#include "text/unicode.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

#ifdef GRPO_HAVE_ICU
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#endif

namespace grpo::text {

using json = nlohmann::json;

namespace {

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex = true).
const std::string kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// GPT-2's reversible byte <-> printable-code-point map.
struct ByteAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  ByteAlphabet() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      uint32_t cp = printable ? b : 256 + n++;
      utf8_append(byte_to_utf8[b], cp);
      cp_to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};
const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet a;
  return a;
}

struct PreStep {
  enum Kind { Split, ByteLevel } kind;
  std::shared_ptr<SplitRegex> regex;  // Split, or ByteLevel with use_regex
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool add_prefix_space = false;
};

struct AddedToken {
  int32_t id;
  std::string content;
  bool special, lstrip, rstrip, single_word;
};

}  // namespace

struct Tokenizer::Impl {
  std::string where;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_str;  // model vocab and added tokens
  std::vector<bool> is_special;
  // merges: (left id, right id) -> (rank, merged id)
  struct PairHash {
    size_t operator()(uint64_t k) const { return std::hash<uint64_t>()(k * 0x9E3779B97F4A7C15ull); }
  };
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>, PairHash> merges;
  bool ignore_merges = false;
  std::optional<int32_t> unk_id;
  std::vector<AddedToken> added;
  std::array<std::vector<size_t>, 256> added_by_first_byte;  // indices into added, longest first
  bool nfc = false;
  std::vector<PreStep> pre;
  std::vector<int32_t> prefix_ids, suffix_ids;  // TemplateProcessing "single" around the sequence
  // BPE results per pre-token; bounded so that adversarial input cannot grow it without end.
  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr int64_t kMaxTokenId = int64_t(1) << 24;  // real vocabularies: up to a few 100k
  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  void bpe(const std::string& word, std::vector<int32_t>& out) const;
  void encode_segment(std::string_view text, std::vector<int32_t>& out) const;
};

void Tokenizer::Impl::bpe(const std::string& word, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    auto it = vocab.find(word);
    if (it != vocab.end()) return out.push_back(it->second);
  }
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache.find(word);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  struct Sym {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  for (size_t i = 0; i < word.size();) {
    size_t n = utf8_char_len(word, i);
    auto it = vocab.find(word.substr(i, n));
    int32_t id;
    if (it != vocab.end()) {
      id = it->second;
    } else if (unk_id) {
      id = *unk_id;
    } else {
      throw Error(where + ": character '" + word.substr(i, n) + "' is not in the vocabulary and there is no unk_token");
    }
    syms.push_back({id, (int)syms.size() - 1, (int)syms.size() + 1, true});
    i += n;
  }
  if (!syms.empty()) syms.back().next = -1;
  // Lowest rank first, leftmost among equal ranks; stale entries are skipped when popped.
  struct Cand {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int pos) {
    int nx = syms[pos].next;
    if (nx < 0) return;
    auto it = merges.find(key(syms[pos].id, syms[nx].id));
    if (it != merges.end()) heap.push({it->second.first, pos, it->second.second});
  };
  for (int i = 0; i + 1 < (int)syms.size(); ++i) push(i);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    Sym& s = syms[c.pos];
    if (!s.alive || s.next < 0) continue;
    Sym& r = syms[s.next];
    auto it = merges.find(key(s.id, r.id));
    if (it == merges.end() || it->second.second != c.new_id) continue;
    s.id = c.new_id;
    r.alive = false;
    s.next = r.next;
    if (r.next >= 0) syms[r.next].prev = c.pos;
    if (s.prev >= 0) push(s.prev);
    push(c.pos);
  }
  std::vector<int32_t> ids;
  for (int i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) ids.push_back(syms[i].id);
  out.insert(out.end(), ids.begin(), ids.end());
  // Only words of common length are worth keeping: a hostile 40 MB "word" must not stay behind.
  if (word.size() > kMaxCachedWordBytes) return;
  std::lock_guard<std::mutex> lock(cache_mu);
  if (cache.size() > 200000) cache.clear();
  cache.emplace(word, std::move(ids));
}

void Tokenizer::Impl::encode_segment(std::string_view text, std::vector<int32_t>& out) const {
  std::string normalized;
#ifdef GRPO_HAVE_ICU
  if (nfc) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(status);
    if (U_FAILURE(status)) throw Error(where + ": ICU NFC normalizer unavailable");
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), (int32_t)text.size()));
    icu::UnicodeString r = n->normalize(u, status);
    if (U_FAILURE(status)) throw Error(where + ": NFC normalisation failed");
    r.toUTF8String(normalized);
    text = normalized;
  }
#endif
  // Pieces are owned strings after the first byte-level step; views before.
  std::vector<std::string> pieces{std::string(text)};
  bool byte_mapped = false;
  std::vector<std::string_view> parts;
  for (const PreStep& step : pre) {
    std::vector<std::string> next;
    for (std::string& p : pieces) {
      if (step.kind == PreStep::ByteLevel && step.add_prefix_space && (p.empty() || p[0] != ' ')) p.insert(0, " ");
      parts.clear();
      if (step.regex)
        split(*step.regex, step.behavior, p, parts);
      else
        parts.push_back(p);
      for (std::string_view part : parts) {
        if (step.kind == PreStep::ByteLevel) {
          std::string mapped;
          for (unsigned char b : part) mapped += byte_alphabet().byte_to_utf8[b];
          next.push_back(std::move(mapped));
        } else {
          next.emplace_back(part);
        }
      }
    }
    if (step.kind == PreStep::ByteLevel) byte_mapped = true;
    pieces.swap(next);
  }
  (void)byte_mapped;
  for (const std::string& p : pieces)
    if (!p.empty()) bpe(p, out);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  std::string file = is_directory(path) ? path + "/tokenizer.json" : path;
  return from_json(read_file(file), file);
}

namespace {

void parse_pre_tokenizer(const json& node, const std::string& where, std::vector<PreStep>& steps) {
  if (node.is_null()) return;
  std::string type = node.value("type", "");
  if (type == "Sequence") {
    for (const auto& p : node.at("pretokenizers")) parse_pre_tokenizer(p, where, steps);
  } else if (type == "Split") {
    PreStep s;
    s.kind = PreStep::Split;
    const json& pat = node.at("pattern");
    std::string regex;
    if (pat.contains("Regex")) regex = pat["Regex"].get<std::string>();
    else if (pat.contains("String")) regex = RE2::QuoteMeta(pat["String"].get<std::string>());
    else throw Error(where + ": pre_tokenizer.Split.pattern needs Regex or String");
    s.regex = std::make_shared<SplitRegex>(compile_split_regex(regex, where + ": pre_tokenizer.Split.pattern"));
    std::string b = node.value("behavior", "Isolated");
    if (b == "Isolated") s.behavior = SplitBehavior::Isolated;
    else if (b == "Removed") s.behavior = SplitBehavior::Removed;
    else if (b == "MergedWithPrevious") s.behavior = SplitBehavior::MergedWithPrevious;
    else if (b == "MergedWithNext") s.behavior = SplitBehavior::MergedWithNext;
    else throw Error(where + ": pre_tokenizer.Split.behavior '" + b + "' is not supported");
    if (node.value("invert", false)) throw Error(where + ": pre_tokenizer.Split.invert = true is not supported");
    steps.push_back(std::move(s));
  } else if (type == "ByteLevel") {
    PreStep s;
    s.kind = PreStep::ByteLevel;
    s.add_prefix_space = node.value("add_prefix_space", false);
    if (node.value("use_regex", true))
      s.regex = std::make_shared<SplitRegex>(compile_split_regex(kGpt2Pattern, where + ": ByteLevel regex"));
    steps.push_back(std::move(s));
  } else {
    throw Error(where + ": pre_tokenizer type '" + type + "' is not supported (Sequence, Split, ByteLevel)");
  }
}

void parse_normalizer(const json& node, const std::string& where, bool* nfc) {
  if (node.is_null()) return;
  std::string type = node.value("type", "");
  if (type == "Sequence") {
    for (const auto& n : node.at("normalizers")) parse_normalizer(n, where, nfc);
  } else if (type == "NFC") {
#ifndef GRPO_HAVE_ICU
    throw Error(where + ": normalizer NFC needs grpo built with ICU (libicu-dev)");
#endif
    *nfc = true;
  } else {
    throw Error(where + ": normalizer type '" + type + "' is not supported (NFC or none)");
  }
}

}  // namespace

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& where) {
  auto impl = std::make_unique<Impl>();
  impl->where = where;
  json j = parse_json(json_text, where);
  try {
    const json& model = j.at("model");
    if (model.value("type", "BPE") != "BPE") throw Error(where + ": model.type must be BPE");
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0)
      throw Error(where + ": model.dropout is not supported");
    if (model.value("byte_fallback", false)) throw Error(where + ": model.byte_fallback is not supported");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (model.contains(k) && !model[k].is_null() && !model[k].get<std::string>().empty())
        throw Error(where + ": model." + k + " is not supported");
    impl->ignore_merges = model.value("ignore_merges", false);
    int32_t max_id = -1;
    // Ids index the id -> token table: negative or absurdly large ones are a broken file.
    auto check_id = [&](const json& value, const std::string& what) {
      if (!value.is_number_integer()) throw Error(where + ": " + what + " has an id that is not an integer");
      const int64_t id = value.get<int64_t>();
      if (id < 0 || id >= Impl::kMaxTokenId)
        throw Error(where + ": " + what + " has id " + std::to_string(id) + ", outside [0, " +
                    std::to_string(Impl::kMaxTokenId) + ")");
      return (int32_t)id;
    };
    for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it) {
      int32_t id = check_id(it.value(), "model.vocab token '" + it.key() + "'");
      impl->vocab[it.key()] = id;
      max_id = std::max(max_id, id);
    }
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      auto it = impl->vocab.find(model["unk_token"].get<std::string>());
      if (it != impl->vocab.end()) impl->unk_id = it->second;
    }
    int32_t rank = 0;
    for (const auto& m : model.at("merges")) {
      std::string a, b;
      if (m.is_string()) {
        std::string s = m.get<std::string>();
        size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) throw Error(where + ": model.merges[" + std::to_string(rank) + "] is not 'a b'");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        a = m.at(0).get<std::string>();
        b = m.at(1).get<std::string>();
      }
      auto ia = impl->vocab.find(a), ib = impl->vocab.find(b), im = impl->vocab.find(a + b);
      if (ia == impl->vocab.end() || ib == impl->vocab.end() || im == impl->vocab.end())
        throw Error(where + ": model.merges[" + std::to_string(rank) + "] uses a token missing from the vocabulary");
      impl->merges.emplace(Impl::key(ia->second, ib->second), std::make_pair(rank, im->second));
      ++rank;
    }
    if (j.contains("added_tokens")) {
      for (const auto& t : j["added_tokens"]) {
        AddedToken a{check_id(t.at("id"), "added token"), t.at("content").get<std::string>(), t.value("special", false),
                     t.value("lstrip", false), t.value("rstrip", false), t.value("single_word", false)};
        if (a.content.empty()) continue;
        max_id = std::max(max_id, a.id);
        impl->added.push_back(a);
      }
    }
    impl->id_to_str.assign(max_id + 1, "");
    impl->is_special.assign(max_id + 1, false);
    for (const auto& kv : impl->vocab) impl->id_to_str[kv.second] = kv.first;
    for (size_t i = 0; i < impl->added.size(); ++i) {
      const AddedToken& a = impl->added[i];
      impl->id_to_str[a.id] = a.content;
      impl->is_special[a.id] = a.special;
      impl->added_by_first_byte[static_cast<uint8_t>(a.content[0])].push_back(i);
    }
    for (auto& v : impl->added_by_first_byte)
      std::stable_sort(v.begin(), v.end(), [&](size_t x, size_t y) {
        return impl->added[x].content.size() > impl->added[y].content.size();
      });
    if (j.contains("normalizer")) parse_normalizer(j["normalizer"], where, &impl->nfc);
    if (j.contains("pre_tokenizer")) parse_pre_tokenizer(j["pre_tokenizer"], where, impl->pre);

    // Post-processor: the "single" template of TemplateProcessing (possibly inside a Sequence).
    std::function<void(const json&)> post = [&](const json& p) {
      if (p.is_null()) return;
      std::string type = p.value("type", "");
      if (type == "Sequence") {
        for (const auto& q : p.at("processors")) post(q);
      } else if (type == "TemplateProcessing") {
        bool seen_seq = false;
        for (const auto& piece : p.at("single")) {
          if (piece.contains("Sequence")) {
            seen_seq = true;
          } else if (piece.contains("SpecialToken")) {
            std::string name = piece["SpecialToken"].at("id").get<std::string>();
            const json& st = p.at("special_tokens").at(name);
            for (const auto& id : st.at("ids")) (seen_seq ? impl->suffix_ids : impl->prefix_ids).push_back(id.get<int32_t>());
          }
        }
      } else if (type != "ByteLevel") {
        throw Error(where + ": post_processor type '" + type + "' is not supported (ByteLevel, TemplateProcessing)");
      }
    };
    if (j.contains("post_processor")) post(j["post_processor"]);
  } catch (const json::exception& e) {
    throw Error(where + ": malformed tokenizer.json: " + e.what());
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  if (add_special_tokens) out = m.prefix_ids;
  // Cut added tokens out first (leftmost, longest), then encode the text between them.
  size_t seg = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (size_t idx : m.added_by_first_byte[static_cast<uint8_t>(text[i])]) {
      const AddedToken& a = m.added[idx];
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        auto word_char = [&](size_t pos) {
          uint32_t cp = utf8_decode_at(text, pos);
          return cp == '_' || (cp < 128 ? std::isalnum(static_cast<int>(cp)) != 0 : !is_unicode_space(cp));
        };
        bool left_ok = i == 0 || !word_char(i - 1);
        size_t end = i + a.content.size();
        bool right_ok = end >= text.size() || !word_char(end);
        if (!left_ok || !right_ok) continue;
      }
      hit = &a;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t b = i, e = i + hit->content.size();
    if (hit->lstrip)
      while (b > seg && static_cast<unsigned char>(text[b - 1]) < 0x80 && is_unicode_space(text[b - 1])) --b;
    if (hit->rstrip)
      while (e < text.size() && static_cast<unsigned char>(text[e]) < 0x80 && is_unicode_space(text[e])) ++e;
    if (b > seg) m.encode_segment(text.substr(seg, b - seg), out);
    out.push_back(hit->id);
    seg = i = e;
  }
  if (seg < text.size()) m.encode_segment(text.substr(seg), out);
  if (add_special_tokens) out.insert(out.end(), m.suffix_ids.begin(), m.suffix_ids.end());
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  const auto& alpha = byte_alphabet();
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= (int32_t)m.id_to_str.size()) throw Error(m.where + ": decode: id " + std::to_string(id) + " is outside the vocabulary");
    if (skip_special_tokens && m.is_special[id]) continue;
    const std::string& tok = m.id_to_str[id];
    // A token whose characters all belong to the byte alphabet decodes to those bytes;
    // any other token (e.g. a special token) to its own UTF-8 text, as `tokenizers` does.
    std::string b;
    bool all = true;
    for (size_t i = 0; i < tok.size();) {
      auto it = alpha.cp_to_byte.find(utf8_decode_at(tok, i));
      if (it == alpha.cp_to_byte.end()) {
        all = false;
        break;
      }
      b.push_back(static_cast<char>(it->second));
      i += utf8_char_len(tok, i);
    }
    bytes += all ? b : tok;
  }
  return utf8_lossy(bytes);
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_to_str.size()); }

std::optional<int32_t> Tokenizer::token_to_id(const std::string& token) const {
  for (const auto& a : impl_->added)
    if (a.content == token) return a.id;
  auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= (int32_t)impl_->id_to_str.size()) return std::nullopt;
  return impl_->id_to_str[id];
}

const std::string& byte_level_char(uint8_t byte) { return byte_alphabet().byte_to_utf8[byte]; }

std::string Tokenizer::byte_level_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_char(static_cast<uint8_t>(b))] = b;
  nlohmann::json added = nlohmann::json::array();
  for (int i = 0; i < 2; ++i)
    added.push_back({{"id", 256 + i}, {"content", i == 0 ? "<s>" : "</s>"}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  nlohmann::json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                 {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                 {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  return tok.dump();
}

Tokenizer Tokenizer::byte_level() { return from_json(byte_level_json(), "builtin:bytes"); }

}  // namespace grpo::text
