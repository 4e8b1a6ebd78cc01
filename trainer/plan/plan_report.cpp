#include "trainer/plan/plan_report.h"

#include <algorithm>
#include <iomanip>
#include <sstream>

#include "common/error.h"

namespace dms {

namespace {

std::string fixed(double v, int prec) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(prec) << v;
  return o.str();
}

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(size_t(i), ",");
  return s;
}

std::string sci(double v) {
  std::ostringstream o;
  o << std::scientific << std::setprecision(3) << v;
  return o.str();
}

const char* dtype_name(PlanDtype d) {
  return d == PlanDtype::bf16 ? "bf16" : "f32";
}

// The rule behind each part, as this plan applies it.
std::vector<std::string> part_rules(const PlanInput& in, const Plan& p) {
  const bool all = in.mode == TrainMode::all;
  const std::string w = in.dtype == PlanDtype::bf16 ? "2 B" : "4 B";
  const std::string S = in.shard_optimizer && in.world > 1 ? " / " + std::to_string(in.world) : "";
  std::string grads = "W x 4 B (fp32 buffer)";
  if (p.peak == "end of backward") grads += " + W x " + w + " (the backward's)";
  if (p.peak.rfind("top of backward", 0) == 0 && all) grads += " + V x D x 4 B (head's, fp32)";
  if (p.peak.rfind("backward of the last", 0) == 0 && all) grads += " + V x D x " + w + " (head's)";
  std::string optim = "W x 8 B" + S + " (AdamW m, v)";
  if (p.peak == "optimizer step") optim += " + step temporaries";
  return {"(P + A) x " + w,
          all ? "P_teacher x " + w + " (frozen copy)" : "0 (the student with eviction off)",
          grads,
          "W x 4 B" + S + " (fp32 masters)",
          optim,
          in.activation_checkpointing ? "L x N x D x a (layer inputs) + one layer recomputed"
                                      : "L layers x N positions (what backward needs)",
          "2 x N x D x a (hidden states) + gradient + KD chunks of R x V"};
}

std::string header(const PlanInput& in, const Plan& p) {
  const ParamCounts& pc = p.params;
  std::ostringstream o;
  o << "model: " << in.model.family << ", P = " << with_commas(pc.base)
    << " parameters, A = " << with_commas(pc.adapters)
    << " DMS adapter values, W = " << with_commas(pc.trained) << " trained\n"
    << "run: --train-mode " << (in.mode == TrainMode::all ? "all" : "adapters") << ", --dtype "
    << dtype_name(in.dtype) << ", T = " << in.seq_len << ", --micro-batch " << in.micro_batch
    << " (N = " << in.micro_batch * in.seq_len << " positions), --world-size " << in.world
    << (in.shard_optimizer ? ", --shard-optimizer" : "")
    << (in.activation_checkpointing ? ", --activation-checkpointing" : "") << ", "
    << (in.attention == AttentionImpl::dense ? "dense" : "blockwise") << " attention\n";
  return o.str();
}

// Parts in GiB, or in MiB when the total is under 1 GiB (small models).
std::string table(const PlanInput& in, const Plan& p) {
  const auto parts = plan_parts(p);
  const auto rules = part_rules(in, p);
  const bool large = p.total >= (int64_t(1) << 30);
  const double unit = large ? double(int64_t(1) << 30) : double(1 << 20);
  auto cell = [&](int64_t bytes) { return fixed(double(bytes) / unit, 2); };
  std::ostringstream o;
  o << "| part           | " << std::setw(10) << (large ? "GiB" : "MiB")
    << " | rule\n|----------------|------------|------\n";
  for (size_t i = 0; i < parts.size(); ++i)
    o << "| " << std::left << std::setw(14) << parts[i].first << " | " << std::right
      << std::setw(10) << cell(parts[i].second) << " | " << rules[i] << "\n";
  o << "| " << std::left << std::setw(14) << "total"
    << " | " << std::right << std::setw(10) << cell(p.total) << " | peak: " << p.peak << "\n";
  return o.str();
}

}  // namespace

std::string format_bytes(double bytes) {
  const char* units[] = {"KiB", "MiB", "GiB"};
  int u = 0;
  double v = bytes / 1024.0;
  while (u < 2 && v >= 1024.0) {
    v /= 1024.0;
    ++u;
  }
  const bool whole = std::abs(v - std::round(v)) < 1e-9;
  return (whole ? fixed(v, 0) : fixed(v, 1)) + " " + units[u];
}

std::string fit_verdict(const Plan& p, double device_bytes) {
  const std::string dev = format_bytes(device_bytes);
  if (double(p.total) <= device_bytes)
    return "fits in " + dev + ": " + format_bytes(double(p.total)) + " per device (" +
           format_bytes(device_bytes - double(p.total)) + " to spare)";
  return "does not fit in " + dev + ": " + format_bytes(double(p.total)) +
         " per device exceeds it by " + format_bytes(double(p.total) - device_bytes);
}

std::vector<std::pair<std::string, int64_t>> plan_reductions(const PlanInput& in) {
  // Only what saves at least 1% is worth naming: alone against this plan, and in the
  // combination against the switches taken before it.
  auto saves = [](const PlanInput& t, const PlanInput& from) {
    return double(plan_step(t).total) < 0.99 * double(plan_step(from).total);
  };
  std::vector<std::pair<std::string, PlanInput>> tries;
  PlanInput every = in;
  std::string names;
  int taken = 0;
  auto add = [&](const std::string& name, auto change) {
    PlanInput t = in, more = every;
    change(t);
    change(more);
    if (saves(t, in)) tries.emplace_back(name, t);
    if (!saves(more, every)) return;
    every = more;
    names += (names.empty() ? "" : " ") + name;
    ++taken;
  };
  if (!in.shard_optimizer && in.world > 1)
    add("--shard-optimizer", [](PlanInput& t) { t.shard_optimizer = true; });
  if (!in.activation_checkpointing)
    add("--activation-checkpointing", [](PlanInput& t) { t.activation_checkpointing = true; });
  if (in.dtype != PlanDtype::bf16)
    add("--dtype bf16", [](PlanInput& t) { t.dtype = PlanDtype::bf16; });
  if (in.micro_batch > 1) add("--micro-batch 1", [](PlanInput& t) { t.micro_batch = 1; });
  if (taken > 1) tries.emplace_back(names, every);
  if (in.mode == TrainMode::all) {
    PlanInput t = in;
    t.mode = TrainMode::adapters;
    if (saves(t, in)) tries.emplace_back("--train-mode adapters", t);
  }
  std::vector<std::pair<std::string, int64_t>> out;
  for (const auto& [name, t] : tries) out.emplace_back(name, plan_step(t).total);
  std::stable_sort(out.begin(), out.end(),
                   [](const auto& a, const auto& b) { return a.second < b.second; });
  return out;
}

std::string format_plan(const PlanInput& in, const Plan& p, double device_bytes) {
  std::ostringstream o;
  o << header(in, p) << table(in, p) << "phases:";
  for (size_t i = 0; i < p.phases.size(); ++i)
    o << (i ? ";" : "") << " " << p.phases[i].first << " " << fixed(gib(p.phases[i].second), 2);
  o << " GiB\n";
  if (device_bytes > 0) o << fit_verdict(p, device_bytes) << "\n";
  const double tokens = double(in.micro_batch * in.grad_accum * in.seq_len);
  o << "step FLOPs per device (" << with_commas(int64_t(tokens))
    << " tokens): " << sci(p.flops.model) << " model";
  if (p.flops.recompute > 0) o << " + " << sci(p.flops.recompute) << " recomputed";
  o << "\n";
  return o.str();
}

nlohmann::json plan_json(const PlanInput& in, const Plan& p, double device_bytes) {
  nlohmann::json parts = nlohmann::json::object();
  for (const auto& [name, bytes] : plan_parts(p)) parts[name] = bytes;
  nlohmann::json phases = nlohmann::json::object();  // bytes of every phase
  for (const auto& [name, bytes] : p.phases) phases[name] = bytes;
  nlohmann::json j = {{"family", in.model.family},
                      {"train_mode", in.mode == TrainMode::all ? "all" : "adapters"},
                      {"dtype", dtype_name(in.dtype)},
                      {"seq_len", in.seq_len},
                      {"micro_batch", in.micro_batch},
                      {"grad_accum", in.grad_accum},
                      {"world_size", in.world},
                      {"shard_optimizer", in.shard_optimizer},
                      {"activation_checkpointing", in.activation_checkpointing},
                      {"parameters",
                       {{"base", p.params.base},
                        {"adapters", p.params.adapters},
                        {"trained", p.params.trained},
                        {"teacher", p.params.teacher}}},
                      {"bytes", parts},
                      {"total_bytes", p.total},
                      {"peak", p.peak},
      {"phases", phases},
                      {"step_flops", {{"model", p.flops.model}, {"recompute", p.flops.recompute}}}};
  if (device_bytes > 0) {
    j["device_bytes"] = device_bytes;
    j["fits"] = double(p.total) <= device_bytes;
  }
  return j;
}

void require_fit(const PlanInput& in, double device_bytes, const std::string& where) {
  const Plan p = plan_step(in);
  if (device_bytes <= 0 || double(p.total) <= device_bytes) return;
  auto parts = plan_parts(p);
  std::stable_sort(parts.begin(), parts.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::string msg = fit_verdict(p, device_bytes) + " (largest parts: ";
  for (size_t i = 0; i < 3 && i < parts.size(); ++i)
    msg += (i ? ", " : "") + parts[i].first + " " + format_bytes(double(parts[i].second));
  msg += ")";
  const auto cuts = plan_reductions(in);
  std::string helps;
  for (const auto& [name, total] : cuts)
    if (double(total) <= device_bytes)
      helps += (helps.empty() ? "" : "; ") + name + ": " + format_bytes(double(total));
  if (!helps.empty())
    msg += "; would fit with " + helps;
  else if (!cuts.empty())
    msg += "; lowest with " + cuts.front().first + ": " +
           format_bytes(double(cuts.front().second)) +
           ", still too much (more ranks with --shard-optimizer, or a shorter sequence)";
  throw InputError(where + ": " + msg + " (dms plan shows every part)");
}

}  // namespace dms
