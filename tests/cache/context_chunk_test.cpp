#include "cache/context_chunk.h"

#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace cascade {
namespace {

std::string hex_of(const unsigned char* digest) {
  ChunkId id;
  std::copy(digest, digest + 32, id.begin());
  return chunk_id_to_hex(id);
}

// The documented encoding, serialized here byte by byte, hashed by OpenSSL's one-shot SHA256().
std::string reference_id(const ChunkId* parent, ChunkKind kind, const std::vector<std::int32_t>& tokens) {
  std::vector<unsigned char> bytes(32, 0);
  if (parent) std::copy(parent->begin(), parent->end(), bytes.begin());
  bytes.push_back(static_cast<unsigned char>(kind));
  std::uint64_t n = tokens.size();
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<unsigned char>(n >> (8 * i)));
  for (std::int32_t t : tokens) {
    auto u = static_cast<std::uint32_t>(t);
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<unsigned char>(u >> (8 * i)));
  }
  unsigned char digest[32];
  SHA256(bytes.data(), bytes.size(), digest);
  return hex_of(digest);
}

TEST(ChunkId, OpenSslSha256MatchesNistVector) {
  // FIPS 180-2 example: SHA-256("abc").
  const unsigned char abc[] = {'a', 'b', 'c'};
  unsigned char digest[32];
  SHA256(abc, 3, digest);
  EXPECT_EQ(hex_of(digest), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ChunkId, MatchesSerializedReference) {
  std::vector<std::int32_t> tokens = {1, -2, 300000, 0, 2147483647};
  ChunkId root = compute_chunk_id(nullptr, ChunkKind::kSystem, tokens);
  EXPECT_EQ(chunk_id_to_hex(root), reference_id(nullptr, ChunkKind::kSystem, tokens));
  ChunkId child = compute_chunk_id(&root, ChunkKind::kQuery, tokens);
  EXPECT_EQ(chunk_id_to_hex(child), reference_id(&root, ChunkKind::kQuery, tokens));
}

TEST(ChunkId, MatchesPythonHashlibFixture) {
  std::ifstream in(std::string(CASCADE_SOURCE_DIR) + "/tests/cache/chunk_id_fixture.json");
  ASSERT_TRUE(in) << "missing fixture; run tests/cache/gen_chunk_id_fixture.py";
  auto fixture = nlohmann::json::parse(in);
  const auto& cases = fixture.at("cases");
  ASSERT_GE(cases.size(), 6u);
  std::vector<ChunkId> ids;
  for (const auto& c : cases) {
    auto kind = c.at("kind").get<std::string>();
    ChunkKind k = kind == "system"    ? ChunkKind::kSystem
                  : kind == "context" ? ChunkKind::kContext
                  : kind == "query"   ? ChunkKind::kQuery
                                      : ChunkKind::kAuto;
    auto tokens = c.at("tokens").get<std::vector<std::int32_t>>();
    const ChunkId* parent = c.at("parent").is_null() ? nullptr : &ids.at(c.at("parent").get<size_t>());
    ChunkId id = compute_chunk_id(parent, k, tokens);
    EXPECT_EQ(chunk_id_to_hex(id), c.at("id").get<std::string>()) << c.dump().substr(0, 200);
    ids.push_back(id);
  }
}

TEST(ChunkId, ParentKindAndTokensAllMatter) {
  std::vector<std::int32_t> doc = {10, 20, 30};
  ChunkId sys_a = compute_chunk_id(nullptr, ChunkKind::kSystem, std::vector<std::int32_t>{1});
  ChunkId sys_b = compute_chunk_id(nullptr, ChunkKind::kSystem, std::vector<std::int32_t>{2});
  ChunkId after_a = compute_chunk_id(&sys_a, ChunkKind::kContext, doc);
  ChunkId after_b = compute_chunk_id(&sys_b, ChunkKind::kContext, doc);
  ChunkId root = compute_chunk_id(nullptr, ChunkKind::kContext, doc);
  EXPECT_NE(after_a, after_b);
  EXPECT_NE(after_a, root);
  EXPECT_EQ(after_a, compute_chunk_id(&sys_a, ChunkKind::kContext, doc));  // deterministic
  EXPECT_NE(root, compute_chunk_id(nullptr, ChunkKind::kQuery, doc));
  EXPECT_NE(root, compute_chunk_id(nullptr, ChunkKind::kContext, std::vector<std::int32_t>{30, 20, 10}));
}

TEST(ChunkId, HexRoundTripAndRejects) {
  ChunkId id = compute_chunk_id(nullptr, ChunkKind::kAuto, std::vector<std::int32_t>{5});
  std::string hex = chunk_id_to_hex(id);
  EXPECT_EQ(hex.size(), 64u);
  EXPECT_EQ(chunk_id_from_hex(hex), id);
  std::string upper = hex;
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  EXPECT_EQ(chunk_id_from_hex(upper), id);
  EXPECT_FALSE(chunk_id_from_hex(hex.substr(1)));
  EXPECT_FALSE(chunk_id_from_hex(hex + "0"));
  EXPECT_FALSE(chunk_id_from_hex(std::string(63, '0') + "g"));
  try {
    parse_chunk_id("xyz");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("xyz"), std::string::npos);
  }
  EXPECT_NE(ChunkIdHash{}(id), ChunkIdHash{}(compute_chunk_id(nullptr, ChunkKind::kAuto,
                                                              std::vector<std::int32_t>{6})));
}

TEST(ContextChunk, ComputedPageListCoversComputedPrefix) {
  ContextChunk c;
  c.tokens.assign(20, 1);
  c.start_pos = 7;
  c.pages = {PageId{4}, PageId{9}};
  c.num_computed = 0;
  EXPECT_TRUE(c.computed_page_list(16).pages.empty());
  c.num_computed = 18;
  KvPageList list = c.computed_page_list(16);
  EXPECT_EQ(list.pages, (std::vector<std::int32_t>{4, 9}));
  EXPECT_EQ(list.lens, (std::vector<std::int32_t>{16, 2}));
  EXPECT_EQ(list.start_pos, 7);
  EXPECT_EQ(list.num_tokens(), 18);
  EXPECT_EQ(c.end_pos(), 27);
  EXPECT_EQ(pages_for_tokens(20, 16), 2);
  EXPECT_EQ(pages_for_tokens(16, 16), 1);
  EXPECT_EQ(pages_for_tokens(0, 16), 0);
}

}  // namespace
}  // namespace cascade
