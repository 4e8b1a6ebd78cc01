// The retrofit's configuration: typed sections (run, DMS, optimisation, monitoring,
// distribution), declared once in retrofit_fields() — the table behind `dms retrofit`'s
// options, the [retrofit] section of a TOML file, the run's config.json and the check
// of what a resumed run may change.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/attention.h"
#include "model/dms.h"
#include "trainer/config/options.h"
#include "trainer/train/losses.h"
#include "trainer/train/schedule.h"

namespace dms {

enum class TrainMode { adapters, all };  // adapters: frozen shared base; all: full fine-tune
enum class AlphaPer { head, layer };
enum class CheckpointErrorPolicy { stop, keep_going };
enum class BackendKind { automatic, gloo, nccl };
enum class DeviceKind { automatic, cpu, cuda };
// Compute precision of the models (docs/performance.md "Memory"): f32 everywhere, or
// frozen weights, trained weights and activations in bf16 with fp32 master weights, fp32
// losses and fp32 reductions. automatic: bf16 on CUDA, f32 on CPU.
enum class DtypeKind { automatic, f32, bf16 };
// Whether --dtype means bf16 on a device of this kind (the one rule for `auto`).
bool computes_in_bf16(DtypeKind kind, bool cuda);

std::string backend_name(BackendKind b);  // "auto" | "gloo" | "nccl"

struct RunSection {
  std::string model, data, val_data, out;
  std::string teacher;  // full-weight mode: another teacher (same tokenizer); "": the base
  int64_t seq_len = 0;  // rows of a .bin token stream (HDF5 files carry their own)
  bool resume = false;
  uint64_t seed = 0;    // data order and decision noise
  int64_t threads = 0;  // 0: the cores this process may use
  bool trust_token_files = false;  // read HDF5 token files without their seal
};

struct DmsSection {
  double target_cr = 8.0;
  int64_t final_step = 0;  // step at which the target is reached (0: 90% of max_steps)
  int64_t window = 512;
  double tau = 0.1, scale = 100.0, offset = 5.0;
  DmsPredictor predictor = DmsPredictor::adapter;
  AlphaPer alpha_per = AlphaPer::head;
  TrainMode train_mode = TrainMode::adapters;
};

struct OptimSection {
  int64_t max_steps = 500, micro_batch = 4, grad_accum = 1;
  double lr = 3e-5;
  LrScheduleKind lr_schedule = LrScheduleKind::constant;
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.1;
  double beta1 = 0.9, beta2 = 0.95, weight_decay = 0.0, clip = 1.0;
  KdDirection kd_direction = KdDirection::student_teacher;
  double dms_weight = 1.0;
  int64_t kd_chunk = 0;  // positions per KD chunk (0: auto)
  AttentionImpl attention = AttentionImpl::blockwise;
  int64_t attn_block_q = 128, attn_block_k = 512;
  DtypeKind dtype = DtypeKind::automatic;
  bool activation_checkpointing = false;  // recompute each decoder layer in backward
};

struct MonitorSection {
  int64_t log_every = 1, eval_every = 50, eval_batches = 8, checkpoint_every = 100;
  int64_t keep_checkpoints = 3;
  // Checkpoints kept whatever keep_checkpoints says: the first at which the scheduled CR
  // reaches each of these (the points of `dms eval --curve`).
  std::vector<double> keep_at_cr;
  CheckpointErrorPolicy on_checkpoint_error = CheckpointErrorPolicy::stop;
  bool tensorboard = true;
  double alert_kd_spike = 10.0, alert_grad = 50.0, alert_cr_margin = 0.25;
  int64_t alert_cr_evals = 3;
  std::string stop_on_alert = "nan";  // comma list of alert kinds, all, none
};

struct DistSection {
  BackendKind backend = BackendKind::automatic;
  DeviceKind device = DeviceKind::automatic;
  double timeout_s = 600;  // collective timeout: a lost rank stops the others
  int64_t checksum_every = 50;
  int64_t nproc = 1;             // local workers to spawn (launch only; not saved)
  bool shard_optimizer = false;  // ZeRO-1: AdamW moments and master weights split over ranks
  double device_memory_gib = 0;  // fit check's memory per device (0: what the device has)
};

struct RetrofitConfig {
  RunSection run;
  DmsSection dms;
  OptimSection optim;
  MonitorSection monitor;
  DistSection dist;

  // Every bad value at once, as one InputError naming each option (exit 2); nothing is
  // opened or allocated before this passes.
  void validate() const;
  // What the command line and TOML left in `parse_errors` plus validate()'s verdict, all
  // in one InputError (every bad value at once, before any file is opened).
  void check_parsed(const std::vector<std::string>& parse_errors) const;
  // final_step with its default applied (what the schedule and config.json use).
  int64_t final_step() const;
  DmsConfig dms_config() const;

  nlohmann::json to_json() const;
  // `where` names the file in errors (unknown keys and bad types are errors).
  static RetrofitConfig from_json(const nlohmann::json& j, const std::string& where);
};

const std::vector<Field<RetrofitConfig>>& retrofit_fields();

// What a resumed run changed that it may not: "--train-mode (adapters -> all)", ...;
// empty when the run may continue. saved_world: ranks that wrote the checkpoint.
std::vector<std::string> resume_conflicts(const RetrofitConfig& saved, int64_t saved_world,
                                          const RetrofitConfig& now, int64_t world,
                                          int64_t checkpoint_step);

}  // namespace dms
