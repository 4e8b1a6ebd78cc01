#include "data/bpe.h"

#include <atomic>
#include <cstdio>
#include <queue>

#include "common/error.h"
#include "data/utf8.h"

namespace dms {

namespace {

constexpr size_t kCacheEntries = 1 << 17;
constexpr size_t kCacheWordBytes = 128;  // longer words are rare: not worth the memory

uint64_t pair_key(int32_t a, int32_t b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

std::atomic<uint64_t> next_serial{1};

// This thread's cache of one model's words (the most recently used model).
struct WordCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<int32_t>> words;
};
WordCache& word_cache(uint64_t owner) {
  thread_local WordCache c;
  if (c.owner != owner) {
    c.words.clear();
    c.owner = owner;
  }
  return c;
}

}  // namespace

BpeModel::BpeModel(std::vector<std::pair<std::string, int32_t>> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options, const std::string& origin)
    : options_(std::move(options)), serial_(next_serial++) {
  int32_t max_id = -1;
  for (const auto& [piece, id] : vocab) max_id = std::max(max_id, id);
  pieces_.resize(size_t(max_id + 1));
  for (auto& [piece, id] : vocab) {
    require(pieces_[size_t(id)].empty(), origin,
            "vocabulary id " + std::to_string(id) + " is given to two pieces");
    require(!piece.empty(), origin, "empty piece in the vocabulary (id " + std::to_string(id) + ")");
    pieces_[size_t(id)] = std::move(piece);
  }
  to_id_.reserve(pieces_.size());
  for (size_t id = 0; id < pieces_.size(); ++id)
    if (!pieces_[id].empty()) to_id_.emplace(pieces_[id], int32_t(id));

  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const int32_t ia = id_of(a), ib = id_of(b), ir = id_of(a + b);
    const std::string what = "merge " + std::to_string(rank) + " (\"" + a + "\" \"" + b + "\") ";
    require(ia >= 0 && ib >= 0, origin, what + "names a piece that is not in the vocabulary");
    require(ir >= 0, origin, what + "makes a piece that is not in the vocabulary");
    merges_.emplace(pair_key(ia, ib), Merge{int32_t(rank), ir});  // the first rank wins
  }
  if (!options_.unk_token.empty()) {
    unk_id_ = id_of(options_.unk_token);
    require(unk_id_ >= 0, origin,
            "unk_token \"" + options_.unk_token + "\" is not in the vocabulary");
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    byte_ids_[b] = id_of(name);
  }
}

int32_t BpeModel::id_of(std::string_view piece) const {
  auto it = to_id_.find(piece);
  return it == to_id_.end() ? -1 : it->second;
}

const std::string* BpeModel::piece_of(int32_t id) const {
  if (id < 0 || size_t(id) >= pieces_.size() || pieces_[size_t(id)].empty()) return nullptr;
  return &pieces_[size_t(id)];
}

// One symbol per character; characters outside the vocabulary become byte tokens, the
// unknown token, or nothing, as the options say. -1 marks a fused run of unknowns.
void BpeModel::initial_symbols(std::string_view word, std::vector<int32_t>& ids) const {
  bool last_unk = false;
  for (size_t i = 0; i < word.size();) {
    const size_t n = std::min(utf8::char_len(static_cast<unsigned char>(word[i])), word.size() - i);
    const std::string_view ch = word.substr(i, n);
    i += n;
    const int32_t id = id_of(ch);
    if (id >= 0) {
      ids.push_back(id);
      last_unk = false;
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (unsigned char c : ch) all = all && byte_ids_[c] >= 0;
      if (all) {
        for (unsigned char c : ch) ids.push_back(byte_ids_[c]);
        last_unk = false;
        continue;
      }
    }
    if (unk_id_ < 0) continue;  // as `tokenizers` does: no unk token, no symbol
    if (!(options_.fuse_unk && last_unk)) ids.push_back(unk_id_);
    last_unk = true;
  }
}

// Applies merges lowest rank first, leftmost first among equal ranks, over a linked list
// of symbols with a heap of candidate pairs (stale entries are skipped when popped).
void BpeModel::merge_symbols(std::vector<int32_t>& ids) const {
  const int32_t n = int32_t(ids.size());
  if (n < 2) return;
  std::vector<int32_t> next(static_cast<size_t>(n)), prev(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    next[size_t(i)] = i + 1 < n ? i + 1 : -1;
    prev[size_t(i)] = i - 1;
  }
  struct Cand {
    int32_t rank, pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[size_t(pos)] < 0) return;
    const int32_t l = ids[size_t(pos)], r = ids[size_t(next[size_t(pos)])];
    auto it = merges_.find(pair_key(l, r));
    if (it != merges_.end()) heap.push({it->second.rank, pos, l, r});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  std::vector<bool> dead(static_cast<size_t>(n), false);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int32_t right = next[size_t(c.pos)];
    if (dead[size_t(c.pos)] || right < 0 || ids[size_t(c.pos)] != c.left ||
        ids[size_t(right)] != c.right)
      continue;
    ids[size_t(c.pos)] = merges_.find(pair_key(c.left, c.right))->second.result;
    dead[size_t(right)] = true;
    next[size_t(c.pos)] = next[size_t(right)];
    if (next[size_t(c.pos)] >= 0) prev[size_t(next[size_t(c.pos)])] = c.pos;
    push(prev[size_t(c.pos)]);
    push(c.pos);
  }
  size_t w = 0;
  for (int32_t i = 0; i >= 0 && i < n; i = next[size_t(i)]) ids[w++] = ids[size_t(i)];
  ids.resize(w);
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    const int32_t id = id_of(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  WordCache* cache = word.size() <= kCacheWordBytes ? &word_cache(serial_) : nullptr;
  std::string key;
  if (cache) {
    key.assign(word);
    auto it = cache->words.find(key);
    if (it != cache->words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  ids.reserve(word.size());
  initial_symbols(word, ids);
  merge_symbols(ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cache && cache->words.size() < kCacheEntries) cache->words.emplace(std::move(key), std::move(ids));
}

}  // namespace dms
