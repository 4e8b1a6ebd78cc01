#include "trainer/config/retrofit_config.h"

#include <sstream>

#include "common/error.h"
#include "trainer/monitor/alerts.h"

namespace dms {

namespace {

using C = RetrofitConfig;
using F = Field<C>;

// Largest sizes we accept for counts of steps, rows and tokens: far beyond any real run,
// small enough that products of two of them cannot overflow int64.
constexpr double kMaxSteps = 1e9;
constexpr double kMaxTokens = 1 << 24;  // positions in a row, window, tile sizes
constexpr double kMaxBatch = 1 << 16;

std::string nonempty(const std::string& s) {
  return s.empty() ? "must not be empty" : "";
}

std::vector<F> run_fields() {
  return {
      // A resume may find the base elsewhere: its identity is checked by sha256 instead.
      text<C>("model", &C::run, &RunSection::model, "Model: HF directory or llama2.c .bin",
              nonempty)
          .must()
          .resume(OnResume::free),
      text<C>("data", &C::run, &RunSection::data,
              "Training tokens (.h5 from 'dms data prepare/sample', or a .bin token stream)",
              nonempty)
          .must(),
      text<C>("val-data", &C::run, &RunSection::val_data,
              "Held-out tokens (default: <data>.val.h5 if present)"),
      flag<C>("trust-token-files", &C::run, &RunSection::trust_token_files,
              "Read HDF5 token files (--data, --val-data) that carry no dms seal (another tool "
              "wrote them) or whose seal does not match; HDF5 then parses them unchecked")
          .resume(OnResume::free),
      text<C>("teacher", &C::run, &RunSection::teacher,
              "Full-weight mode: teacher model (same tokenizer; default: the base model)"),
      number<C>("seq-len", &C::run, &RunSection::seq_len, between(0, kMaxTokens),
                "Row length for .bin token streams (nanoGPT/llm.c; HDF5 files carry theirs)"),
      text<C>("out", &C::run, &RunSection::out, "Run directory (must be empty unless --resume)",
              nonempty)
          .must()
          .resume(OnResume::free),  // a run directory may be moved
      flag<C>("resume", &C::run, &RunSection::resume,
              "Continue the run in --out from its newest valid checkpoint")
          .resume(OnResume::free)
          .unsaved(),
      number<C>("seed", &C::run, &RunSection::seed, any_finite(),
                "Seed of the data order and the decision noise"),
      number<C>(
          "threads", &C::run, &RunSection::threads, between(0, 1024),
          "CPU threads per process (0: the usable cores shared among the ranks of this host, one "
          "fewer for each core other processes take)")
          .resume(OnResume::free),
  };
}

std::vector<F> dms_fields() {
  return {
      number<C>("target-cr", &C::dms, &DmsSection::target_cr, between(1, 1e6),
                "Final target decision compression ratio"),
      number<C>("final-step", &C::dms, &DmsSection::final_step, between(0, kMaxSteps),
                "Step at which the target is reached (0: 90% of --max-steps)"),
      number<C>("window", &C::dms, &DmsSection::window, between(0, kMaxTokens),
                "Eviction delay window w (tokens)"),
      number<C>("tau", &C::dms, &DmsSection::tau, {0, 1e3, true, false},
                "Temperature of the soft decisions"),
      number<C>("scale", &C::dms, &DmsSection::scale, {0, 1e6, true, false},
                "Decision logit scale s"),
      number<C>("offset", &C::dms, &DmsSection::offset, between(-1e6, 1e6),
                "Decision logit offset o (z = -o at init)"),
      choice<C>("predictor", &C::dms, &DmsSection::predictor,
                {{"adapter", DmsPredictor::adapter},
                 {"query_neuron", DmsPredictor::query_neuron},
                 {"query-neuron", DmsPredictor::query_neuron}},
                "Decision predictor: adapter (new K x D projection) | query_neuron (DMC-style)"),
      choice<C>("alpha-per", &C::dms, &DmsSection::alpha_per,
                {{"head", AlphaPer::head}, {"layer", AlphaPer::layer}},
                "Decisions per KV 'head' or per 'layer'"),
      choice<C>("train-mode", &C::dms, &DmsSection::train_mode,
                {{"adapters", TrainMode::adapters}, {"all", TrainMode::all}},
                "adapters (frozen shared base) | all (full fine-tune, frozen teacher copy)"),
  };
}

std::vector<F> optim_fields() {
  using O = OptimSection;
  return {
      number<C>("max-steps", &C::optim, &O::max_steps, between(1, kMaxSteps), "Optimizer steps")
          .resume(OnResume::grow),
      number<C>("micro-batch", &C::optim, &O::micro_batch, between(1, kMaxBatch),
                "Rows per forward/backward")
          .resume(OnResume::batch),
      number<C>("grad-accum", &C::optim, &O::grad_accum, between(1, kMaxBatch),
                "Micro-batches per optimizer step")
          .resume(OnResume::batch),
      number<C>("lr", &C::optim, &O::lr, between(0, 10), "Peak learning rate"),
      choice<C>("lr-schedule", &C::optim, &O::lr_schedule,
                {{"constant", LrScheduleKind::constant},
                 {"warmup", LrScheduleKind::warmup},
                 {"cosine", LrScheduleKind::cosine}},
                "constant | warmup (linear, then constant) | cosine (warmup, then cosine decay)"),
      number<C>("warmup-steps", &C::optim, &O::warmup_steps, between(0, kMaxSteps),
                "Linear warmup steps"),
      number<C>("min-lr-ratio", &C::optim, &O::min_lr_ratio, between(0, 1),
                "Cosine floor as a fraction of --lr"),
      number<C>("beta1", &C::optim, &O::beta1, {0, 1, false, true}, "AdamW beta1"),
      number<C>("beta2", &C::optim, &O::beta2, {0, 1, false, true}, "AdamW beta2"),
      number<C>("weight-decay", &C::optim, &O::weight_decay, between(0, 1e3),
                "AdamW decoupled weight decay"),
      number<C>("clip", &C::optim, &O::clip, between(0, 1e9), "Global gradient-norm clip (0: off)"),
      choice<C>("kd-direction", &C::optim, &O::kd_direction,
                {{"student_teacher", KdDirection::student_teacher},
                 {"teacher_student", KdDirection::teacher_student},
                 {"forward", KdDirection::student_teacher},
                 {"reverse", KdDirection::teacher_student}},
                "student_teacher: KL(p_s||p_t) | teacher_student: KL(p_t||p_s)"),
      number<C>("dms-weight", &C::optim, &O::dms_weight, between(0, 1e6), "Weight of the DMS loss"),
      number<C>("kd-chunk", &C::optim, &O::kd_chunk, between(0, kMaxTokens * kMaxBatch),
                "Positions per KD-loss chunk (0: about 1 MiB of logits each)"),
      choice<C>("attention", &C::optim, &O::attention,
                {{"blockwise", AttentionImpl::blockwise}, {"dense", AttentionImpl::dense}},
                "blockwise (memory O(T), default) | dense (materialises [T, T]; the reference)"),
      number<C>("attn-block-q", &C::optim, &O::attn_block_q, between(1, kMaxTokens),
                "Blockwise attention: query rows per tile"),
      number<C>("attn-block-k", &C::optim, &O::attn_block_k, between(1, kMaxTokens),
                "Blockwise attention: keys per tile"),
      choice<C>(
          "dtype", &C::optim, &O::dtype,
          {{"auto", DtypeKind::automatic}, {"f32", DtypeKind::f32}, {"bf16", DtypeKind::bf16}},
          "f32 | bf16 (bf16 weights and activations, fp32 master weights, losses and "
          "reductions) | auto (bf16 on CUDA, f32 on CPU)")
          .resume(OnResume::free),
      flag<C>("activation-checkpointing", &C::optim, &O::activation_checkpointing,
              "Keep only each decoder layer's input; recompute the layer in backward")
          .resume(OnResume::free),
  };
}

std::string alert_list_rule(const std::string& s) {
  std::stringstream in(s);
  std::string kind;
  while (std::getline(in, kind, ','))
    if (!is_alert_kind(kind) && kind != "all" && kind != "none")
      return "unknown alert kind '" + kind + "' (nan, kd_spike, grad_explosion, cr_lag, all, none)";
  return "";
}

std::vector<F> monitor_fields() {
  using M = MonitorSection;
  const auto free = OnResume::free;
  return {
      number<C>("log-every", &C::monitor, &M::log_every, between(1, kMaxSteps),
                "Steps between metrics.jsonl records")
          .resume(free),
      number<C>("eval-every", &C::monitor, &M::eval_every, between(1, kMaxSteps),
                "Steps between validations")
          .resume(free),
      number<C>("eval-batches", &C::monitor, &M::eval_batches, between(1, kMaxBatch),
                "Micro-batches per validation")
          .resume(free),
      number<C>("checkpoint-every", &C::monitor, &M::checkpoint_every, between(1, kMaxSteps),
                "Steps between checkpoints")
          .resume(free),
      number<C>("keep-checkpoints", &C::monitor, &M::keep_checkpoints, between(0, 1e6),
                "Checkpoints kept (0: all)")
          .resume(free),
      numbers<C>("keep-at-cr", &C::monitor, &M::keep_at_cr, between(1, 1e6),
                 "Also keep, whatever --keep-checkpoints says, the checkpoint at which the "
                 "scheduled CR first reaches each of these (e.g. 2,4,8): the quality-vs-KV-memory "
                 "curve of 'dms eval --curve'")
          .resume(free),
      choice<C>(
          "on-checkpoint-error", &C::monitor, &M::on_checkpoint_error,
          {{"stop", CheckpointErrorPolicy::stop}, {"continue", CheckpointErrorPolicy::keep_going}},
          "stop | continue (training goes on; the run ends with an error)")
          .resume(free),
      flag<C>("tensorboard", &C::monitor, &M::tensorboard,
              "Write TensorBoard event files into the run directory")
          .resume(free),
      number<C>("alert-kd-spike", &C::monitor, &M::alert_kd_spike, above(0),
                "Alert when KD loss exceeds this x its running median")
          .resume(free),
      number<C>("alert-grad", &C::monitor, &M::alert_grad, above(0),
                "Alert when the gradient norm exceeds this x its running median")
          .resume(free),
      number<C>("alert-cr-margin", &C::monitor, &M::alert_cr_margin, between(0, 1),
                "Alert when validation CR < target x (1 - margin) ...")
          .resume(free),
      number<C>("alert-cr-evals", &C::monitor, &M::alert_cr_evals, between(1, 1e6),
                "... for this many validations in a row")
          .resume(free),
      text<C>("stop-on-alert", &C::monitor, &M::stop_on_alert,
              "Alert kinds that stop the run: comma list of nan,kd_spike,grad_explosion,cr_lag "
              "| all | none",
              alert_list_rule)
          .resume(free),
  };
}

std::vector<F> dist_fields() {
  const auto free = OnResume::free;
  return {
      number<C>("nproc", &C::dist, &DistSection::nproc, between(1, 1024),
                "Spawn and supervise N local worker processes")
          .resume(free)
          .unsaved(),
      choice<C>("backend", &C::dist, &DistSection::backend,
                {{"auto", BackendKind::automatic},
                 {"gloo", BackendKind::gloo},
                 {"nccl", BackendKind::nccl}},
                "gloo | nccl | auto (nccl on CUDA builds with a GPU)")
          .resume(free),
      choice<C>(
          "device", &C::dist, &DistSection::device,
          {{"auto", DeviceKind::automatic}, {"cpu", DeviceKind::cpu}, {"cuda", DeviceKind::cuda}},
          "cpu | cuda | auto (cuda:LOCAL_RANK when present)")
          .resume(free),
      number<C>("dist-timeout", &C::dist, &DistSection::timeout_s, {0, 1e6, true, false},
                "Seconds before a collective gives up on a lost rank")
          .resume(free),
      number<C>("checksum-every", &C::dist, &DistSection::checksum_every, between(0, kMaxSteps),
                "Steps between cross-rank parameter checks (0: off)")
          .resume(free),
      flag<C>("shard-optimizer", &C::dist, &DistSection::shard_optimizer,
              "ZeRO-1: split AdamW moments and fp32 master weights across ranks")
          .resume(free),
      number<C>("device-memory", &C::dist, &DistSection::device_memory_gib, between(0, 1e6),
                "GiB per device that the fit check assumes (0: what the device has)")
          .resume(free),
  };
}

std::vector<F> build_table() {
  std::vector<F> all;
  auto add = [&](const char* group, std::vector<F> fs) {
    for (auto& f : fs) {
      f.group = group;
      all.push_back(std::move(f));
    }
  };
  add("Run", run_fields());
  add("DMS", dms_fields());
  add("Optimisation", optim_fields());
  add("Monitoring", monitor_fields());
  add("Distributed", dist_fields());
  return all;
}

}  // namespace

const std::vector<Field<RetrofitConfig>>& retrofit_fields() {
  static const std::vector<F> table = build_table();
  return table;
}

bool computes_in_bf16(DtypeKind kind, bool cuda) {
  return kind == DtypeKind::bf16 || (kind == DtypeKind::automatic && cuda);
}

std::string backend_name(BackendKind b) {
  return b == BackendKind::gloo ? "gloo" : b == BackendKind::nccl ? "nccl" : "auto";
}

void RetrofitConfig::validate() const {
  std::vector<std::string> p = field_problems(retrofit_fields(), *this);
  if (dms.predictor == DmsPredictor::query_neuron && dms.train_mode == TrainMode::adapters)
    p.push_back("--predictor: query_neuron has no adapter weights: use --train-mode all with it");
  if (optim.attention == AttentionImpl::blockwise && optim.attn_block_q * optim.attn_block_k > 1e9)
    p.push_back("--attn-block-q/--attn-block-k: a tile of " + std::to_string(optim.attn_block_q) +
                " x " + std::to_string(optim.attn_block_k) + " scores is too large");
  if (!run.teacher.empty() && dms.train_mode != TrainMode::all)
    p.push_back(
        "--teacher: only with --train-mode all (adapter mode's teacher is the frozen base)");
  for (double c : monitor.keep_at_cr)
    if (c > dms.target_cr) {
      p.push_back("--keep-at-cr: " + format_number(c) + " is above --target-cr " +
                  format_number(dms.target_cr) + " (the schedule never reaches it)");
      break;
    }
  if (!p.empty()) throw InputError(join_problems(p));
}

int64_t RetrofitConfig::final_step() const {
  return dms.final_step > 0 ? dms.final_step : std::max<int64_t>(1, optim.max_steps * 9 / 10);
}

DmsConfig RetrofitConfig::dms_config() const {
  DmsConfig d;
  d.window = dms.window;
  d.tau = dms.tau;
  d.scale = dms.scale;
  d.offset = dms.offset;
  d.predictor = dms.predictor;
  d.per_layer = dms.alpha_per == AlphaPer::layer;
  d.target_cr = dms.target_cr;
  return d;
}

nlohmann::json RetrofitConfig::to_json() const {
  nlohmann::json j = fields_to_json(retrofit_fields(), *this);
  j["final_step"] = final_step();  // resolved, so a resume with more steps keeps the schedule
  return j;
}

RetrofitConfig RetrofitConfig::from_json(const nlohmann::json& j, const std::string& where) {
  std::vector<std::string> problems;
  nlohmann::json k = j;
  // Written before the option tables: the one key whose name changed.
  if (k.is_object() && k.contains("dist_timeout_s") && !k.contains("dist_timeout")) {
    k["dist_timeout"] = k["dist_timeout_s"];
    k.erase("dist_timeout_s");
  }
  RetrofitConfig c = fields_from_json(retrofit_fields(), k, problems);
  require(problems.empty(), where, "run configuration: " + join_problems(problems));
  return c;
}

std::vector<std::string> resume_conflicts(const RetrofitConfig& saved, int64_t saved_world,
                                          const RetrofitConfig& now, int64_t world,
                                          int64_t checkpoint_step) {
  std::vector<std::string> out;
  for (const auto& f : retrofit_fields()) {
    if (!f.saved || f.on_resume == OnResume::free) continue;
    const nlohmann::json a = f.get(saved), b = f.get(now);
    const std::string change = " (" + a.dump() + " -> " + b.dump() + ")";
    if (f.on_resume == OnResume::fixed && a != b && f.name != "final-step")
      out.push_back("--" + f.name + change);
    if (f.on_resume == OnResume::grow && b.get<double>() < double(checkpoint_step))
      out.push_back("--" + f.name + change + " is below the checkpoint's step " +
                    std::to_string(checkpoint_step));
  }
  if (saved.final_step() != now.final_step())
    out.push_back("--final-step (" + std::to_string(saved.final_step()) + " -> " +
                  std::to_string(now.final_step()) + ")");
  const int64_t g0 = saved.optim.micro_batch * saved.optim.grad_accum * saved_world;
  const int64_t g1 = now.optim.micro_batch * now.optim.grad_accum * world;
  if (g0 != g1)
    out.push_back("global batch (micro-batch x grad-accum x ranks: " + std::to_string(g0) + " -> " +
                  std::to_string(g1) + ")");
  return out;
}

void RetrofitConfig::check_parsed(const std::vector<std::string>& parse_errors) const {
  std::vector<std::string> problems = parse_errors;
  if (problems.empty()) {
    try {
      validate();
    } catch (const InputError& e) {
      problems.push_back(e.what());
    }
  }
  if (!problems.empty()) throw InputError(join_problems(problems));
}

}  // namespace dms
