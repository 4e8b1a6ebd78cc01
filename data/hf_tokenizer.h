// Hugging Face tokenizers in C++: tokenizer.json as the `tokenizers` library writes it, and
// the GPT-2 form (vocab.json + merges.txt + tokenizer_config.json). Covered: what Llama 3,
// Qwen2/2.5/3 and Mistral use —
//   normalizers     NFC, NFD, NFKC, NFKD, Prepend, Replace (string), Sequence, none
//   pre-tokenizers  Split (regex via PCRE2, or string; every behaviour; invert), ByteLevel,
//                   Metaspace, Sequence
//   model           BPE (merges as "a b" strings or [a, b] pairs, ignore_merges, byte
//                   fallback, unk token, fuse_unk)
//   added tokens    matched before pre-tokenization, leftmost-longest (lstrip, rstrip,
//                   single_word, normalized honoured)
//   post-processors TemplateProcessing, ByteLevel, Sequence
//   decoders        ByteLevel, Metaspace, Replace (string), ByteFallback, Fuse, Strip,
//                   Sequence, none
// Anything else is an InputError naming the component: never a silent approximation.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "data/tokenizer_backend.h"

namespace dms {

// tokenizer.json. InputError "<path>: ..." for unreadable, malformed or unsupported files.
std::shared_ptr<const TokenizerBackend> load_hf_tokenizer_json(const std::string& path);

// The GPT-2 form in `dir`: vocab.json + merges.txt, with the pre-tokenizer chosen by
// tokenizer_config.json's tokenizer_class (GPT2Tokenizer, Qwen2Tokenizer and their Fast
// variants) and its added_tokens_decoder.
std::shared_ptr<const TokenizerBackend> load_gpt2_tokenizer(const std::string& dir,
                                                            const nlohmann::json& config,
                                                            const std::string& config_path);

}  // namespace dms
