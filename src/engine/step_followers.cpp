#include "engine/step_followers.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>

#include "core/error.h"
#include "model/kv_cache.h"

namespace gale {

namespace {

enum Kind : int64_t { kStart = 1, kStep = 2, kEnd = 3, kShutdown = 4 };

}  // namespace

void CommStepFollowers::send(std::vector<int64_t>& msg) {
  bytes_.resize(msg.size() * sizeof(int64_t));
  std::memcpy(bytes_.data(), msg.data(), bytes_.size());
  comm_.broadcast_bytes(bytes_, 0);
}

void CommStepFollowers::start(int64_t num_blocks, int64_t block_size) {
  msg_ = {kStart, num_blocks, block_size};
  send(msg_);
}

void CommStepFollowers::end() {
  msg_ = {kEnd};
  send(msg_);
}

void CommStepFollowers::shutdown() {
  msg_ = {kShutdown};
  send(msg_);
}

// [kStep, n_copies, (src, dst)..., n_seqs, per sequence: start_pos, rope_len, logits, n_tokens,
// tokens..., n_blocks, blocks...]. int64 throughout: one layout, no padding rules.
void CommStepFollowers::step(std::span<const std::pair<int32_t, int32_t>> copies, std::span<const SeqStep> steps) {
  msg_.clear();
  msg_.push_back(kStep);
  msg_.push_back(int64_t(copies.size()));
  for (const auto& [src, dst] : copies) {
    msg_.push_back(src);
    msg_.push_back(dst);
  }
  msg_.push_back(int64_t(steps.size()));
  for (const SeqStep& s : steps) {
    msg_.push_back(s.start_pos);
    msg_.push_back(s.rope_len);
    msg_.push_back(int64_t(s.logits));
    msg_.push_back(int64_t(s.tokens.size()));
    msg_.insert(msg_.end(), s.tokens.begin(), s.tokens.end());
    msg_.push_back(int64_t(s.block_table.size()));
    msg_.insert(msg_.end(), s.block_table.begin(), s.block_table.end());
  }
  send(msg_);
}

namespace {

// Reads a message rank 0 wrote; anything malformed is a broken invariant (same binary).
struct Reader {
  const int64_t* p;
  const int64_t* end;
  int64_t next() {
    GALE_ASSERT(p < end);
    return *p++;
  }
  void ints(std::vector<int32_t>& out, int64_t n) {
    GALE_ASSERT(n >= 0 && n <= end - p);
    out.assign(p, p + n);  // each value came from an int32
    p += n;
  }
};

}  // namespace

void follow_steps(Transformer& model, Communicator& comm) {
  GALE_ASSERT(comm.rank() != 0);
  std::unique_ptr<KVCache> kv;
  std::vector<uint8_t> bytes;
  std::vector<int64_t> msg;
  std::vector<std::vector<int32_t>> tokens, tables;
  std::vector<SeqStep> steps;
  std::vector<float> logits;
  for (;;) {
    comm.broadcast_bytes(bytes, 0);
    GALE_ASSERT(bytes.size() % sizeof(int64_t) == 0 && !bytes.empty());
    msg.resize(bytes.size() / sizeof(int64_t));
    std::memcpy(msg.data(), bytes.data(), bytes.size());
    Reader r{msg.data(), msg.data() + msg.size()};
    try {
      switch (r.next()) {
        case kStart: {
          const int64_t num_blocks = r.next(), block_size = r.next();
          kv.reset();
          kv = std::make_unique<KVCache>(model.config(), num_blocks, block_size, model.kv_format(), &model.backend());
          break;
        }
        case kStep: {
          GALE_ASSERT(kv);
          for (int64_t n = r.next(); n > 0; --n) {
            const int64_t src = r.next(), dst = r.next();
            kv->copy_block(int32_t(src), int32_t(dst));
          }
          const int64_t n_seqs = r.next();
          GALE_ASSERT(n_seqs >= 0 && n_seqs <= int64_t(msg.size()));
          tokens.resize(size_t(n_seqs));
          tables.resize(size_t(n_seqs));
          steps.resize(size_t(n_seqs));
          for (size_t i = 0; i < size_t(n_seqs); ++i) {
            SeqStep& s = steps[i];
            s.start_pos = r.next();
            s.rope_len = r.next();
            s.logits = SeqStep::Logits(r.next());
            r.ints(tokens[i], r.next());
            r.ints(tables[i], r.next());
            s.tokens = tokens[i];
            s.block_table = tables[i];
          }
          // Rank 0 ran (or runs) the same pass through launch_argmax, launch_sample or forward:
          // each is run() with the same collectives; the logits here are only a by-product.
          if (!steps.empty()) model.forward(steps, *kv, logits);
          break;
        }
        case kEnd: kv.reset(); break;
        case kShutdown: return;
        default: GALE_ASSERT(false);
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "gale: error: tensor-parallel rank %d: %s; ending the job\n", comm.rank(), e.what());
      std::fflush(stderr);
      comm.abort(1);
    }
  }
}

}  // namespace gale
