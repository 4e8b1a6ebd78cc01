// C interface of the SentencePiece shim module (libdms_spm.so).
//
// Why a shim: Debian's libsentencepiece carries its own protobuf-lite 3.14 and
// exports those symbols, while libtorch loads the system libprotobuf 3.21. Linked
// into one process they interpose each other's symbols and crash at start-up. The
// shim links sentencepiece and is dlopen()ed with RTLD_LOCAL | RTLD_DEEPBIND, so
// each side keeps its own protobuf. Strings cross the boundary through callbacks,
// so no allocation is freed on the other side.
#pragma once
#include <stddef.h>

extern "C" {
typedef void (*dms_spm_bytes_cb)(void* ctx, const char* data, size_t len);
typedef void (*dms_spm_ids_cb)(void* ctx, const int* ids, size_t n);

// Returns a handle, or null with the reason passed to `err`.
void* dms_spm_load(const char* path, dms_spm_bytes_cb err, void* ctx);
void dms_spm_free(void* h);
// 0 piece_size, 1 bos, 2 eos, 3 unk, 4 pad
int dms_spm_special(void* h, int which);
// Each returns 0 on success; on failure the message goes to `err`.
int dms_spm_encode(void* h, const char* text, size_t len, dms_spm_ids_cb out, void* ctx,
                   dms_spm_bytes_cb err);
int dms_spm_encode_pieces(void* h, const char* text, size_t len, dms_spm_bytes_cb piece, void* ctx,
                          dms_spm_bytes_cb err);
int dms_spm_decode(void* h, const int* ids, size_t n, dms_spm_bytes_cb out, void* ctx,
                   dms_spm_bytes_cb err);
void dms_spm_id_to_piece(void* h, int id, dms_spm_bytes_cb out, void* ctx);
}
