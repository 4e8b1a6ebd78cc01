#include "data/spm_shim.h"

#include <sentencepiece_processor.h>

#include <string>
#include <vector>

using sentencepiece::SentencePieceProcessor;

extern "C" {

static void report(dms_spm_bytes_cb err, void* ctx, const std::string& s) {
  if (err) err(ctx, s.data(), s.size());
}

void* dms_spm_load(const char* path, dms_spm_bytes_cb err, void* ctx) {
  auto* sp = new SentencePieceProcessor();
  auto status = sp->Load(path);
  if (!status.ok()) {
    report(err, ctx, status.ToString());
    delete sp;
    return nullptr;
  }
  return sp;
}

void dms_spm_free(void* h) {
  delete static_cast<SentencePieceProcessor*>(h);
}

int dms_spm_special(void* h, int which) {
  auto* sp = static_cast<SentencePieceProcessor*>(h);
  switch (which) {
    case 0:
      return sp->GetPieceSize();
    case 1:
      return sp->bos_id();
    case 2:
      return sp->eos_id();
    case 3:
      return sp->unk_id();
    default:
      return sp->pad_id();
  }
}

int dms_spm_encode(void* h, const char* text, size_t len, dms_spm_ids_cb out, void* ctx,
                   dms_spm_bytes_cb err) {
  std::vector<int> ids;
  auto status = static_cast<SentencePieceProcessor*>(h)->Encode(std::string(text, len), &ids);
  if (!status.ok()) return report(err, ctx, status.ToString()), 1;
  out(ctx, ids.data(), ids.size());
  return 0;
}

int dms_spm_encode_pieces(void* h, const char* text, size_t len, dms_spm_bytes_cb piece, void* ctx,
                          dms_spm_bytes_cb err) {
  std::vector<std::string> pieces;
  auto status = static_cast<SentencePieceProcessor*>(h)->Encode(std::string(text, len), &pieces);
  if (!status.ok()) return report(err, ctx, status.ToString()), 1;
  for (const auto& p : pieces) piece(ctx, p.data(), p.size());
  return 0;
}

int dms_spm_decode(void* h, const int* ids, size_t n, dms_spm_bytes_cb out, void* ctx,
                   dms_spm_bytes_cb err) {
  std::string text;
  auto status =
      static_cast<SentencePieceProcessor*>(h)->Decode(std::vector<int>(ids, ids + n), &text);
  if (!status.ok()) return report(err, ctx, status.ToString()), 1;
  out(ctx, text.data(), text.size());
  return 0;
}

void dms_spm_id_to_piece(void* h, int id, dms_spm_bytes_cb out, void* ctx) {
  const std::string p = static_cast<SentencePieceProcessor*>(h)->IdToPiece(id);
  out(ctx, p.data(), p.size());
}
}
