// dms inspect PATH: what a model, config, tokenizer or safetensors file holds.
#include <filesystem>
#include <iostream>
#include <sstream>

#include "checkpoints/checkpoint_dir.h"
#include "checkpoints/hf_config.h"
#include "checkpoints/load_model.h"
#include "checkpoints/safetensors.h"
#include "common/error.h"
#include "common/json_file.h"
#include "common/mapped_file.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "trainer/cli/cli.h"
#include "trainer/config/options.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

// A sample that shows what the tokenizer does with words, digits, CJK, emoji and its
// own special-token spelling.
constexpr const char* kTokenizerSample = "Hello, world! 12345 \u4f60\u597d \U0001F44B";

void inspect_tokenizer(const std::string& path) {
  Tokenizer t = load_tokenizer(path);
  auto token = [&](int64_t id) {
    return id < 0 ? std::string("-") : "'" + t.piece(id) + "' (" + std::to_string(id) + ")";
  };
  std::cout << "tokenizer:       " << t.kind() << "  " << path << "\n"
            << "config:          " << (t.config_path.empty() ? "-" : t.config_path) << "\n"
            << "vocab:           " << t.vocab_size() << "\n"
            << "bos / eos:       " << token(t.bos_id()) << " / " << token(t.eos_id()) << "\n"
            << "unk / pad:       " << token(t.unk_id()) << " / " << token(t.pad_id()) << "\n"
            << "framing:         " << t.describe(t.default_framing()) << "\n"
            << "chat template:   "
            << (t.chat_template().empty() ? "none"
                                          : std::to_string(t.chat_template().size()) + " chars")
            << "\n";
  const auto named = t.named_tokens();
  std::cout << "added tokens:    " << named.size();
  size_t shown = 0;
  for (const auto& n : named) {
    if (shown == 0) std::cout << " (";
    if (shown == 12) {
      std::cout << ", ...";
      break;
    }
    std::cout << (shown ? ", " : "") << n.content << "=" << n.id
              << (n.special ? "" : " [not special]");
    ++shown;
  }
  std::cout << (shown ? ")" : "") << "\n";
  const std::string sample = kTokenizerSample;
  std::cout << "sample:          " << sample << "\n  ids:          ";
  for (int64_t id : t.encode(sample, /*add_special_tokens=*/true)) std::cout << " " << id;
  std::cout << "\n  pieces:       ";
  for (int64_t id : t.encode(sample, true)) std::cout << " '" << t.piece(id) << "'";
  std::cout << "\n  decoded:       " << t.decode(t.encode(sample, true)) << "\n";
}

// A path that load_tokenizer reads: a .model, vocab.json / tokenizer.json, or a folder with
// a tokenizer and no model config.
bool is_tokenizer_path(const std::string& path) {
  const fs::path p(path);
  if (fs::is_directory(p))
    return !fs::exists(p / "config.json") &&
           (fs::exists(p / "tokenizer.json") || fs::exists(p / "vocab.json") ||
            fs::exists(p / "tokenizer.model"));
  const std::string name = p.filename().string();
  return p.extension() == ".model" || name == "tokenizer.json" || name == "vocab.json";
}

void inspect_safetensors(const std::string& path) {
  SafetensorsFile f = open_safetensors(path);
  uint64_t bytes = 0;
  std::cout << "safetensors:     " << path << " (" << f.entries.size() << " tensors)\n";
  for (const auto& e : f.entries) {
    std::cout << "  " << e.name << "  " << e.dtype << " " << c10::str(at::IntArrayRef(e.shape))
              << "\n";
    bytes += e.end - e.begin;
  }
  for (const auto& [k, v] : f.metadata) std::cout << "metadata " << k << ": " << v << "\n";
  std::cout << "data bytes:      " << bytes << "\n";
}

void inspect_model(const std::string& path) {
  ModelConfig c = read_model_config(path);
  std::cout << "model:           " << path << "\n" << describe_config(c);
  const fs::path cfg = fs::is_directory(path) ? fs::path(path) / "config.json" : fs::path(path);
  if (cfg.extension() == ".json") {
    const nlohmann::json j = read_json_file(cfg.string());
    DmsConfig d = parse_dms_config(j, cfg.string());
    if (d.enabled)
      std::cout << "dms:             " << predictor_name(d.predictor) << " predictor, per "
                << (d.per_layer ? "layer" : "KV head") << ", window " << d.window << ", tau "
                << d.tau << ", scale " << d.scale << ", offset " << d.offset << "\n";
    for (auto it = j.begin(); it != j.end(); ++it)  // every dms_* field, as written
      if (it.key().rfind("dms_", 0) == 0)
        std::cout << "  " << it.key()
                  << std::string(it.key().size() < 32 ? 32 - it.key().size() : 1, ' ')
                  << it.value().dump() << "\n";
    if (j.contains("torch_dtype"))
      std::cout << "torch_dtype:     " << j["torch_dtype"].dump() << "\n";
  }
  auto dtypes = stored_dtypes(path);
  if (!dtypes.empty()) {
    std::cout << "stored dtypes:  ";
    for (const auto& [k, v] : dtypes) std::cout << " " << k << " x" << v;
    std::cout << "\n";
  } else {
    std::cout << "stored dtypes:   (config only) " << c.dtype << "\n";
  }
}

bool is_checkpoint_dir(const fs::path& p) {
  return fs::is_directory(p) && (fs::exists(p / kManifestFile) || fs::exists(p / kStateFile));
}

// The manifest, every file verified against it, and the state's figures; exit 2 naming
// the first damaged file after the listing.
void inspect_checkpoint(const std::string& dir) {
  const Manifest m = read_manifest(dir);  // present, well-formed, files of the listed sizes
  std::string damaged;
  std::ostringstream files;
  int64_t shards = 0;
  for (const auto& f : m.files) {
    std::string verdict = "ok";
    try {
      verify_file(dir, f);
    } catch (const InputError& e) {
      verdict = "CHECKSUM MISMATCH";
      if (damaged.empty()) damaged = e.what();
    }
    shards += f.is_shard() ? 1 : 0;
    files << "  " << f.name << "  " << f.bytes << " bytes  sha256 " << f.sha256.substr(0, 16)
          << "..."
          << (f.is_shard()
                  ? "  values [" + std::to_string(f.begin) + ", " + std::to_string(f.end) + ")"
                  : std::string())
          << "  " << verdict << "\n";
  }
  std::cout << "checkpoint:      " << dir
            << (damaged.empty() ? " (manifest and every checksum ok)" : " (DAMAGED)") << "\n"
            << "step:            " << m.step
            << (m.kept_for_cr > 0 ? "  (kept for CR " + format_number(m.kept_for_cr) +
                                        ": a point of 'dms eval --curve')"
                                  : std::string())
            << "\n"
            << "world size:      " << m.world_size << "\n"
            << "optimizer:       " << m.numel << " values in " << shards << " shard"
            << (shards == 1 ? "" : "s") << "\n"
            << "files:\n"
            << files.str();
  if (!damaged.empty()) throw InputError(damaged);
  const TrainState s = read_state_file((fs::path(dir) / kStateFile).string());
  int64_t numel = 0;
  for (const auto& [n, t] : s.trained) numel += t.numel();
  std::cout << "optimizer steps: " << s.adam_steps << "\n"
            << "data cursor:     epoch " << s.data_epoch << ", offset " << s.data_offset << "\n"
            << "trained tensors: " << s.trained.size() << " (" << numel << " values)\n"
            << "config:          " << s.config_json << "\n";
}

std::string describe_seal(const std::string& path, bool trusted) {
  const TokenSeal s = read_token_seal(path);
  if (!trusted) return "sha256 " + s.sha256 + " of " + std::to_string(s.bytes) + " bytes, verified";
  if (s.kind == TokenSeal::none) return "none (read unchecked: --trust-token-files)";
  try {
    verify_token_seal(path);
    return "sha256 " + s.sha256 + " of " + std::to_string(s.bytes) + " bytes, verified";
  } catch (const InputError& e) {
    return std::string("DOES NOT MATCH (read unchecked: --trust-token-files): ") + e.what();
  }
}

void inspect_h5(const std::string& path, bool trust) {
  // Our token files carry a seal; a checkpoint's files are verified by its manifest first.
  const fs::path dir = fs::path(path).parent_path();
  if (read_token_seal(path).kind == TokenSeal::none && fs::exists(dir / kManifestFile))
    return inspect_checkpoint(dir.string());
  TokenData d = open_tokens(path, 0, "uint16", trust ? TokenTrust::trust : TokenTrust::verify);
  const auto [lowest, highest] = d.id_range();
  std::cout << "token file:      " << path << "\n"
            << "seal:            " << describe_seal(path, trust) << "\n"
            << "rows:            " << d.n_rows << " x " << d.seq_len << " tokens\n"
            << "vocab:           " << d.info.vocab_size << " (bos " << d.info.bos_id << ", eos "
            << d.info.eos_id << ")\n"
            << "tokenizer sha256: " << (d.info.tokenizer_hash.empty() ? "-" : d.info.tokenizer_hash)
            << "\n"
            << "source:          " << d.info.source << "\n"
            << "framing:         " << (d.info.framing.empty() ? "-" : d.info.framing) << "\n"
            << "documents:       " << d.info.documents << ", real tokens " << d.info.tokens << "\n"
            << "ids:             " << lowest << " .. " << highest << "\n";
}

void run_inspect(const std::string& path, bool trust) {
  require(fs::exists(path), path, "no such file or directory");
  if (is_checkpoint_dir(path)) return inspect_checkpoint(path);
  if (!fs::is_directory(path)) require_regular_file(path);  // a FIFO or device: never open it
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".h5" || ext == ".hdf5") return inspect_h5(path, trust);
  if (is_tokenizer_path(path)) return inspect_tokenizer(path);
  if (ext == ".safetensors") return inspect_safetensors(path);
  return inspect_model(path);
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "inspect",
      "Describe a file: HF model directory or config.json (family, layers, heads, parameter "
      "count, rope), llama2.c .bin, .safetensors (tensors), SentencePiece .model, tokenizers "
      "(tokenizer.json, vocab.json, a tokenizer folder: kind, special "
      "tokens, framing, ids of a sample), token files and training checkpoints (a run's "
      "checkpoints/step-NNNNNN directory: manifest, "
      "shards, every checksum verified).");
  cmd->add_option("path", *path, "File or directory to describe")->required();
  auto trust = std::make_shared<bool>(false);
  cmd->add_flag("--trust-token-files", *trust,
                "Describe an HDF5 token file that carries no dms seal (another tool wrote it) or "
                "whose seal does not match; HDF5 then parses it unchecked");
  cmd->callback([path, trust] { run_inspect(*path, *trust); });
}

}  // namespace dms
