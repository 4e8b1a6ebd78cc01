// Fault injection for the fault tests, as one explicit component: read once from the
// environment when a run starts, consulted at the two places a fault can be simulated.
//   DMS_TEST_FAIL_CHECKPOINT_AT=S       the checkpoint after step S fails to write
//   DMS_TEST_INJECT=nan@S,spike@S,...   the KD loss the alert monitor sees at step S is
//                                       NaN / 1000x (the update itself is untouched)
#pragma once
#include <cstdint>
#include <set>

namespace dms {

struct FaultInjection {
  int64_t fail_checkpoint_at = -1;
  std::set<int64_t> nan_at, spike_at;

  // InputError naming the variable when its value does not parse.
  static FaultInjection from_env();
  // Throws the simulated write failure for step `step_done`.
  void before_checkpoint(int64_t step_done) const;
  // The KD loss the alert monitor sees after step `step_done`.
  double monitored_kd(int64_t step_done, double kd) const;
};

}  // namespace dms
