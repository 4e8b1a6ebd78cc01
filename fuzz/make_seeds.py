#!/usr/bin/env python3
"""Seed corpora for the harnesses of fuzz/, from the shared test assets.

    fuzz/make_seeds.py ASSETS OUT      # writes OUT/<harness>/<seed> (OUT is emptied first)

Real files where they are small enough to mutate quickly (hf-tiny safetensors, config.json
files, tok512.model, stories260K.bin), trimmed copies of the large tokenizers (the first
entries of each vocabulary, the merges among them), and synthetic files reaching the paths
real files do not (llm.c token streams, tiny llama2.c models, dms_* config fields).
fuzz_checkpoint_manifest and fuzz_toml_config write their own seeds (scripts/fuzz.sh runs
them with DMS_FUZZ_WRITE_SEEDS=DIR): they come from the harness's fixtures and option tables.
Only the Python standard library is used.
"""
import json
import os
import shutil
import struct
import sys

SEP = "\n@@dms-fuzz-file@@\n"  # fuzz_hf_tokenizer's file separator


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    assets, out = sys.argv[1], sys.argv[2]
    if not os.path.isdir(assets):
        sys.exit(f"make_seeds.py: no assets at {assets} (set DMS_ASSETS)")
    shutil.rmtree(out, ignore_errors=True)
    counts = {}

    def seed(harness, name, data):
        d = os.path.join(out, harness)
        os.makedirs(d, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        counts[harness] = counts.get(harness, 0) + 1

    def read(*p):
        with open(os.path.join(assets, *p), "rb") as f:
            return f.read()

    def exists(*p):
        return os.path.exists(os.path.join(assets, *p))

    hf_tiny = sorted(d for d in os.listdir(os.path.join(assets, "hf-tiny"))
                     if os.path.isdir(os.path.join(assets, "hf-tiny", d)))
    hf_configs = sorted(os.listdir(os.path.join(assets, "hf-configs")))

    # fuzz_safetensors: every hf-tiny weight file, and small synthetic ones.
    for d in hf_tiny:
        for f in sorted(os.listdir(os.path.join(assets, "hf-tiny", d))):
            if f.endswith(".safetensors"):
                seed("fuzz_safetensors", f"{d}-{f}", read("hf-tiny", d, f))

    def safetensors(tensors, metadata=None):
        header, blobs, off = {}, b"", 0
        if metadata is not None:
            header["__metadata__"] = metadata
        for name, dtype, shape, data in tensors:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
            blobs += data
            off += len(data)
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        return struct.pack("<Q", len(h)) + h + blobs

    seed("fuzz_safetensors", "synthetic-mixed", safetensors(
        [("a", "F32", [2, 3], struct.pack("<6f", *range(6))),
         ("b", "BF16", [4], b"\x80\x3f" * 4),
         ("c", "F16", [1, 2], b"\x00\x3c" * 2),
         ("d", "I64", [1], struct.pack("<q", -1)),
         ("e", "I32", [2], struct.pack("<2i", 1, 2)),
         ("f", "U8", [3], b"xyz"),
         ("g", "BOOL", [2], b"\x00\x01"),
         ("h", "F64", [], struct.pack("<d", 1.5)),
         ("empty", "F32", [0, 5], b"")],
        {"format": "pt"}))
    seed("fuzz_safetensors", "synthetic-header-only", safetensors([]))

    # fuzz_hf_config: every config.json, and ones with the dms_* fields of an export.
    configs = []
    for d in hf_configs:
        if exists("hf-configs", d, "config.json"):
            configs.append((f"hf-configs-{d}", read("hf-configs", d, "config.json")))
    for d in hf_tiny:
        if exists("hf-tiny", d, "config.json"):
            configs.append((f"hf-tiny-{d}", read("hf-tiny", d, "config.json")))
    for name, data in configs:
        seed("fuzz_hf_config", name + ".json", data)
    dms_fields = {"dms_window_size": 16, "dms_alpha_scale": 100.0, "dms_initial_alpha_offset": 5.0,
                  "dms_tau": 0.1, "dms_separate_alpha": False, "dms_alpha_per": "head", "dms_cr": 8,
                  "dms_paged_attention_block_size": 8, "dms_disable_eviction": False,
                  "dms_compile_limit": 72, "dms_manual_inference_mode": False,
                  "dms_chunked_prefill": None, "dms_preallocate_for_tokens": 4096}
    for name, data in configs[-2:]:
        j = json.loads(data)
        j.update(dms_fields)
        seed("fuzz_hf_config", name + "-dms.json", json.dumps(j, indent=2))
        j["dms_alpha_per"], j["dms_separate_alpha"], j["dms_cr"] = "layer", True, 2.5
        seed("fuzz_hf_config", name + "-dms-layer.json", json.dumps(j, indent=2))

    # fuzz_llama2c: stories260K.bin, its header alone, tiny synthetic models.
    bin_ = read("stories260K", "stories260K.bin")
    seed("fuzz_llama2c", "stories260K.bin", bin_)
    seed("fuzz_llama2c", "stories260K-header", bin_[:28])
    seed("fuzz_llama2c", "tok512.bin", read("stories260K", "tok512.bin"))

    def llama2c(dim, hidden, layers, heads, kv, vocab, seq, shared):
        hd = dim // heads
        floats = (vocab * dim + layers * dim + layers * dim * dim + 2 * layers * kv * hd * dim
                  + layers * dim * dim + layers * dim + 3 * layers * dim * hidden + dim + seq * hd)
        if not shared:
            floats += vocab * dim
        head = struct.pack("<7i", dim, hidden, layers, heads, kv, vocab if shared else -vocab, seq)
        return head + struct.pack(f"<{floats}f", *[((i % 7) - 3) / 8 for i in range(floats)])

    seed("fuzz_llama2c", "tiny-shared", llama2c(8, 16, 1, 2, 1, 16, 4, True))
    seed("fuzz_llama2c", "tiny-untied", llama2c(8, 12, 2, 2, 2, 10, 2, False))

    # fuzz_token_file: byte 0 = options (bits 0-5: seq_len - 1, bit 6: uint32; bit 7: HDF5,
    # whose sealed seeds the harness writes itself), then the file.
    ids = list(range(512)) * 3

    def llmc(version, toks):
        head = struct.pack("<3i", 20240520, version, len(toks)) + b"\0" * (1024 - 12)
        return head + struct.pack(f"<{len(toks)}{'H' if version == 1 else 'I'}", *toks)

    seed("fuzz_token_file", "llmc-v1", bytes([15]) + llmc(1, ids))
    seed("fuzz_token_file", "llmc-v2", bytes([63]) + llmc(2, ids[:700]))
    seed("fuzz_token_file", "nanogpt-u16", bytes([7]) + struct.pack(f"<{300}H", *ids[:300]))
    seed("fuzz_token_file", "raw-u32", bytes([64 + 3]) + struct.pack("<64I", *ids[:64]))
    seed("fuzz_token_file", "tok512.bin", bytes([31]) + read("stories260K", "tok512.bin"))
    seed("fuzz_token_file", "stories260K-head", bytes([0]) + bin_[:2048])

    # fuzz_hf_tokenizer: trimmed tokenizer.json files (+ tokenizer_config.json), and the
    # GPT-2 form.
    keep = 400

    def trim_bpe_vocab(vocab, merges):
        kept = {t: i for t, i in vocab.items() if i < keep}
        out = []
        for m in merges:
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            if a in kept and b in kept and a + b in kept:
                out.append(m)
        return kept, out

    texts = ["Hello world! <|im_start|>user\nHi<|im_end|>", "caf\u00e9 \u65e5\u672c 1234567 \U0001F600"]
    for d in sorted(os.listdir(os.path.join(assets, "tokenizers"))):
        if not exists("tokenizers", d, "tokenizer.json"):
            continue
        j = json.loads(read("tokenizers", d, "tokenizer.json"))
        model = j.get("model", {})
        if isinstance(model.get("vocab"), dict):
            model["vocab"], model["merges"] = trim_bpe_vocab(model["vocab"], model.get("merges", []))
            # Added tokens follow the trimmed vocabulary (ids renumbered, the post-processor's
            # references to them too); only the first 32 of them are kept.
            added = [t for t in j.get("added_tokens", []) if t["id"] >= keep][:32]
            remap = {t["id"]: keep + i for i, t in enumerate(added)}
            j["added_tokens"] = [t for t in j.get("added_tokens", []) if t["id"] < keep] + \
                [dict(t, id=remap[t["id"]]) for t in added]

            def renumber(v):
                if isinstance(v, dict):
                    return {k: renumber(x) for k, x in v.items()}
                if isinstance(v, list):
                    return [renumber(x) for x in v]
                return remap.get(v, v) if isinstance(v, int) and not isinstance(v, bool) else v
            if j.get("post_processor") is not None:
                j["post_processor"] = renumber(j["post_processor"])
        tj = json.dumps(j, ensure_ascii=False)
        seed("fuzz_hf_tokenizer", f"{d}-tokenizer.json", tj)
        if exists("tokenizers", d, "tokenizer_config.json"):
            cfg = read("tokenizers", d, "tokenizer_config.json").decode()
            seed("fuzz_hf_tokenizer", f"{d}-with-config", tj + SEP + cfg)
            seed("fuzz_hf_tokenizer", f"{d}-with-config-text", tj + SEP + cfg + SEP + SEP + texts[0])
    for d in sorted(os.listdir(os.path.join(assets, "tokenizers"))):
        if exists("tokenizers", d, "vocab.json") and exists("tokenizers", d, "merges.txt"):
            vocab = json.loads(read("tokenizers", d, "vocab.json"))
            lines = read("tokenizers", d, "merges.txt").decode().splitlines()
            merges = [l for l in lines if l and not l.startswith("#version")]
            vocab, merges = trim_bpe_vocab(vocab, merges)
            cfg = read("tokenizers", d, "tokenizer_config.json").decode()
            files = json.dumps(vocab, ensure_ascii=False) + SEP + cfg + SEP + "#version: 0.2\n" + \
                "\n".join(merges) + "\n"
            seed("fuzz_hf_tokenizer", f"{d}-gpt2", files)
            seed("fuzz_hf_tokenizer", f"{d}-gpt2-text", files + SEP + texts[1])

    # fuzz_chat_template: the chat templates of every tokenizer_config.json.
    for base in ("tokenizers", "hf-configs"):
        for d in sorted(os.listdir(os.path.join(assets, base))):
            if not exists(base, d, "tokenizer_config.json"):
                continue
            t = json.loads(read(base, d, "tokenizer_config.json")).get("chat_template")
            if isinstance(t, list):
                t = next((x.get("template") for x in t if x.get("name") == "default"), None)
            if isinstance(t, str):
                seed("fuzz_chat_template", f"{base}-{d}.jinja", t)
    seed("fuzz_chat_template", "small.jinja",
         "{% for m in messages %}{{ bos_token if loop.first }}{{ m['role'] | upper }}: "
         "{{ m.content | trim }}{% if not loop.last %}\n{% endif %}{% endfor %}"
         "{% if add_generation_prompt %}ASSISTANT:{% endif %}{{ tools | tojson if tools }}")

    # fuzz_spm_model: tok512.model (the Llama 2 and Mistral models, 500 KB each, load too
    # slowly to mutate).
    seed("fuzz_spm_model", "tok512.model", read("stories260K", "tok512.model"))

    for h, n in sorted(counts.items()):
        print(f"  {h}: {n} seeds")


if __name__ == "__main__":
    main()
