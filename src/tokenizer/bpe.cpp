#include "tokenizer/bpe.h"

#include <algorithm>

namespace cascade::tok {

namespace {

inline uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

inline std::size_t mix(uint64_t key) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdULL;
  key ^= key >> 33;
  return static_cast<std::size_t>(key);
}

}  // namespace

BpeModel::BpeModel(std::array<int32_t, 256> byte_ids, const std::vector<MergeRule>& merges,
                   std::unordered_map<std::string, int32_t> piece_vocab, bool ignore_merges)
    : byte_ids_(byte_ids), piece_vocab_(std::move(piece_vocab)), ignore_merges_(ignore_merges) {
  std::size_t cap = 16;
  while (cap < merges.size() * 2) cap <<= 1;
  table_.assign(cap, Slot{kEmpty, 0, 0});
  mask_ = cap - 1;
  for (std::size_t r = 0; r < merges.size(); ++r) {
    const uint64_t key = pair_key(merges[r].left, merges[r].right);
    std::size_t i = mix(key) & mask_;
    while (table_[i].key != kEmpty && table_[i].key != key) i = (i + 1) & mask_;
    table_[i] = Slot{key, static_cast<int32_t>(r), merges[r].merged};
  }
}

const BpeModel::Slot* BpeModel::find_merge(int32_t left, int32_t right) const {
  const uint64_t key = pair_key(left, right);
  std::size_t i = mix(key) & mask_;
  while (true) {
    const Slot& s = table_[i];
    if (s.key == key) return &s;
    if (s.key == kEmpty) return nullptr;
    i = (i + 1) & mask_;
  }
}

void BpeModel::merge(std::string_view bytes, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap_storage;
  symbols.clear();
  for (unsigned char b : bytes) {
    const int32_t id = byte_ids_[b];
    if (id < 0) continue;  // not in the vocab: dropped
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, n - 1, n + 1, true});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  // A min-heap on (rank, pos) in reusable per-thread storage.
  std::vector<Candidate>& queue = heap_storage;
  queue.clear();
  const auto push = [&](Candidate c) {
    queue.push_back(c);
    std::push_heap(queue.begin(), queue.end(), std::greater<>{});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) {
    if (const Slot* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push_back(Candidate{m->rank, i, m->merged});
    }
  }
  std::make_heap(queue.begin(), queue.end(), std::greater<>{});
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), std::greater<>{});
    const Candidate top = queue.back();
    queue.pop_back();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    const int32_t right_pos = left.next;
    // A stale entry: the pair at this position has changed since it was queued. (A changed pair
    // always covers more bytes, so it cannot produce the same token.)
    const Slot* m = find_merge(left.id, symbols[right_pos].id);
    if (m == nullptr || m->merged != top.merged) continue;
    left.id = top.merged;
    symbols[right_pos].alive = false;
    left.next = symbols[right_pos].next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const Slot* p = find_merge(symbols[left.prev].id, left.id)) {
        push(Candidate{p->rank, left.prev, p->merged});
      }
    }
    if (left.next >= 0) {
      if (const Slot* n = find_merge(left.id, symbols[left.next].id)) {
        push(Candidate{n->rank, top.pos, n->merged});
      }
    }
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

void BpeModel::encode_piece(std::string_view bytes, std::vector<int32_t>& out) const {
  if (bytes.size() == 1) {
    const int32_t id = byte_ids_[static_cast<unsigned char>(bytes[0])];
    if (id >= 0) out.push_back(id);
    return;
  }
  if (ignore_merges_) {
    // piece_vocab_ is keyed by raw bytes, so no byte-to-unicode mapping is needed here.
    if (auto it = piece_vocab_.find(std::string(bytes)); it != piece_vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (bytes.size() > kMaxCachedPieceBytes) {
    merge(bytes, out);
    return;
  }
  Shard& shard = cache_[StringHash{}(bytes) % kCacheShards];
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    if (auto it = shard.map.find(bytes); it != shard.map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const std::size_t start = out.size();
  merge(bytes, out);
  std::vector<int32_t> ids(out.begin() + static_cast<std::ptrdiff_t>(start), out.end());
  std::lock_guard<std::mutex> lock(shard.mu);
  // A full shard starts over, so the cache follows the text rather than its first few pages.
  if (shard.map.size() >= kCacheEntriesPerShard) shard.map.clear();
  shard.map.emplace(std::string(bytes), std::move(ids));
}

std::size_t BpeModel::cache_size() const {
  std::size_t n = 0;
  for (const Shard& s : cache_) {
    std::lock_guard<std::mutex> lock(s.mu);
    n += s.map.size();
  }
  return n;
}

}  // namespace cascade::tok
