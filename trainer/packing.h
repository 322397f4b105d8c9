// Sequence packing for SFT: several tokenised examples per row of at most `max_length` tokens, so
// that no compute goes to padding. Each token keeps its example's segment id (attention stays
// inside the example) and its position within the example (positions restart at 0), and the
// target of a token is the next token of the same example where that token is trained on (the
// assistant's part), -100 elsewhere, as Hugging Face's labels. Torch-free.
#pragma once

#include <cstdint>
#include <vector>

namespace grpo::trainer {

struct SftSequence {
  std::vector<int64_t> ids;
  std::vector<uint8_t> trained;  // per token: 1 where the model learns to produce it (completion), 0 elsewhere
};

struct PackedRow {
  std::vector<int64_t> ids, segments, positions, targets;  // one per token; targets -100 = no loss
  std::vector<int64_t> examples;                            // indices of the sequences in this row
  int64_t length() const { return (int64_t)ids.size(); }
};

struct PackingResult {
  std::vector<PackedRow> rows;
  int64_t truncated = 0;  // sequences cut to max_length (their tail is not trained on)
  int64_t dropped = 0;    // sequences with no trained token left after truncation
};

// Packs sequences (or, with `pack` false, one per row in input order): best-fit decreasing (longest
// first, each into the fullest row that still holds it; ties by index), O(N log N), so the result
// depends only on the input. Sequences longer than max_length are truncated to it.
PackingResult pack_sequences(const std::vector<SftSequence>& sequences, int64_t max_length, bool pack = true);

// The targets of one sequence alone: targets[t] = ids[t + 1] where trained[t + 1], else -100.
std::vector<int64_t> sequence_targets(const SftSequence& s);

}  // namespace grpo::trainer
