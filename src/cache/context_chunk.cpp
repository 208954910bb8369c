#include "cache/context_chunk.h"

#include <openssl/evp.h>

#include <bit>
#include <memory>

#include "core/error.h"

namespace cascade {

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void put_le(std::vector<std::uint8_t>& out, std::uint64_t value, int num_bytes) {
  for (int i = 0; i < num_bytes; ++i) out.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

}  // namespace

std::string chunk_id_to_hex(const ChunkId& id) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(64, '0');
  for (std::size_t i = 0; i < id.size(); ++i) {
    out[2 * i] = kDigits[id[i] >> 4];
    out[2 * i + 1] = kDigits[id[i] & 0xf];
  }
  return out;
}

std::optional<ChunkId> chunk_id_from_hex(std::string_view hex) {
  if (hex.size() != 64) return std::nullopt;
  ChunkId id{};
  for (std::size_t i = 0; i < id.size(); ++i) {
    int hi = hex_value(hex[2 * i]);
    int lo = hex_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    id[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return id;
}

ChunkId parse_chunk_id(std::string_view hex) {
  auto id = chunk_id_from_hex(hex);
  if (!id) {
    throw_error(ErrorCode::kInvalidArgument,
                "chunk id '{}' is not a chunk id: expected 64 hex digits (a SHA-256)", hex);
  }
  return *id;
}

ChunkId compute_chunk_id(const ChunkId* parent, ChunkKind kind, std::span<const std::int32_t> tokens) {
  std::vector<std::uint8_t> header;
  header.reserve(32 + 1 + 8);
  if (parent) {
    header.insert(header.end(), parent->begin(), parent->end());
  } else {
    header.insert(header.end(), 32, 0);
  }
  header.push_back(static_cast<std::uint8_t>(kind));
  put_le(header, tokens.size(), 8);

  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  bool ok = ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1 &&
            EVP_DigestUpdate(ctx.get(), header.data(), header.size()) == 1;
  if (ok && !tokens.empty()) {
    if constexpr (std::endian::native == std::endian::little) {
      ok = EVP_DigestUpdate(ctx.get(), tokens.data(), tokens.size_bytes()) == 1;
    } else {
      std::vector<std::uint8_t> bytes;
      bytes.reserve(tokens.size_bytes());
      for (std::int32_t t : tokens) put_le(bytes, static_cast<std::uint32_t>(t), 4);
      ok = EVP_DigestUpdate(ctx.get(), bytes.data(), bytes.size()) == 1;
    }
  }
  ChunkId id{};
  unsigned int len = 0;
  ok = ok && EVP_DigestFinal_ex(ctx.get(), id.data(), &len) == 1 && len == id.size();
  if (!ok) throw_error(ErrorCode::kInternal, "OpenSSL SHA-256 failed while computing a chunk id");
  return id;
}

KvPageList ContextChunk::computed_page_list(int page_size) const {
  KvPageList list;
  list.start_pos = start_pos;
  std::int32_t remaining = num_computed;
  for (std::size_t i = 0; remaining > 0; ++i) {
    CASCADE_CHECK(i < pages.size(), "chunk {} has {} computed tokens but only {} pages",
                  chunk_id_to_hex(id), num_computed, pages.size());
    std::int32_t len = remaining < page_size ? remaining : page_size;
    list.pages.push_back(page_index(pages[i]));
    list.lens.push_back(len);
    remaining -= len;
  }
  return list;
}

}  // namespace cascade
