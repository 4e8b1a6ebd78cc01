#include "trainer/trainer.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <signal.h>
#include <torch/cuda.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include "checkpoints/hf_config.h"
#include "checkpoints/load_model.h"
#include "checkpoints/model_identity.h"
#include "common/atomic_file.h"
#include "common/dir_lock.h"
#include "common/error.h"
#include "common/host.h"
#include "common/mapped_file.h"
#include "common/thread_governor.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "trainer/dist/distributed.h"
#include "trainer/eval/validator.h"
#include "trainer/monitor/alerts.h"
#include "trainer/monitor/sinks.h"
#include "trainer/plan/device_memory.h"
#include "trainer/plan/plan_report.h"
#include "trainer/train/checkpointer.h"
#include "trainer/train/faults.h"
#include "trainer/train/optimizer.h"
#include "trainer/train/schedule.h"
#include "trainer/train/step.h"
#include "trainer/train/teacher.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string fmt(double v, int prec) {
  std::ostringstream o;
  o.precision(prec);
  o << v;
  return o.str();
}

std::atomic<int> g_stop_signal{0};
void on_stop_signal(int sig) {
  g_stop_signal = sig;
}

void catch_stop_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

// cpu | cuda | auto. auto: cuda:LOCAL_RANK when this LibTorch has CUDA and the machine has a
// device for every process on it (every rank of a node gets the same answer, so all choose
// the same backend), else the CPU.
at::Device pick_device(DeviceKind kind, const DistEnv& env) {
  if (kind == DeviceKind::cpu) return at::Device(at::kCPU);
  const int devices = int(torch::cuda::device_count());
  if (kind == DeviceKind::cuda) {
    require(devices > 0, "--device", "this build or machine has no CUDA device");
    require(env.local_rank < devices, "--device",
            "cuda:" + std::to_string(env.local_rank) +
                " (LOCAL_RANK) does not exist: this machine has " + std::to_string(devices) +
                " CUDA device(s)");
  } else if (devices < env.local_world) {
    return at::Device(at::kCPU);
  }
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
}

// The models' compute dtype: --dtype, or bf16 on CUDA and f32 on CPU.
at::ScalarType compute_dtype(DtypeKind kind, const at::Device& device) {
  return computes_in_bf16(kind, device.is_cuda()) ? at::kBFloat16 : at::kFloat;
}

// Sum of every trained value, for the cross-rank consistency check.
double parameter_checksum(const NamedTensors& trained) {
  double s = 0;
  for (const auto& [n, t] : trained) s += t.detach().to(at::kDouble).sum().item<double>();
  return s;
}

// The models of a retrofit: the student with DMS, its teacher, and what trains. Every
// weight is held in the compute dtype (bf16 halves the frozen base and the teacher).
struct Models {
  Model student, teacher_copy;     // teacher_copy only in train mode "all"
  const Model* teacher = nullptr;  // == &student in adapter mode (eviction off)
  NamedTensors trained;            // name -> tensor (requires_grad)
  std::vector<at::Tensor> params;
  at::ScalarType dtype = at::kFloat;

  void load(const RetrofitConfig& cfg, at::ScalarType compute) {
    dtype = compute;
    LoadOptions lo;
    lo.dtype = dtype;
    student = load_model(cfg.run.model, lo);
    require(!student.dms.enabled, cfg.run.model,
            "already has DMS predictors (retrofit the original)");
    if (!cfg.run.teacher.empty())  // before any weights move: a wrong teacher costs nothing
      require_same_tokenizer(cfg.run.teacher, read_model_config(cfg.run.teacher).vocab_size,
                             cfg.run.model, student.config.vocab_size);
  }
  void attach(const RetrofitConfig& cfg, const at::Device& device) {
    move_to(student, device);
    attach_dms(student, cfg.dms_config());
    cast_to(student, dtype);  // the new adapters too
    if (cfg.dms.train_mode == TrainMode::adapters) {
      teacher = &student;  // the same weights with eviction off
      for (auto& [n, t] : named_dms_weights(student)) trained.emplace_back(n, *t);
    } else {
      const std::string& path = cfg.run.teacher.empty() ? cfg.run.model : cfg.run.teacher;
      teacher_copy = load_teacher(path, cfg.run.model, student.config, dtype);
      move_to(teacher_copy, device);
      teacher = &teacher_copy;
      for (auto& [n, t] : named_weights(student)) trained.emplace_back(n, *t);
    }
    for (auto& [n, t] : trained) {
      t.requires_grad_(true);
      params.push_back(t);
    }
  }
};

class Trainer {
 public:
  explicit Trainer(const RetrofitConfig& cfg);
  int run();

 private:
  void open_data(const ModelConfig& mc);
  void check_memory(const ModelConfig& mc) const;
  void build_optimization();
  void resume();
  void open_run_directory();
  void train_step(int64_t step);
  void raise_alerts(int64_t step_done, const std::vector<Alert>& found);
  void check_replicas(int64_t step_done);
  void validate(int64_t step_done);
  void checkpoint(int64_t step_done, double kept_for_cr = 0);
  TrainState state(int64_t step_done) const;
  void restore(const Checkpoint& c);
  int interrupted(int64_t step_done);
  int finished();
  StepInputs step_inputs();

  RetrofitConfig cfg_;
  std::unique_ptr<DirLock> run_lock_;        // rank 0; released last
  std::unique_ptr<ThreadGovernor> threads_;  // the default count beside co-tenants (CPU)
  DistEnv env_;
  std::unique_ptr<Dist> dist_;
  bool lead_ = true;
  at::Device device_{at::kCPU};
  FaultInjection faults_;
  Models models_;
  TokenData data_;
  std::unique_ptr<TokenData> val_;
  std::string val_path_;
  std::string base_json_;  // the base model's identity (rank 0, which writes checkpoints)
  int64_t T_ = 0, global_batch_ = 0;
  std::unique_ptr<BatchLoader> loader_;
  std::unique_ptr<Optimizer> opt_;
  CrSchedule cr_;
  std::map<int64_t, double> keep_at_;  // step done -> the CR its checkpoint is kept for
  LrSchedule lr_;
  std::unique_ptr<Checkpointer> checkpoints_;
  std::unique_ptr<AlertMonitor> alerts_;
  std::unique_ptr<MetricsSinks> sinks_;  // rank 0 only
  int64_t start_ = 0, tokens_seen_ = 0, unsaved_step_ = 0;
  bool stop_requested_ = false;
  Clock::time_point t0_;
  double allreduce_total_ = 0, step_total_ = 0;
};

Trainer::Trainer(const RetrofitConfig& cfg) : cfg_(cfg) {
  cfg_.validate();
  faults_ = FaultInjection::from_env();
  if (cfg_.run.threads > 0) use_threads(cfg_.run.threads);
  env_ = detect_dist_env();
  // One process writes a run directory: rank 0 locks it before anything looks inside, so a
  // second retrofit on the same --out is refused instead of tearing the first one's files.
  if (env_.rank == 0) run_lock_ = std::make_unique<DirLock>(cfg_.run.out, "dms retrofit");
  // Every rank checks the run directory itself (shared file system), so all agree.
  const fs::path run(cfg_.run.out);
  if (fs::exists(run) && !empty_but_lock(run.string()) && !cfg_.run.resume)
    throw InputError(cfg_.run.out + ": run directory is not empty (pass --resume to continue it)");
  device_ = pick_device(cfg_.dist.device, env_);
  if (!device_.is_cuda()) threads_ = ThreadGovernor::for_default(cfg_.run.threads);
  dist_ = Dist::join(env_, backend_name(cfg_.dist.backend),
                     std::chrono::milliseconds(int64_t(cfg_.dist.timeout_s * 1000)), device_);
  lead_ = dist_->rank() == 0;
  // The configurations and the token files first: a run that cannot fit is refused before
  // any weight is read.
  const ModelConfig config = read_model_config(cfg_.run.model);
  open_data(config);
  check_memory(config);
  models_.load(cfg_, compute_dtype(cfg_.optim.dtype, device_));
  if (lead_) base_json_ = identify_model(cfg_.run.model).to_json().dump();
  models_.attach(cfg_, device_);
  build_optimization();
  checkpoints_ =
      std::make_unique<Checkpointer>(cfg_.run.out, cfg_.monitor.keep_checkpoints, faults_, *dist_);
  if (cfg_.run.resume) resume();  // may adopt the checkpoint's final step
  cr_ = CrSchedule{1.0, cfg_.dms.target_cr, cfg_.final_step()};
  // A step's model has trained at the step's scheduled CR: its checkpoint is that CR's.
  for (double c : cfg_.monitor.keep_at_cr) {
    const int64_t s = cr_.first_step_reaching(c);
    if (s >= 0 && s < cfg_.optim.max_steps) keep_at_[s + 1] = std::max(keep_at_[s + 1], c);
  }
  alerts_ = std::make_unique<AlertMonitor>(AlertConfig{
      cfg_.monitor.alert_kd_spike, cfg_.monitor.alert_grad, 50, 10, cfg_.monitor.alert_cr_margin,
      cfg_.monitor.alert_cr_evals, cfg_.monitor.stop_on_alert});
  if (lead_) open_run_directory();
  dist_->barrier();
}

void Trainer::open_data(const ModelConfig& mc) {
  const TokenTrust trust = cfg_.run.trust_token_files ? TokenTrust::trust : TokenTrust::verify;
  data_ = open_tokens(cfg_.run.data, cfg_.run.seq_len, "uint16", trust);
  validate_tokens(data_, mc.vocab_size, mc.max_position);
  val_path_ = cfg_.run.val_data.empty() ? validation_path(cfg_.run.data) : cfg_.run.val_data;
  // The one beside the data is optional; one the user named must be there.
  if (!cfg_.run.val_data.empty()) require_regular_file(cfg_.run.val_data);
  if (fs::exists(val_path_)) {  // every rank: whether to validate must agree across ranks
    TokenData v = open_tokens(val_path_, cfg_.run.seq_len, "uint16", trust);
    if (v.n_rows > 0) {
      validate_tokens(v, mc.vocab_size, mc.max_position);
      val_ = std::make_unique<TokenData>(std::move(v));
    }
  }
  T_ = data_.seq_len;
  if (lead_ && cfg_.dms.window >= T_)
    std::cerr << "warning: window " << cfg_.dms.window << " >= sequence length " << T_
              << ": no token can be evicted within a training row\n";
}

// The step's memory per device (trainer/plan) against what the device has: InputError
// naming the parts and the switches that would fit, before anything large is allocated.
void Trainer::check_memory(const ModelConfig& mc) const {
  const std::string& tp = cfg_.run.teacher;
  const ModelConfig teacher = tp.empty() ? mc : read_model_config(tp);
  const DeviceMemory mem = device_memory(device_, cfg_.dist.device_memory_gib);
  require_fit(plan_input(cfg_, mc, teacher, T_, dist_->world(), device_.is_cuda()), mem.bytes,
              mem.source);
}

void Trainer::build_optimization() {
  const OptimSection& o = cfg_.optim;
  opt_ = std::make_unique<Optimizer>(
      models_.trained, AdamWOptions{o.beta1, o.beta2, 1e-8, o.weight_decay},
      ShardPlan{dist_->rank(), dist_->world(), cfg_.dist.shard_optimizer});
  lr_ = LrSchedule{o.lr_schedule, o.lr, o.warmup_steps, o.max_steps, o.min_lr_ratio};
  // The global batch defines the data order and the noise; ranks take equal slices.
  global_batch_ = o.micro_batch * o.grad_accum * dist_->world();
  loader_ = std::make_unique<BatchLoader>(data_, global_batch_, cfg_.run.seed, dist_->rank(),
                                          dist_->world());
}

// Continues from the newest usable checkpoint, which must have been written by this same
// configuration (up to what OnResume allows); otherwise nothing is touched and exit 2.
void Trainer::resume() {
  std::optional<Checkpoint> c = checkpoints_->newest_usable(*opt_);
  require(c.has_value(), cfg_.run.out,
          "--resume: no usable checkpoint in " + (fs::path(cfg_.run.out) / "checkpoints").string() +
              " (nothing was changed)");
  RetrofitConfig saved =
      RetrofitConfig::from_json(nlohmann::json::parse(c->state.config_json), c->path);
  if (cfg_.dms.final_step == 0) cfg_.dms.final_step = saved.final_step();  // keep the schedule
  const auto conflicts =
      resume_conflicts(saved, c->state.world_size, cfg_, dist_->world(), c->state.step);
  require(conflicts.empty(), c->path,
          "--resume with a changed configuration: " + join_problems(conflicts) +
              " (nothing was changed; start a new run in another --out to train differently)");
  // The base model must be the one the checkpoint was trained from (rank 0 hashed it).
  std::string changed;
  if (lead_ && !c->state.base_json.empty()) {
    const auto was = ModelIdentity::from_json(nlohmann::json::parse(c->state.base_json), c->path);
    const auto now = nlohmann::json::parse(base_json_);
    if (now["sha256"] != was.sha256) changed = was.path;
  }
  at::Tensor flag = at::full({1}, changed.empty() ? 0.0 : 1.0, at::kDouble);
  dist_->all_reduce_sum({flag});
  require(flag.item<double>() == 0, cfg_.run.model,
          "--resume: this is not the base model the checkpoint was trained from" +
              (changed.empty() ? std::string() : " (" + changed + ", by sha256)"));
  restore(*c);
  if (lead_)
    std::cerr << "resuming from " << c->path << " (step " << c->state.step << ", written by "
              << c->state.world_size << " rank" << (c->state.world_size > 1 ? "s" : "") << ")\n";
}

void Trainer::restore(const Checkpoint& c) {
  const TrainState& s = c.state;
  const NamedTensors& trained = models_.trained;
  require(s.trained.size() == trained.size(), c.path,
          "holds " + std::to_string(s.trained.size()) + " trained tensors, this run trains " +
              std::to_string(trained.size()));
  for (size_t i = 0; i < trained.size(); ++i)
    require(s.trained[i].first == trained[i].first &&
                s.trained[i].second.sizes() == trained[i].second.sizes(),
            c.path, "tensor '" + s.trained[i].first + "' does not match this run's model");
  require(c.manifest.numel == opt_->numel(), c.path,
          "holds an optimizer state of " + std::to_string(c.manifest.numel) +
              " values, this run trains " + std::to_string(opt_->numel()));
  at::NoGradGuard ng;
  for (size_t i = 0; i < trained.size(); ++i) trained[i].second.copy_(s.trained[i].second);
  opt_->load(c.optim, s.adam_steps);
  start_ = s.step;
  loader_->cursor = DataCursor{s.data_epoch, s.data_offset};
}

TrainState Trainer::state(int64_t step_done) const {
  TrainState s;
  s.step = step_done;
  s.world_size = dist_->world();
  s.data_epoch = loader_->cursor.epoch;
  s.data_offset = loader_->cursor.offset;
  s.adam_steps = opt_->steps();
  s.config_json = cfg_.to_json().dump();
  s.dms_json = dms_config_json(models_.student.dms).dump();
  s.base_json = base_json_;
  const NamedTensors& trained = models_.trained;
  for (const auto& [name, t] : trained) s.trained.emplace_back(name, t.detach().cpu().clone());
  return s;
}

void Trainer::open_run_directory() {
  const fs::path run(cfg_.run.out);
  fs::create_directories(run);
  write_file_atomic((run / "config.json").string(), cfg_.to_json().dump(2) + "\n");
  sinks_ = std::make_unique<MetricsSinks>(run.string(), cfg_.optim.max_steps,
                                          cfg_.monitor.tensorboard, start_);
  const OptimSection& o = cfg_.optim;
  std::cerr << "retrofit: " << cfg_.run.model << " -> " << cfg_.run.out << "\n"
            << "  data " << cfg_.run.data << " (" << data_.n_rows << " rows x " << T_ << " tokens)"
            << (val_ ? ", validation " + val_path_ + " (" + std::to_string(val_->n_rows) + " rows)"
                     : "")
            << "\n  target CR " << cfg_.dms.target_cr << " at step " << cfg_.final_step()
            << ", window " << cfg_.dms.window << ", " << models_.trained.size()
            << " trained tensors ("
            << (cfg_.dms.train_mode == TrainMode::adapters ? "adapters" : "all")
            << "), global batch " << global_batch_ << " = " << o.micro_batch << " x "
            << o.grad_accum << " x " << dist_->world() << " rank"
            << (dist_->world() > 1 ? "s (" + dist_->backend() + ")" : "") << "\n"
            << "  " << c10::toString(models_.dtype) << " on " << device_.str()
            << ": student weights " << fmt(double(weight_bytes(models_.student)) / (1 << 20), 4)
            << " MiB, teacher "
            << (models_.teacher == &models_.student
                    ? std::string("shared (eviction off)")
                    : fmt(double(weight_bytes(*models_.teacher)) / (1 << 20), 4) + " MiB")
            << (cfg_.optim.activation_checkpointing ? ", activation checkpointing" : "") << "\n";
}

StepInputs Trainer::step_inputs() {
  const OptimSection& o = cfg_.optim;
  StepInputs in;
  in.student = &models_.student;
  in.teacher = models_.teacher;
  in.kd_dir = o.kd_direction;
  in.micro_batch = o.micro_batch;
  in.kd_chunk = o.kd_chunk;
  in.dms_weight = o.dms_weight;
  in.seed = cfg_.run.seed;
  in.attention = o.attention;
  in.blocks = {o.attn_block_q, o.attn_block_k};
  in.checkpoint_layers = o.activation_checkpointing;
  in.kd_skip_id = data_.info.eos_id;  // the official code's KD mask: no KD from an end token
  in.after_backward = [this] { opt_->absorb_gradients(); };  // fp32 accumulation
  return in;
}

int Trainer::run() {
  // From here a stop signal ends the run at a step boundary with a checkpoint; before,
  // main's handler exits at once (nothing of the run is written yet).
  catch_stop_signals();
  t0_ = Clock::now();
  tokens_seen_ = start_ * global_batch_ * T_;
  const MonitorSection& mon = cfg_.monitor;
  for (int64_t step = start_; step < cfg_.optim.max_steps; ++step) {
    train_step(step);
    const int64_t done = step + 1;
    if (threads_) {
      const std::string changed = threads_->tick();
      if (lead_ && !changed.empty()) sinks_->note(done, "threads", changed);
    }
    const bool last = done == cfg_.optim.max_steps;
    if (val_ && (done % mon.eval_every == 0 || last)) validate(done);
    const auto kept = keep_at_.find(done);
    if (kept != keep_at_.end())
      checkpoint(done, kept->second);
    else if (done % mon.checkpoint_every == 0 || last || stop_requested_)
      checkpoint(done);
    if (stop_requested_) return interrupted(done);
  }
  return finished();
}

void Trainer::train_step(int64_t step) {
  const auto ts = Clock::now();
  dist_->heartbeat(2 * step);  // progress marks: a failure names the rank left behind
  LocalBatch batch = loader_->next();
  const at::Tensor tokens = batch.tokens.to(device_);
  StepInputs in = step_inputs();
  // The KD's denominator is the global batch's KD positions: the same gradient for any
  // split into ranks and micro-batches.
  at::Tensor positions = kd_weights(tokens, in.kd_skip_id).sum().to(at::kDouble).reshape({1});
  dist_->all_reduce_sum({positions});
  in.kd_positions = positions.item<double>();
  StepMetrics m =
      accumulate_gradients(in, tokens, step, batch.first_index, global_batch_, cr_.target(step));
  m.stop_requested = g_stop_signal.load() != 0 ? 1.0 : 0.0;
  dist_->heartbeat(2 * step + 1);
  const auto ta = Clock::now();
  const double grad_norm = opt_->reduce_gradients(*dist_, cfg_.optim.clip);
  m.all_reduce(*dist_, device_);
  const double allreduce_s = seconds_since(ta);
  stop_requested_ = m.stop_requested > 0;

  const double lr = lr_.at(step), kd = m.kd_mean();
  const double dms = m.dms_mean(global_batch_);
  const double kd_seen = faults_.monitored_kd(step + 1, kd);
  std::vector<Alert> found = alerts_->on_step(step + 1, kd_seen, dms, grad_norm);
  if (std::isfinite(kd_seen) && std::isfinite(dms) && std::isfinite(grad_norm))
    opt_->step(*dist_, lr);
  else
    opt_->skip();
  raise_alerts(step + 1, found);
  tokens_seen_ += int64_t(m.tokens);
  const double dt = seconds_since(ts);
  allreduce_total_ += allreduce_s;
  step_total_ += dt;
  check_replicas(step + 1);
  if (!lead_) return;
  const TrainRecord r{step + 1,
                      tokens_seen_,
                      kd,
                      dms,
                      m.lm_mean(),
                      cr_.cr(step),
                      m.decision_cr(global_batch_),
                      m.effective_kv_cr(),
                      m.end_kv_cr(),
                      lr,
                      grad_norm,
                      m.tokens / dt,
                      allreduce_s,
                      seconds_since(t0_)};
  sinks_->train(r, (step + 1) % cfg_.monitor.log_every == 0 || step + 1 == cfg_.optim.max_steps);
}

// Every rank sees the same reduced figures, so every rank takes the same decisions.
void Trainer::raise_alerts(int64_t step_done, const std::vector<Alert>& found) {
  bool stop = false;
  for (const auto& a : found) {
    if (lead_) sinks_->alert(step_done, a.kind, a.message);
    stop = stop || alerts_->stops(a);
  }
  if (stop)
    throw AlertStop("stopped by alert '" + found.front().kind + "' at step " +
                    std::to_string(step_done) + "; the last checkpoint in " + cfg_.run.out +
                    " is intact (resume with --resume)");
}

void Trainer::check_replicas(int64_t step_done) {
  const int64_t every = cfg_.dist.checksum_every;
  if (every <= 0 || dist_->world() <= 1 || step_done % every != 0) return;
  at::Tensor mine = at::full({1}, parameter_checksum(models_.trained), at::kDouble);
  at::Tensor root = mine.clone();
  dist_->broadcast(root, 0);
  at::Tensor bad =
      at::full({1}, mine.item<double>() == root.item<double>() ? 0.0 : 1.0, at::kDouble);
  dist_->all_reduce_sum({bad});
  if (bad.item<double>() > 0)
    throw DistError("parameters differ across ranks after step " + std::to_string(step_done) +
                    " (checksum mismatch); stopping");
}

// Rank 0 validates; the verdict travels to every rank so all stop together.
void Trainer::validate(int64_t step_done) {
  at::Tensor verdict = at::zeros({1}, at::kDouble);
  if (lead_) {
    const OptimSection& o = cfg_.optim;
    ValidationOptions vo{cfg_.monitor.eval_batches * o.micro_batch,
                         o.micro_batch,
                         o.kd_direction,
                         o.kd_chunk,
                         o.attention,
                         {o.attn_block_q, o.attn_block_k}};
    ValidationRecord v = validate_heldout(models_.student, *models_.teacher, *val_, vo);
    v.step = step_done;
    sinks_->validation(v);
    const auto lag = alerts_->on_validation(step_done, v.decision_cr, cr_.cr(step_done - 1));
    if (!lag.empty()) sinks_->finish("alert");
    for (const auto& a : lag) {
      sinks_->alert(step_done, a.kind, a.message);
      if (alerts_->stops(a)) verdict.fill_(1.0);
    }
  }
  if (dist_->world() > 1) dist_->broadcast(verdict, 0);
  if (verdict.item<double>() > 0)
    throw AlertStop("stopped by alert 'cr_lag' at step " + std::to_string(step_done) +
                    "; the last checkpoint in " + cfg_.run.out + " is intact");
}

// Every rank writes its optimizer shard, rank 0 the rest; a failed save never replaces the
// last good checkpoint, and every rank learns the verdict.
void Trainer::checkpoint(int64_t step_done, double kept_for_cr) {
  dist_->barrier();
  const std::string failed = checkpoints_->save(
      step_done, [&] { return state(step_done); }, *opt_, kept_for_cr);
  if (lead_ && !failed.empty())
    sinks_->alert(step_done, "checkpoint_failed",
                  "checkpoint at step " + std::to_string(step_done) + " failed: " + failed +
                      " (previous checkpoints are intact)");
  const bool ok = failed.empty();
  unsaved_step_ = ok ? 0 : step_done;
  if (!ok && cfg_.monitor.on_checkpoint_error == CheckpointErrorPolicy::stop)
    throw std::runtime_error("stopping: checkpoint at step " + std::to_string(step_done) +
                             " could not be written");
}

int Trainer::interrupted(int64_t step_done) {
  if (lead_) {
    sinks_->finish("interrupted");
    std::cerr << "stopped by a signal after step " << step_done << "; "
              << (unsaved_step_ ? "its checkpoint failed: --resume continues from the last one "
                                  "that was written\n"
                                : "resume with --resume\n");
  }
  return 128 + (g_stop_signal ? g_stop_signal.load() : SIGTERM);
}

int Trainer::finished() {
  if (unsaved_step_)
    throw std::runtime_error("the final state (step " + std::to_string(unsaved_step_) +
                             ") could not be saved; the newest checkpoint in " + cfg_.run.out +
                             "/checkpoints is older (--resume continues from it)");
  if (!lead_) return 0;
  sinks_->finish();
  std::cerr << "retrofit finished: " << cfg_.optim.max_steps << " steps; checkpoints in "
            << cfg_.run.out << "/checkpoints";
  if (dist_->world() > 1 && step_total_ > 0)
    std::cerr << "; all-reduce took " << fmt(100.0 * allreduce_total_ / step_total_, 3)
              << "% of step time";
  std::cerr << "\n  next: dms export --run " << cfg_.run.out << " --out EXPORT_DIR\n";
  return 0;
}

}  // namespace

int run_retrofit(const RetrofitConfig& cfg) {
  Trainer trainer(cfg);
  return trainer.run();
}

}  // namespace dms
