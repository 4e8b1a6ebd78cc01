#include "trainer/cli/commands.h"

namespace dms {

namespace {

constexpr double kMaxTokens = 1 << 24;
constexpr double kMaxRows = 1e9;

std::string nonempty(const std::string& s) {
  return s.empty() ? "must not be empty" : "";
}

std::string policy_rule(const std::string& s) {
  for (const char* p : {"", "dms", "none", "window", "h2o", "tova"})
    if (s == p) return "";
  return "'" + s + "' is not one of dms|none|window|h2o|tova";
}

std::vector<std::pair<std::string, CachePolicy>> policy_names() {
  return {{"dms", CachePolicy::dms},
          {"none", CachePolicy::full},
          {"window", CachePolicy::window},
          {"h2o", CachePolicy::h2o},
          {"tova", CachePolicy::tova}};
}

}  // namespace

const std::vector<Field<EvalConfig>>& eval_fields() {
  using C = EvalConfig;
  static const std::vector<Field<C>> table = {
      text<C>("model", &C::model,
              "Model (a DMS export for dms/--compare; a retrofit run directory for --curve)",
              nonempty)
          .must(),
      text<C>("original", &C::original,
              "The unchanged model (default: --model with eviction off; with --curve the run's "
              "recorded base, and this is its new path when it moved)"),
      text<C>("data", &C::data, "Held-out tokens (.h5)", nonempty).must(),
      flag<C>("trust-token-files", &C::trust_token_files,
              "Read a --data HDF5 file that carries no dms seal (another tool wrote it) or whose "
              "seal does not match; HDF5 then parses it unchecked"),
      choice<C>("policy", &C::policy, policy_names(), "KV cache policy"),
      number<C>("budget", &C::budget, between(0, kMaxTokens),
                "Tokens per KV head for window/h2o/tova (0: --match-budget or none)"),
      flag<C>("match-budget", &C::match_budget, "Budget giving the DMS model's effective KV CR"),
      flag<C>("compare", &C::compare, "Original, DMS and all baselines in one table"),
      flag<C>("curve", &C::curve,
              "Quality vs KV memory: every checkpoint the run in --model kept at a CR "
              "(retrofit --keep-at-cr) and its last, each with window/H2O/TOVA on the base "
              "model at the same effective KV CR, into one table (--json: for 'dms report')"),
      text<C>("json", &C::json, "Also write the table as JSON"),
      text<C>("dump-logits", &C::dump_logits,
              "Also write the evaluated rows' per-position logits (F32 [R, T, V]), tokens (I64 "
              "[R, T]) and, for DMS, hard decisions and decision logits (F32 [L, R, K, T]) to "
              "this safetensors file (--policy dms or none), for comparing with other code"),
      number_at<C, int64_t>(
          "rows", [](auto& c) -> auto& { return c.opts.rows; }, between(0, kMaxRows),
          "Held-out rows to evaluate (0: all)"),
      number_at<C, int64_t>(
          "batch", [](auto& c) -> auto& { return c.opts.batch; }, between(1, 1 << 16),
          "Rows per forward"),
      number_at<C, int64_t>(
          "gen-rows", [](auto& c) -> auto& { return c.opts.gen_rows; }, between(0, 1 << 16),
          "Prompts for the greedy-agreement check (0: skip it)"),
      number_at<C, int64_t>(
          "gen-tokens", [](auto& c) -> auto& { return c.opts.gen_tokens; }, between(0, kMaxTokens),
          "Greedy tokens per prompt"),
      number_at<C, int64_t>(
          "prompt-len", [](auto& c) -> auto& { return c.opts.prompt_len; }, between(1, kMaxTokens),
          "Prompt tokens taken from each row"),
      number<C>("threads", &C::threads, between(0, 1024), "CPU threads (0: every core)"),
  };
  return table;
}

const std::vector<Field<GenerateConfig>>& generate_fields() {
  using C = GenerateConfig;
  static const std::vector<Field<C>> table = {
      text<C>("model", &C::model, "Model: HF directory, config.json or llama2.c .bin", nonempty)
          .must(),
      text<C>("tokenizer", &C::tokenizer,
              "SentencePiece .model (default: tokenizer.model or tok<vocab>.model beside the "
              "model)"),
      text<C>("prompt", &C::prompt, "Prompt text (BOS is added); empty starts from BOS"),
      text<C>("prompt-ids", &C::prompt_ids,
              "Prompt as comma-separated token ids instead of text (no tokenizer needed)"),
      number<C>("steps", &C::steps, between(1, kMaxTokens), "Number of tokens to generate"),
      number<C>("temperature", &C::temperature, between(0, 1e3),
                "Sampling temperature; 0 = greedy"),
      number<C>("top-p", &C::top_p, between(0, 1), "Nucleus sampling mass (with temperature > 0)"),
      number<C>("seed", &C::seed, any_finite(), "Sampling seed"),
      number<C>("threads", &C::threads, between(0, 1024), "CPU threads (0: every core)"),
      text<C>("policy", &C::policy,
              "KV cache policy: dms (default for a DMS model), none (default otherwise), "
              "window (StreamingLLM sinks + recent), h2o, tova",
              policy_rule),
      number<C>("budget", &C::budget, between(0, kMaxTokens),
                "Tokens kept per KV head for window/h2o/tova"),
      number<C>("sinks", &C::sinks, between(0, kMaxTokens),
                "Attention sinks kept by the window policy"),
  };
  return table;
}

const std::vector<Field<PrepareOptions>>& prepare_fields() {
  using C = PrepareOptions;
  static const std::vector<Field<C>> table = {
      text<C>("tokenizer", &C::tokenizer,
              "Tokenizer: tokenizer.json, a folder (tokenizer.json, vocab.json + merges.txt or "
              "tokenizer.model), or a SentencePiece .model; tokenizer_config.json beside it "
              "gives BOS/EOS and the chat template",
              nonempty)
          .must(),
      text<C>("out", &C::out, "Output .h5", nonempty).must(),
      number<C>("seq-len", &C::seq_len, between(2, kMaxTokens), "Tokens per row"),
      number<C>("val-fraction", &C::val_fraction, {0, 1, false, true},
                "Share of documents held out"),
      text<C>("doc-sep", &C::doc_sep, ".txt documents split at 'blank' lines or each 'line'",
              [](const std::string& s) {
                return s == "blank" || s == "line" ? "" : "'" + s + "' is not one of blank|line";
              }),
      text<C>("field", &C::jsonl_field, "JSONL field holding the text", nonempty),
      flag<C>("chat", &C::chat,
              "JSONL records are conversations {\"messages\": [{role, content, "
              "reasoning_content?}]}, rendered with the tokenizer's chat template"),
      choice<C, Reasoning>("reasoning", &C::reasoning,
                           {{"keep", Reasoning::Keep}, {"drop", Reasoning::Drop}},
                           "--chat: keep reasoning_content for the template, or drop it (and "
                           "inline <think>...</think>)"),
      text<C>("chat-date", &C::chat_date,
              "--chat: date_string given to the template (default: the template's own "
              "fallback, so the data do not depend on the day)"),
      text<C>("bos", &C::bos,
              "Token before each document: default (the tokenizer's framing: SentencePiece "
              "BOS, the post-processor's, none for --chat), none, or a token's text",
              nonempty),
      text<C>("eos", &C::eos,
              "Token after each document: default (the post-processor's, else <|endoftext|> "
              "when the vocabulary has it; none for SentencePiece and --chat), none, or a "
              "token's text",
              nonempty),
      number<C>("threads", &C::threads, between(1, 256),
                "Encoding threads (the output is the same for any count)"),
      number<C>("seed", &C::seed, any_finite(), "Seed of the train/validation split"),
  };
  return table;
}

const std::vector<Field<SampleConfig>>& sample_fields() {
  using C = SampleConfig;
  static const std::vector<Field<C>> table = {
      text<C>("model", &C::model, "Model to sample from", nonempty).must(),
      number<C>("count", &C::opts, &SampleOptions::count, between(1, 1e8), "Rows"),
      number<C>("length", &C::opts, &SampleOptions::length, between(2, kMaxTokens),
                "Tokens per row"),
      number<C>("temperature", &C::opts, &SampleOptions::temperature, {0, 1e3, true, false},
                "Sampling temperature"),
      number<C>("top-p", &C::opts, &SampleOptions::top_p, {0, 1, true, false}, "Nucleus mass"),
      number<C>("seed", &C::opts, &SampleOptions::seed, any_finite(), "Sampling seed"),
      text<C>("out", &C::opts, &SampleOptions::out, "Output .h5", nonempty).must(),
  };
  return table;
}

const std::vector<Field<ExportRequest>>& export_fields() {
  using C = ExportRequest;
  static const std::vector<Field<C>> table = {
      text<C>("run", &C::run_dir, "Run directory of 'dms retrofit'", nonempty).must(),
      number<C>("step", &C::step, between(0, 1e9),
                "Checkpoint step (default: the newest intact one)"),
      text<C>("out", &C::out, "Export directory", nonempty).must(),
      flag<C>("force", &C::force, "Replace --out when it is an earlier export (atomically)"),
      text<C>("base", &C::base,
              "The base model's location when it moved since training (checked by sha256)"),
      choice<C, ExportDtype>("dtype", &C::dtype,
                             {{"source", ExportDtype::source},
                              {"f32", ExportDtype::f32},
                              {"bf16", ExportDtype::bf16},
                              {"f16", ExportDtype::f16}},
                             "Weights' dtype: source (the base model's own; bf16 in, bf16 out), "
                             "f32, bf16 or f16 (rounded to nearest even)"),
  };
  return table;
}

const std::vector<Field<PlanConfig>>& plan_fields() {
  using C = PlanConfig;
  static const std::vector<Field<C>> table = [] {
    std::vector<Field<C>> t = {
        text<C>("model", &C::model,
                "Model: HF directory, config.json (e.g. ../shared/assets/hf-configs/*) or "
                "llama2.c .bin; only its configuration is read",
                nonempty)
            .must(),
        number<C>("seq-len", &C::seq_len, between(1, kMaxTokens), "Positions per row (T)").must(),
        number<C>("world-size", &C::world_size, between(1, 1 << 20),
                  "Ranks the run would use (one device each)"),
        text<C>("json", &C::json, "Also write the plan as JSON to this file"),
    };
    // The retrofit's own rows for what decides the memory of a step.
    for (const char* name :
         {"train-mode", "predictor", "teacher", "dtype", "micro-batch", "grad-accum",
          "activation-checkpointing", "shard-optimizer", "device", "device-memory", "kd-chunk",
          "attention", "attn-block-q", "attn-block-k"})
      t.push_back(nested(field_named(retrofit_fields(), name), &C::retrofit));
    return t;
  }();
  return table;
}

}  // namespace dms
