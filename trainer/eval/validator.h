// Held-out validation during a retrofit: teacher-forced rows, the student under hard
// eviction (eval mode, no noise) against the teacher — KD, the student's next-token NLL,
// and compression per layer and head.
#pragma once
#include "data/token_file.h"
#include "model/transformer.h"
#include "trainer/train/losses.h"
#include "trainer/monitor/sinks.h"

namespace dms {

struct ValidationOptions {
  int64_t rows = 64;        // held-out rows used (at most the file's)
  int64_t micro_batch = 4;  // rows per forward
  KdDirection kd_direction = KdDirection::student_teacher;
  int64_t kd_chunk = 0;
  AttentionImpl attention = AttentionImpl::blockwise;
  AttentionBlocks blocks;
};

// -> the record of step 0 (the caller sets the step).
ValidationRecord validate_heldout(const Model& student, const Model& teacher, const TokenData& val,
                                  const ValidationOptions& o);

}  // namespace dms
