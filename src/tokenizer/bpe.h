// Byte-level BPE model: merges applied by rank (lowest rank first, leftmost on ties, the order HF
// tokenizers uses) over the bytes of one pre-tokenized piece, with a bounded, thread-safe cache.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cascade::tok {

// One merge rule, by token ids: left + right -> merged.
struct MergeRule {
  int32_t left;
  int32_t right;
  int32_t merged;
};

class BpeModel {
 public:
  // byte_ids[b]: id of the single-byte token for byte b, or -1 when the vocab lacks it (such bytes
  // are dropped, as HF does without byte_fallback or unk). merges: in rank order; a later duplicate
  // pair overrides an earlier one. ignore_merges: a piece that is itself a token is emitted as-is.
  BpeModel(std::array<int32_t, 256> byte_ids, const std::vector<MergeRule>& merges,
           std::unordered_map<std::string, int32_t> piece_vocab, bool ignore_merges);

  // Appends the ids of one piece (raw bytes, before the byte-to-unicode mapping) to out.
  void encode_piece(std::string_view bytes, std::vector<int32_t>& out) const;

  // Entries currently cached (for tests and stats).
  std::size_t cache_size() const;

 private:
  struct Slot {
    uint64_t key;   // (left << 32) | right; kEmpty when unused
    int32_t rank;
    int32_t merged;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static constexpr std::size_t kCacheShards = 16;
  static constexpr std::size_t kCacheEntriesPerShard = 4096;
  static constexpr std::size_t kMaxCachedPieceBytes = 64;

  const Slot* find_merge(int32_t left, int32_t right) const;
  void merge(std::string_view bytes, std::vector<int32_t>& out) const;

  std::array<int32_t, 256> byte_ids_;
  std::vector<Slot> table_;  // open addressing, power-of-two size
  uint64_t mask_ = 0;
  std::unordered_map<std::string, int32_t> piece_vocab_;  // only for ignore_merges
  bool ignore_merges_;

  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map;
  };
  mutable std::array<Shard, kCacheShards> cache_;
};

}  // namespace cascade::tok
