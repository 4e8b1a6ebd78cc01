// dms generate: text from a model, greedy or sampled, with tokens/s.
#include <ATen/Parallel.h>

#include <chrono>
#include <iostream>
#include <sstream>

#include "checkpoints/load_model.h"
#include "common/error.h"
#include "common/host.h"
#include "data/tokenizer.h"
#include "model/generate.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/commands.h"

namespace dms {

namespace {

std::vector<int64_t> parse_ids(const std::string& s, int64_t vocab) {
  std::vector<int64_t> ids;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      int64_t v = std::stoll(item, &used);
      require(used == item.size(), "--prompt-ids", "'" + item + "' is not an integer");
      require(v >= 0 && v < vocab, "--prompt-ids",
              "id " + item + " outside the vocabulary of " + std::to_string(vocab));
      ids.push_back(v);
    } catch (const std::logic_error&) {
      throw InputError("--prompt-ids: '" + item + "' is not an integer");
    }
  }
  return ids;
}

void run_generate(const GenerateConfig& a) {
  if (a.threads > 0) use_threads(a.threads);
  Model m = load_model(a.model);
  const ModelConfig& c = m.config;

  Tokenizer tok;
  const std::string tok_path =
      a.tokenizer.empty() ? find_tokenizer(a.model, c.vocab_size) : a.tokenizer;
  const bool have_tok = !tok_path.empty();
  if (have_tok) {
    tok = load_tokenizer(tok_path);
    check_tokenizer_fits(tok, c.vocab_size, a.model);
  }
  std::vector<int64_t> prompt;
  if (!a.prompt_ids.empty()) {
    prompt = parse_ids(a.prompt_ids, c.vocab_size);
  } else {
    require(have_tok, a.model,
            "no tokenizer found next to the model: pass --tokenizer FILE or --prompt-ids");
    prompt = tok.encode(a.prompt, /*add_bos=*/true);
  }
  require(!prompt.empty(), "--prompt", "empty prompt and the model has no BOS token");
  require(int64_t(prompt.size()) + a.steps <= c.max_position || c.max_position <= 0, "--steps",
          "prompt + steps (" + std::to_string(prompt.size() + size_t(a.steps)) +
              ") exceeds the model context of " + std::to_string(c.max_position));

  std::vector<int64_t> ids = prompt;
  std::string printed;
  auto show = [&](bool final) {
    if (!have_tok) return;
    std::string text = tok.decode(ids);
    // Byte-fallback pieces can complete a UTF-8 character later: print only a stable prefix.
    if (text.compare(0, printed.size(), printed) != 0) return;
    if (!final && !text.empty() && (uint8_t(text.back()) & 0x80)) return;
    std::cout << text.substr(printed.size()) << std::flush;
    printed = text;
  };
  show(false);
  const int64_t stop_a = tok.loaded() ? tok.eos_id() : c.eos_id;
  const int64_t stop_b = c.bos_id;  // llama2.c convention: BOS delimits sequences
  SamplingOptions so{a.temperature, a.top_p, a.seed};
  CacheOptions co;
  co.policy = a.policy.empty() ? (m.dms.enabled ? CachePolicy::dms : CachePolicy::full)
                               : parse_policy(a.policy, "--policy");
  co.budget = a.budget;
  co.sinks = a.sinks;
  KVCache cache = make_cache(m, 1, co);
  at::Tensor input = at::tensor(prompt, at::kLong).unsqueeze(0);  // [1, T]
  auto t0 = std::chrono::steady_clock::now();
  int64_t produced = 0;
  generate(
      m, input, a.steps, so,
      [&](int64_t, const at::Tensor& next) {
        const int64_t id = next[0].item<int64_t>();
        ++produced;
        if (id == stop_a || id == stop_b) return false;
        ids.push_back(id);
        show(false);
        return true;
      },
      &cache);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  show(true);
  if (!have_tok) {
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  }
  std::cout << "\n";
  const CacheStats st = cache_stats(cache);
  std::cerr << "kv cache: policy " << policy_name(co.policy);
  if (co.budget > 0) std::cerr << " (budget " << co.budget << ")";
  std::cerr << ", effective KV CR " << st.effective_kv_cr << "x, end-of-sequence KV CR "
            << st.end_kv_cr << "x, peak " << st.peak_tokens << " tokens per head (full cache "
            << st.full_tokens << "), now " << st.mean_live << " on average\n";
  std::cerr << "generated " << produced << " tokens in " << secs << " s, "
            << (secs > 0 ? double(produced) / secs : 0.0) << " tokens/s\n";
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto st = std::make_shared<Parsed<GenerateConfig>>();
  CLI::App* cmd = app.add_subcommand(
      "generate",
      "Generate text from a model (HF directory, llama2.c .bin or a dms export) with the KV "
      "cache; prints the text and tokens/s.");
  add_fields(cmd, generate_fields(), st->cfg, st->errors);
  cmd->callback([st] {
    st->check(generate_fields());
    run_generate(st->cfg);
  });
}

}  // namespace dms
