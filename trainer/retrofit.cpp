#include "trainer/retrofit.h"

#include <ATen/Parallel.h>

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "checkpoints/atomic_file.h"
#include "checkpoints/load_model.h"
#include "checkpoints/train_state.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "model/error.h"
#include "trainer/alerts.h"
#include "trainer/distributed.h"
#include "trainer/losses.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"
#include "trainer/step.h"
#include "trainer/tensorboard.h"

namespace fs = std::filesystem;

namespace dms {

nlohmann::json RetrofitConfig::to_json() const {
  return {{"model", model},
          {"data", data},
          {"val_data", val_data},
          {"seq_len", seq_len},
          {"target_cr", target_cr},
          {"final_step", final_step},
          {"max_steps", max_steps},
          {"window", window},
          {"tau", tau},
          {"scale", scale},
          {"offset", offset},
          {"predictor", predictor},
          {"alpha_per", alpha_per},
          {"train_mode", train_mode},
          {"micro_batch", micro_batch},
          {"grad_accum", grad_accum},
          {"lr", lr},
          {"lr_schedule", lr_schedule},
          {"warmup_steps", warmup_steps},
          {"min_lr_ratio", min_lr_ratio},
          {"beta1", beta1},
          {"beta2", beta2},
          {"weight_decay", weight_decay},
          {"clip", clip},
          {"kd_direction", kd_direction},
          {"dms_weight", dms_weight},
          {"kd_chunk", kd_chunk},
          {"attention", attention},
          {"attn_block_q", attn_block_q},
          {"attn_block_k", attn_block_k},
          {"seed", seed},
          {"log_every", log_every},
          {"eval_every", eval_every},
          {"eval_batches", eval_batches},
          {"checkpoint_every", checkpoint_every},
          {"keep_checkpoints", keep_checkpoints},
          {"backend", backend},
          {"device", device},
          {"dist_timeout_s", dist_timeout_s},
          {"checksum_every", checksum_every},
          {"on_checkpoint_error", on_checkpoint_error},
          {"tensorboard", tensorboard},
          {"alert_kd_spike", alert_kd_spike},
          {"alert_grad", alert_grad},
          {"alert_cr_margin", alert_cr_margin},
          {"alert_cr_evals", alert_cr_evals},
          {"stop_on_alert", stop_on_alert}};
}

RetrofitConfig RetrofitConfig::from_json(const nlohmann::json& j) {
  RetrofitConfig c;
#define DMS_GET(field) \
  if (j.contains(#field)) j.at(#field).get_to(c.field)
  DMS_GET(model);
  DMS_GET(data);
  DMS_GET(val_data);
  DMS_GET(seq_len);
  DMS_GET(target_cr);
  DMS_GET(final_step);
  DMS_GET(max_steps);
  DMS_GET(window);
  DMS_GET(tau);
  DMS_GET(scale);
  DMS_GET(offset);
  DMS_GET(predictor);
  DMS_GET(alpha_per);
  DMS_GET(train_mode);
  DMS_GET(micro_batch);
  DMS_GET(grad_accum);
  DMS_GET(lr);
  DMS_GET(lr_schedule);
  DMS_GET(warmup_steps);
  DMS_GET(min_lr_ratio);
  DMS_GET(beta1);
  DMS_GET(beta2);
  DMS_GET(weight_decay);
  DMS_GET(clip);
  DMS_GET(kd_direction);
  DMS_GET(dms_weight);
  DMS_GET(kd_chunk);
  DMS_GET(attention);
  DMS_GET(attn_block_q);
  DMS_GET(attn_block_k);
  DMS_GET(seed);
  DMS_GET(log_every);
  DMS_GET(eval_every);
  DMS_GET(eval_batches);
  DMS_GET(checkpoint_every);
  DMS_GET(keep_checkpoints);
  DMS_GET(backend);
  DMS_GET(device);
  DMS_GET(dist_timeout_s);
  DMS_GET(checksum_every);
  DMS_GET(on_checkpoint_error);
  DMS_GET(tensorboard);
  DMS_GET(alert_kd_spike);
  DMS_GET(alert_grad);
  DMS_GET(alert_cr_margin);
  DMS_GET(alert_cr_evals);
  DMS_GET(stop_on_alert);
#undef DMS_GET
  return c;
}

DmsConfig RetrofitConfig::dms() const {
  DmsConfig d;
  d.window = window;
  d.tau = tau;
  d.scale = scale;
  d.offset = offset;
  d.predictor = parse_predictor(predictor, "--predictor");
  require(alpha_per == "head" || alpha_per == "layer", "--alpha-per", "must be head or layer");
  d.per_layer = alpha_per == "layer";
  return d;
}

namespace {

// Everything one optimizer step needs, built once.
struct Trainer {
  RetrofitConfig cfg;
  Model student, teacher_copy;  // teacher_copy only in train mode "all"
  const Model* teacher = nullptr;
  bool adapters_only = true;
  NamedTensors trained;  // name -> tensor (requires_grad)
  std::unique_ptr<AdamW> opt;
  CrSchedule cr;
  LrSchedule lr;
  KdDirection kd_dir = KdDirection::student_teacher;

  StepInputs step_inputs() {
    StepInputs in{
        &student, teacher, kd_dir, cfg.micro_batch, cfg.kd_chunk, cfg.dms_weight, cfg.window,
        cfg.seed, {},      {}};
    in.attention = parse_attention_impl(cfg.attention, "--attention");
    in.blocks = {cfg.attn_block_q, cfg.attn_block_k};
    return in;
  }
};

struct EvalStats {
  double kd = 0, eviction = 0, effective_cr = 1, lm_nll = 0;
  int64_t positions = 0;
  at::Tensor eviction_lh;  // [L, K] eviction rate
  at::Tensor cache_lh;     // [L, K] mean tokens held (keys visible per query)
};

nlohmann::json matrix_json(const at::Tensor& t) {
  nlohmann::json rows = nlohmann::json::array();
  at::Tensor d = t.to(at::kDouble).contiguous();
  for (int64_t l = 0; l < d.size(0); ++l) {
    std::vector<double> row(d.data_ptr<double>() + l * d.size(1),
                            d.data_ptr<double>() + (l + 1) * d.size(1));
    rows.push_back(row);
  }
  return rows;
}

// Held-out KD and compression under hard eviction (eval mode, no noise).
EvalStats validate(Trainer& tr, const TokenData& val) {
  at::NoGradGuard ng;
  EvalStats e;
  const int64_t n = std::min(val.n_rows, tr.cfg.eval_batches * tr.cfg.micro_batch);
  CompressionStats cs;  // summed over the validation batches
  const int64_t V = tr.student.config.vocab_size;
  for (int64_t r0 = 0; r0 < n; r0 += tr.cfg.micro_batch) {
    std::vector<int64_t> idx;
    for (int64_t i = r0; i < std::min(n, r0 + tr.cfg.micro_batch); ++i) idx.push_back(i);
    at::Tensor x = val.rows(idx).to(tr.student.embed.device());
    const StepInputs in = tr.step_inputs();
    ForwardOptions to;
    to.mode = AttentionMode::teacher;
    to.attention = in.attention;
    to.blocks = in.blocks;
    at::Tensor tl = forward_full(*tr.teacher, x, {}, to).logits;
    ForwardOptions so = to;
    so.mode = AttentionMode::eval;
    ForwardResult r = forward_full(tr.student, x, {}, so);
    const int64_t T = x.size(1);
    at::Tensor lse;  // [b * T] student log-sum-exp, for the NLL
    e.kd += kd_loss_sum(r.logits.reshape({-1, V}), tl.reshape({-1, V}),
                        at::ones({x.size(0) * T}, r.logits.options().dtype(at::kFloat)), tr.kd_dir,
                        tr.cfg.kd_chunk, &lse)
                .item<double>();
    e.positions += x.size(0) * T;
    auto [nll, cnt] = next_token_nll(r.logits, lse, x);
    e.lm_nll += nll;
    cs += compression_from_decisions(r.decisions, {}, tr.cfg.window,
                                     tr.student.config.sliding_window);
    (void)cnt;
  }
  if (cs.visible_lh.defined()) {
    e.eviction_lh = cs.eviction_rate_lh().to(at::kDouble);
    e.cache_lh = cs.visible_lh / double(std::max<int64_t>(1, e.positions));
  }
  e.kd /= double(std::max<int64_t>(1, e.positions));
  e.lm_nll /= double(std::max<int64_t>(1, e.positions - n));
  e.eviction = cs.eviction_rate();
  e.effective_cr = cs.effective_kv_cr();
  return e;
}

TrainState make_state(const Trainer& tr, int64_t step, const DataCursor& cur, int world) {
  TrainState s;
  s.step = step;
  s.world_size = world;
  s.data_epoch = cur.epoch;
  s.data_offset = cur.offset;
  s.adam_steps = tr.opt->steps;
  s.config_json = tr.cfg.to_json().dump();
  for (size_t i = 0; i < tr.trained.size(); ++i) {
    s.trained.emplace_back(tr.trained[i].first, tr.trained[i].second.detach().clone());
    s.adam_m.emplace_back(tr.trained[i].first, tr.opt->m[i].clone());
    s.adam_v.emplace_back(tr.trained[i].first, tr.opt->v[i].clone());
  }
  return s;
}

void restore_state(Trainer& tr, const TrainState& s, const std::string& path) {
  require(s.trained.size() == tr.trained.size(), path,
          "holds " + std::to_string(s.trained.size()) + " trained tensors, this run trains " +
              std::to_string(tr.trained.size()));
  at::NoGradGuard ng;
  for (size_t i = 0; i < tr.trained.size(); ++i) {
    require(s.trained[i].first == tr.trained[i].first &&
                s.trained[i].second.sizes() == tr.trained[i].second.sizes(),
            path, "tensor '" + s.trained[i].first + "' does not match this run's model");
    tr.trained[i].second.copy_(s.trained[i].second);
    tr.opt->m[i].copy_(s.adam_m[i].second);
    tr.opt->v[i].copy_(s.adam_v[i].second);
  }
  tr.opt->steps = s.adam_steps;
}

std::string fmt(double v, int prec = 4) {
  std::ostringstream o;
  o.precision(prec);
  o << v;
  return o.str();
}

}  // namespace

namespace {

// cpu | cuda | auto (cuda:LOCAL_RANK when this LibTorch has CUDA and a device is present).
at::Device pick_device(const std::string& name, int local_rank) {
  if (name == "cpu") return at::Device(at::kCPU);
  const bool cuda = at::hasCUDA();
  if (name == "cuda")
    require(cuda, "--device", "this build or machine has no CUDA device");
  else
    require(name == "auto", "--device", "'" + name + "' (cpu, cuda or auto)");
  return cuda ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank))
              : at::Device(at::kCPU);
}

std::atomic<int> g_stop_signal{0};
void on_stop_signal(int sig) {
  g_stop_signal = sig;
}

// Keeps metrics.jsonl consistent with a resumed checkpoint: records after its step are
// dropped (they would be written again), so a resumed run's file equals an uninterrupted one's.
void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      auto j = nlohmann::json::parse(line);
      if (j.value("step", int64_t(0)) > step) continue;
    } catch (const nlohmann::json::exception&) {
      continue;  // a torn last line of a killed run
    }
    kept += line + "\n";
  }
  write_file_atomic(path.string(), kept);
}

// Sum of every trained value, for the cross-rank consistency check.
double parameter_checksum(const NamedTensors& trained) {
  double s = 0;
  for (const auto& [n, t] : trained) s += t.detach().to(at::kDouble).sum().item<double>();
  return s;
}

}  // namespace

int run_retrofit(const RetrofitConfig& cfg_in) {
  RetrofitConfig cfg = cfg_in;
  if (cfg.threads > 0) at::set_num_threads(cfg.threads);
  require(cfg.max_steps > 0, "--max-steps", "must be positive");
  require(cfg.target_cr >= 1.0, "--target-cr", "must be at least 1");
  require(cfg.micro_batch > 0 && cfg.grad_accum > 0, "--micro-batch/--grad-accum",
          "must be positive");
  require(cfg.attention == "blockwise" || cfg.attention == "dense", "--attention",
          "must be 'blockwise' or 'dense'");
  require(cfg.attn_block_q > 0 && cfg.attn_block_k > 0, "--attn-block-q/--attn-block-k",
          "must be positive");
  require(cfg.train_mode == "adapters" || cfg.train_mode == "all", "--train-mode",
          "must be 'adapters' or 'all'");
  require(cfg.on_checkpoint_error == "stop" || cfg.on_checkpoint_error == "continue",
          "--on-checkpoint-error", "must be 'stop' or 'continue'");
  if (cfg.final_step <= 0) cfg.final_step = std::max<int64_t>(1, cfg.max_steps * 9 / 10);

  // Every rank checks the run directory itself (shared file system), so all agree.
  const fs::path run(cfg.out);
  const bool exists_nonempty = fs::exists(run) && !fs::is_empty(run);
  if (exists_nonempty && !cfg.resume)
    throw InputError(cfg.out + ": run directory is not empty (pass --resume to continue it)");

  const DistEnv env = detect_dist_env();
  std::unique_ptr<Dist> dist =
      Dist::join(env, cfg.backend, std::chrono::milliseconds(int64_t(cfg.dist_timeout_s * 1000)));
  const bool lead = dist->rank() == 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  Trainer tr;
  tr.cfg = cfg;
  tr.kd_dir = parse_kd_direction(cfg.kd_direction);
  tr.student = load_model(cfg.model);
  const at::Device device = pick_device(cfg.device, env.local_rank);
  require(!tr.student.dms.enabled, cfg.model, "already has DMS predictors (retrofit the original)");
  TokenData data = open_tokens(cfg.data, cfg.seq_len);
  validate_tokens(data, tr.student.config.vocab_size, tr.student.config.max_position);
  std::string val_path = cfg.val_data.empty() ? validation_path(cfg.data) : cfg.val_data;
  std::unique_ptr<TokenData> val;
  if (fs::exists(val_path)) {  // every rank: whether to validate must agree across ranks
    TokenData v = open_tokens(val_path, cfg.seq_len);
    if (v.n_rows > 0) {
      validate_tokens(v, tr.student.config.vocab_size, tr.student.config.max_position);
      val = std::make_unique<TokenData>(std::move(v));
    }
  }
  const int64_t T = data.seq_len;
  if (lead && cfg.window >= T)
    std::cerr << "warning: window " << cfg.window << " >= sequence length " << T
              << ": no token can be evicted within a training row\n";

  move_to(tr.student, device);
  attach_dms(tr.student, cfg.dms());
  tr.adapters_only = cfg.train_mode == "adapters";
  if (tr.adapters_only) {
    tr.teacher = &tr.student;  // the same weights with eviction off
    for (auto& [n, t] : named_dms_weights(tr.student)) tr.trained.emplace_back(n, *t);
  } else {
    tr.teacher_copy = load_model(cfg.model);
    move_to(tr.teacher_copy, device);
    tr.teacher = &tr.teacher_copy;
    for (auto& [n, t] : named_weights(tr.student)) tr.trained.emplace_back(n, *t);
  }
  require(!tr.trained.empty(), "--predictor",
          "query_neuron has no adapter weights: use --train-mode all with it");
  std::vector<at::Tensor> params;
  for (auto& [n, t] : tr.trained) {
    t.requires_grad_(true);
    params.push_back(t);
  }
  tr.opt =
      std::make_unique<AdamW>(params, AdamWOptions{cfg.beta1, cfg.beta2, 1e-8, cfg.weight_decay});
  tr.cr = CrSchedule{1.0, cfg.target_cr, cfg.final_step};
  tr.lr = LrSchedule{cfg.lr_schedule, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio};
  (void)tr.lr.at(0);  // validates the schedule name

  // The global batch defines the data order and the noise; ranks take equal slices.
  const int64_t global_batch = cfg.micro_batch * cfg.grad_accum * dist->world();
  BatchLoader loader(data, global_batch, cfg.seed, dist->rank(), dist->world());
  int64_t start = 0;
  if (cfg.resume) {
    auto ckpts = list_checkpoints(cfg.out);
    for (auto it = ckpts.rbegin(); it != ckpts.rend(); ++it) {
      try {
        TrainState s = read_train_state(*it);
        const auto saved = RetrofitConfig::from_json(nlohmann::json::parse(s.config_json));
        const int64_t saved_global = saved.micro_batch * saved.grad_accum * s.world_size;
        require(saved_global == global_batch, *it,
                "was written with a global batch of " + std::to_string(saved_global) + " (" +
                    std::to_string(s.world_size) + " ranks); this run has " +
                    std::to_string(global_batch) +
                    ": keep micro-batch x accumulation x ranks equal");
        restore_state(tr, s, *it);
        start = s.step;
        loader.cursor = DataCursor{s.data_epoch, s.data_offset};
        if (lead)
          std::cerr << "resuming from " << *it << " (step " << s.step << ", written by "
                    << s.world_size << " rank" << (s.world_size > 1 ? "s" : "") << ")\n";
        break;
      } catch (const InputError& e) {
        if (std::string(e.what()).find("global batch") != std::string::npos) throw;
        if (lead) std::cerr << "warning: skipping unusable checkpoint: " << e.what() << "\n";
      }
    }
  }
  std::unique_ptr<MetricsLog> log;
  std::unique_ptr<EventWriter> events;
  AlertMonitor alerts(AlertConfig{cfg.alert_kd_spike, cfg.alert_grad, 50, 10, cfg.alert_cr_margin,
                                  cfg.alert_cr_evals, cfg.stop_on_alert});
  // Every rank sees the same reduced figures, so every rank takes the same decisions.
  auto raise = [&](int64_t step_done, const std::vector<Alert>& found) {
    bool stop = false;
    for (const auto& a : found) {
      if (lead) {
        std::cerr << "\nALERT " << a.kind << ": " << a.message << "\n";
        log->write({{"step", step_done}, {"alert", a.kind}, {"message", a.message}});
      }
      stop = stop || alerts.stops(a);
    }
    if (stop)
      throw AlertStop("stopped by alert '" + found.front().kind + "' at step " +
                      std::to_string(step_done) + "; the last checkpoint in " + cfg.out +
                      " is intact (resume with --resume)");
  };
  if (lead) {
    fs::create_directories(run);
    write_file_atomic((run / "config.json").string(), cfg.to_json().dump(2) + "\n");
    if (start > 0) truncate_metrics(run / "metrics.jsonl", start);
    log = std::make_unique<MetricsLog>((run / "metrics.jsonl").string(), /*append=*/start > 0);
    if (cfg.tensorboard) events = std::make_unique<EventWriter>(run.string());
    std::cerr << "retrofit: " << cfg.model << " -> " << cfg.out << "\n"
              << "  data " << cfg.data << " (" << data.n_rows << " rows x " << T << " tokens)"
              << (val ? ", validation " + val_path + " (" + std::to_string(val->n_rows) + " rows)"
                      : "")
              << "\n  target CR " << cfg.target_cr << " at step " << cfg.final_step << ", window "
              << cfg.window << ", " << tr.trained.size() << " trained tensors (" << cfg.train_mode
              << "), global batch " << global_batch << " = " << cfg.micro_batch << " x "
              << cfg.grad_accum << " x " << dist->world() << " rank"
              << (dist->world() > 1 ? "s (" + dist->backend() + ")" : "") << "\n";
  }
  dist->barrier();

  // Checkpoint on rank 0 after a barrier; a failed write never replaces the last good file.
  auto save = [&](int64_t step_done) {
    dist->barrier();
    bool ok = true;
    if (lead) {
      try {
        if (const char* f = std::getenv("DMS_TEST_FAIL_CHECKPOINT_AT");
            f && std::atoll(f) == step_done)
          throw std::runtime_error("simulated write failure (DMS_TEST_FAIL_CHECKPOINT_AT)");
        write_train_state(checkpoint_path(cfg.out, step_done),
                          make_state(tr, step_done, loader.cursor, dist->world()));
        prune_checkpoints(cfg.out, cfg.keep_checkpoints);
      } catch (const std::exception& e) {
        ok = false;
        std::cerr << "\ncheckpoint at step " << step_done << " failed: " << e.what()
                  << " (previous checkpoints are intact)\n";
        log->write({{"step", step_done}, {"alert", "checkpoint_failed"}, {"message", e.what()}});
      }
    }
    at::Tensor flag = at::full({1}, ok ? 0.0 : 1.0);
    dist->all_reduce_sum({flag});
    if (flag.item<double>() > 0 && cfg.on_checkpoint_error == "stop")
      throw std::runtime_error("stopping: checkpoint at step " + std::to_string(step_done) +
                               " could not be written");
  };

  std::unique_ptr<Progress> bar;
  if (lead) bar = std::make_unique<Progress>("retrofit", cfg.max_steps);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_seen = start * global_batch * T;
  double allreduce_total = 0, step_total = 0;
  for (int64_t step = start; step < cfg.max_steps; ++step) {
    const auto ts = std::chrono::steady_clock::now();
    dist->heartbeat(2 * step);  // progress marks: a failure names the rank left behind
    LocalBatch batch = loader.next();
    StepStats st = accumulate_gradients(tr.step_inputs(), batch.tokens.to(device), step,
                                        batch.first_index, global_batch, tr.cr.target(step));
    // One bucket for the gradients, one small tensor for the statistics.
    dist->heartbeat(2 * step + 1);
    const auto ta = std::chrono::steady_clock::now();
    std::vector<at::Tensor> grads;
    for (auto& p : params) {
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
      grads.push_back(p.grad());
    }
    at::Tensor stats = at::tensor({st.kd, st.dms, st.lm_nll, double(st.lm_count), double(st.tokens),
                                   st.eviction * double(batch.tokens.size(0)), st.visible_sum,
                                   st.full_sum, double(g_stop_signal.load() != 0)},
                                  at::TensorOptions(at::kDouble).device(device));
    dist->all_reduce_sum(grads);
    dist->all_reduce_sum({stats});
    stats = stats.cpu();
    const double allreduce_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - ta).count();
    const double kd_mean = stats[0].item<double>() / double(global_batch * T);
    const double dms_mean = stats[1].item<double>() / double(global_batch);
    const double lm =
        stats[3].item<double>() > 0 ? stats[2].item<double>() / stats[3].item<double>() : 0.0;
    const int64_t step_tokens = int64_t(stats[4].item<double>());
    const double eviction = stats[5].item<double>() / double(global_batch);
    const double eff_cr =
        stats[6].item<double>() > 0 ? stats[7].item<double>() / stats[6].item<double>() : 1.0;
    const bool stop_requested = stats[8].item<double>() > 0;

    const double grad_norm = clip_grad_norm(params, cfg.clip);
    const double lr_now = tr.lr.at(step);
    double kd_seen = kd_mean;  // what the monitor sees (test hook: DMS_TEST_INJECT=nan@S,spike@S)
    if (const char* inj = std::getenv("DMS_TEST_INJECT")) {
      const std::string spec = inj;
      if (spec.find("nan@" + std::to_string(step + 1)) != std::string::npos) kd_seen = std::nan("");
      if (spec.find("spike@" + std::to_string(step + 1)) != std::string::npos) kd_seen *= 1000;
    }
    std::vector<Alert> found = alerts.on_step(step + 1, kd_seen, dms_mean, grad_norm);
    const bool finite =
        std::isfinite(kd_seen) && std::isfinite(dms_mean) && std::isfinite(grad_norm);
    if (finite) tr.opt->step(lr_now);
    tr.opt->zero_grad();
    if (!found.empty()) raise(step + 1, found);
    tokens_seen += step_tokens;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    allreduce_total += allreduce_s;
    step_total += dt;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double decision_cr = 1.0 / std::max(1e-9, 1.0 - eviction);

    if (cfg.checksum_every > 0 && dist->world() > 1 && (step + 1) % cfg.checksum_every == 0) {
      at::Tensor mine = at::full({1}, parameter_checksum(tr.trained), at::kDouble);
      at::Tensor root = mine.clone();
      dist->broadcast(root, 0);
      at::Tensor bad =
          at::full({1}, mine.item<double>() == root.item<double>() ? 0.0 : 1.0, at::kDouble);
      dist->all_reduce_sum({bad});
      if (bad.item<double>() > 0)
        throw DistError("parameters differ across ranks after step " + std::to_string(step + 1) +
                        " (checksum mismatch); stopping");
    }
    if (lead) {
      if ((step + 1) % cfg.log_every == 0 || step + 1 == cfg.max_steps)
        log->write({{"step", step + 1},
                    {"tokens", tokens_seen},
                    {"kd_loss", kd_mean},
                    {"dms_loss", dms_mean},
                    {"lm_loss", lm},
                    {"target_cr", tr.cr.cr(step)},
                    {"decision_cr", decision_cr},
                    {"effective_kv_cr", eff_cr},
                    {"lr", lr_now},
                    {"grad_norm", grad_norm},
                    {"tokens_per_s", double(step_tokens) / dt},
                    {"allreduce_s", allreduce_s},
                    {"elapsed_s", elapsed}});
      if (events)
        events->scalars(step + 1, {{"train/kd_loss", float(kd_mean)},
                                   {"train/dms_loss", float(dms_mean)},
                                   {"train/lm_loss", float(lm)},
                                   {"compression/target_cr", float(tr.cr.cr(step))},
                                   {"compression/decision_cr", float(decision_cr)},
                                   {"compression/effective_kv_cr", float(eff_cr)},
                                   {"train/lr", float(lr_now)},
                                   {"train/grad_norm", float(grad_norm)},
                                   {"perf/tokens_per_s", float(double(step_tokens) / dt)}});
      bar->update(step + 1, "kd " + fmt(kd_mean, 3) + "  cr " + fmt(decision_cr, 3) + "/" +
                                fmt(tr.cr.cr(step), 3) + " (eff " + fmt(eff_cr, 3) + ")  " +
                                fmt(double(step_tokens) / dt, 4) + " tok/s");
    }
    const bool last = step + 1 == cfg.max_steps;
    if (val && (((step + 1) % cfg.eval_every == 0) || last)) {
      // Rank 0 validates; the verdict travels to every rank so all stop together.
      at::Tensor verdict = at::zeros({1}, at::kDouble);
      if (lead) {
        EvalStats e = validate(tr, *val);
        const double vcr = 1.0 / std::max(1e-9, 1.0 - e.eviction);
        log->write({{"step", step + 1},
                    {"val_kd_loss", e.kd},
                    {"val_lm_loss", e.lm_nll},
                    {"val_decision_cr", vcr},
                    {"val_effective_kv_cr", e.effective_cr},
                    {"val_eviction_rate_lh", matrix_json(e.eviction_lh)},
                    {"val_cache_size_lh", matrix_json(e.cache_lh)}});
        if (events) {
          std::vector<std::pair<std::string, float>> v = {
              {"val/kd_loss", float(e.kd)},
              {"val/lm_loss", float(e.lm_nll)},
              {"val/decision_cr", float(vcr)},
              {"val/effective_kv_cr", float(e.effective_cr)}};
          at::Tensor per_layer = e.eviction_lh.mean(1);
          for (int64_t l = 0; l < per_layer.size(0); ++l)
            v.emplace_back("val_layer_decision_cr/layer_" + std::to_string(l),
                           float(1.0 / std::max(1e-9, 1.0 - per_layer[l].item<double>())));
          events->scalars(step + 1, v);
        }
        auto lag = alerts.on_validation(step + 1, vcr, tr.cr.cr(step));
        if (!lag.empty()) {
          bar->finish("alert");
          for (const auto& a : lag) {
            std::cerr << "\nALERT " << a.kind << ": " << a.message << "\n";
            log->write({{"step", step + 1}, {"alert", a.kind}, {"message", a.message}});
            if (alerts.stops(a)) verdict.fill_(1.0);
          }
        }
      }
      if (dist->world() > 1) dist->broadcast(verdict, 0);
      if (verdict.item<double>() > 0)
        throw AlertStop("stopped by alert 'cr_lag' at step " + std::to_string(step + 1) +
                        "; the last checkpoint in " + cfg.out + " is intact");
    }
    if ((step + 1) % cfg.checkpoint_every == 0 || last || stop_requested) save(step + 1);
    if (stop_requested) {
      if (lead) {
        bar->finish("interrupted");
        std::cerr << "stopped by a signal after step " << step + 1 << "; resume with --resume\n";
      }
      return 128 + (g_stop_signal ? g_stop_signal.load() : SIGTERM);
    }
  }
  if (lead) {
    bar->finish();
    std::cerr << "retrofit finished: " << cfg.max_steps << " steps; checkpoints in " << cfg.out
              << "/checkpoints";
    if (dist->world() > 1 && step_total > 0)
      std::cerr << "; all-reduce took " << fmt(100.0 * allreduce_total / step_total, 3)
                << "% of step time";
    std::cerr << "\n  next: dms export --run " << cfg.out << " --out EXPORT_DIR\n";
  }
  return 0;
}

}  // namespace dms
