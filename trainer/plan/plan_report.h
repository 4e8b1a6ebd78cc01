// How a Plan (plan.h) is shown and used: the table and JSON of `dms plan`, the fit
// verdict, the switches that would lower the total, and the retrofit's early refusal.
// Sizes are printed in GiB (2^30 bytes); device memory is given in bytes.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "trainer/plan/plan.h"

namespace dms {

// "fits in 141 GiB: 77.3 GiB per device (63.7 GiB to spare)" / "does not fit in 80 GiB:
// 152.3 GiB per device exceeds it by 72.3 GiB". device_bytes > 0.
std::string fit_verdict(const Plan& p, double device_bytes);

// Options of `dms retrofit` that would lower the total, each alone and (when more than
// one applies) all together, with the total each gives; lowest total first. Only options
// not already set: --shard-optimizer (world > 1), --activation-checkpointing, --dtype
// bf16, --micro-batch 1, --train-mode adapters.
std::vector<std::pair<std::string, int64_t>> plan_reductions(const PlanInput& in);

// The table `dms plan` prints: what was planned, each part in GiB with its rule, the
// total and the phase that peaks, the verdict (device_bytes > 0) and the step FLOPs.
std::string format_plan(const PlanInput& in, const Plan& p, double device_bytes);
// The same as JSON (bytes and FLOPs as numbers; "fits" only when device_bytes > 0).
nlohmann::json plan_json(const PlanInput& in, const Plan& p, double device_bytes);

// The retrofit's check before it loads a model: InputError("<where>: ...") naming the
// total, the device memory, the largest parts and the switches that would help, when
// the plan's total exceeds device_bytes. where: the option or device the limit came from.
void require_fit(const PlanInput& in, double device_bytes, const std::string& where);

}  // namespace dms
