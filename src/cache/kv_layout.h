// Physical layout of the paged KV cache, shared by the CPU and CUDA backends.
//
// One pool of `num_pages` pages per layer, for K and for V separately. A page holds `page_size`
// token slots; a slot holds num_kv_heads x head_dim values. Element (page p, slot s, head h, dim d)
// of one layer lives at ((p * page_size + s) * num_kv_heads + h) * head_dim + d.
// A token's slot index is p * page_size + s ("slot mapping").
//
// Pages may be partially filled: a chunk of 20 tokens with page_size 16 holds one full page and one
// page with 4 valid slots, and the next chunk starts on a fresh page. So every list of pages carries
// each page's valid length (see KvPageList).
#pragma once

#include <cstdint>
#include <vector>

namespace cascade {

struct KvLayout {
  int num_layers = 0;
  int num_pages = 0;
  int page_size = 16;
  int num_kv_heads = 0;
  int head_dim = 0;

  std::int64_t slot_elems() const { return static_cast<std::int64_t>(num_kv_heads) * head_dim; }
  std::int64_t page_elems() const { return slot_elems() * page_size; }
  std::int64_t layer_elems() const { return page_elems() * num_pages; }
  // Bytes of K plus V for one token across all layers, at `elem_bytes` per value.
  std::int64_t token_bytes(int elem_bytes) const { return 2 * slot_elems() * num_layers * elem_bytes; }
};

// One layer's K and V pools (element type T: float on the CPU, bf16 on the GPU).
template <typename T>
struct KvLayerView {
  T* k = nullptr;
  T* v = nullptr;
  int page_size = 16;
  int num_kv_heads = 0;
  int head_dim = 0;
  int num_pages = 0;  // pages in the pool; 0 = unknown (page ids are then not range-checked)

  std::int64_t slot_elems() const { return static_cast<std::int64_t>(num_kv_heads) * head_dim; }
};

// An ordered run of KV tokens held in pages: token j of the run is at page pages[i], slot
// (j - sum of lens[0..i)) for the page i that contains it. Positions of the run are
// start_pos, start_pos + 1, ... (used for causal masking).
struct KvPageList {
  std::vector<std::int32_t> pages;
  std::vector<std::int32_t> lens;  // valid slots per page, 1..page_size
  std::int32_t start_pos = 0;

  std::int32_t num_tokens() const {
    std::int32_t n = 0;
    for (auto l : lens) n += l;
    return n;
  }
};

}  // namespace cascade
