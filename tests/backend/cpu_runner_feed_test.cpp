// The CPU runner's side of overlapped decode (ModelRunner::sample_async / collect / can_feed and
// StepBatch::feed), which the engine tests drive end to end: a fed step computes what the same
// step given the drawn ids as tokens computes, bit for bit, and every misuse is refused.
#include <gtest/gtest.h>

#include "backend/cpu/cpu_runner.h"
#include "common/single_sequence.h"
#include "common/tiny_model.h"
#include "core/error.h"
#include "model/weights.h"

namespace cascade {
namespace {

// One decode row at position `pos` over pages 0.. of a sequence of pos + 1 tokens.
test::SingleSequenceStep decode_row(int pos, std::int32_t token, int page_size) {
  test::SingleSequenceStep s;
  SeqAttnInput in;
  in.num_rows = 1;
  in.first_row_pos = pos;
  KvBlock own;
  for (int p = 0; p * page_size <= pos; ++p) {
    own.kv.pages.push_back(p);
    own.kv.lens.push_back(std::min(page_size, pos + 1 - p * page_size));
  }
  in.blocks.push_back(own);
  s.plan = make_flat_plan({in});
  s.batch.token_ids = {token};
  s.batch.positions = {pos};
  s.batch.slot_mapping = {pos};
  s.batch.logit_rows = {0};
  return s;
}

TEST(CpuRunnerFeed, FedStepMatchesTheStepGivenTheIds) {
  const ModelConfig c = test::tiny_qwen3_config();
  auto w = std::make_shared<Qwen3Weights>(random_qwen3_weights(c, 17));
  const int page_size = 4;
  const std::vector<std::int32_t> prompt = {5, 77, 120, 3, 250, 9, 41};
  auto host = make_cpu_runner(c, w, 8, page_size), fed = make_cpu_runner(c, w, 8, page_size);
  test::SingleSequenceStep pre = test::single_sequence_prefill(prompt, page_size);
  pre.batch.plan = &pre.plan;
  pre.batch.logit_rows = {static_cast<std::int32_t>(prompt.size()) - 1};
  host->forward(pre.batch);
  fed->forward(pre.batch);
  const std::vector<RowSampling> greedy(1);
  std::vector<std::int32_t> ids = host->sample(greedy);
  EXPECT_FALSE(fed->can_feed());
  fed->sample_async(greedy);
  EXPECT_TRUE(fed->can_feed());
  EXPECT_THROW(fed->sample(greedy), Error) << "sample() before collect()";
  for (int k = 0; k < 4; ++k) {
    const int pos = static_cast<int>(prompt.size()) + k;
    test::SingleSequenceStep h = decode_row(pos, ids[0], page_size), f = decode_row(pos, 0, page_size);
    h.batch.plan = &h.plan;
    f.batch.plan = &f.plan;
    f.batch.feed = {0};
    host->forward(h.batch);
    fed->forward(f.batch);
    EXPECT_FALSE(fed->can_feed());
    EXPECT_EQ(fed->copy_logits(), host->copy_logits()) << "step " << k;  // bit for bit
    EXPECT_EQ(fed->collect(), ids) << "step " << k;
    ids = host->sample(greedy);
    fed->sample_async(greedy);
  }
  EXPECT_EQ(fed->collect(), ids);
  EXPECT_THROW(fed->collect(), Error) << "collect() twice";
}

TEST(CpuRunnerFeed, RefusesFeedsItCannotServe) {
  const ModelConfig c = test::tiny_qwen3_config();
  auto w = std::make_shared<Qwen3Weights>(random_qwen3_weights(c, 18));
  auto r = make_cpu_runner(c, w, 8, 4);
  test::SingleSequenceStep pre = test::single_sequence_prefill({1, 2, 3}, 4);
  pre.batch.plan = &pre.plan;
  pre.batch.logit_rows = {2};
  test::SingleSequenceStep f = decode_row(3, 0, 4);
  f.batch.plan = &f.plan;
  f.batch.feed = {0};
  r->forward(pre.batch);
  EXPECT_THROW(r->forward(f.batch), Error) << "no sample_async() before it";
  r->forward(pre.batch);
  r->sample_async(std::vector<RowSampling>(1));
  test::SingleSequenceStep bad = f;
  bad.batch.plan = &bad.plan;
  bad.batch.feed = {1};  // the last draw has one logit row
  EXPECT_THROW(r->forward(bad.batch), Error);
  EXPECT_FALSE(r->can_feed()) << "a forward that throws still uses up the feed";
  EXPECT_THROW(r->forward(f.batch), Error);
  (void)r->collect();
}

}  // namespace
}  // namespace cascade
