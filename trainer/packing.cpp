#include "trainer/packing.h"

#include <algorithm>
#include <numeric>
#include <set>

#include "util/error.h"

namespace grpo::trainer {

std::vector<int64_t> sequence_targets(const SftSequence& s) {
  const size_t n = s.ids.size();
  std::vector<int64_t> t(n, -100);
  for (size_t i = 0; i + 1 < n; ++i)
    if (s.trained[i + 1]) t[i] = s.ids[i + 1];
  return t;
}

PackingResult pack_sequences(const std::vector<SftSequence>& sequences, int64_t max_length, bool pack) {
  if (max_length < 2) throw Error("packing: max_length must be at least 2 (got " + std::to_string(max_length) + ")");
  PackingResult out;
  std::vector<SftSequence> seqs;
  std::vector<int64_t> index;
  for (size_t i = 0; i < sequences.size(); ++i) {
    SftSequence s = sequences[i];
    if (s.ids.size() != s.trained.size())
      throw Error("packing: sequence " + std::to_string(i) + " has " + std::to_string(s.ids.size()) + " ids but " +
                  std::to_string(s.trained.size()) + " trained flags");
    if ((int64_t)s.ids.size() > max_length) {
      s.ids.resize(max_length);
      s.trained.resize(max_length);
      ++out.truncated;
    }
    // Token 0 is never a target (nothing precedes it); a sequence needs a trained token after it.
    if (std::find(s.trained.begin() + std::min<size_t>(1, s.trained.size()), s.trained.end(), 1) == s.trained.end()) {
      ++out.dropped;
      continue;
    }
    seqs.push_back(std::move(s));
    index.push_back((int64_t)i);
  }
  std::vector<size_t> order(seqs.size());
  std::iota(order.begin(), order.end(), 0);
  if (pack)
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return seqs[a].ids.size() > seqs[b].ids.size(); });
  std::set<std::pair<int64_t, size_t>> room;  // (free tokens, row): best fit is the tightest row that holds it
  for (size_t k : order) {
    const SftSequence& s = seqs[k];
    const int64_t n = (int64_t)s.ids.size();
    size_t r = out.rows.size();
    if (pack) {
      auto it = room.lower_bound({n, 0});
      if (it != room.end()) {
        r = it->second;
        room.erase(it);
      }
    }
    if (r == out.rows.size()) out.rows.emplace_back();
    PackedRow* row = &out.rows[r];
    if (pack && max_length - row->length() - n > 0) room.insert({max_length - row->length() - n, r});
    const int64_t segment = (int64_t)row->examples.size();
    row->examples.push_back(index[k]);
    std::vector<int64_t> t = sequence_targets(s);
    for (int64_t i = 0; i < n; ++i) {
      row->ids.push_back(s.ids[i]);
      row->segments.push_back(segment);
      row->positions.push_back(i);
      row->targets.push_back(t[i]);
    }
  }
  return out;
}

}  // namespace grpo::trainer
