// The retrofit: distil a DMS student from the unchanged model while the target
// compression ratio is annealed (DESIGN.md §2). A thin loop over components:
// data (BatchLoader), step (teacher + student forward, KD + DMS loss, backward),
// optimizer (AdamW, clipping, LR schedule), checkpoints (HDF5 train state), metrics.
#pragma once
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "model/dms.h"

namespace dms {

struct RetrofitConfig {
  std::string model, data, val_data, out;
  int64_t seq_len = 0;  // rows of a .bin token stream (HDF5 files carry their own)
  bool resume = false;
  // DMS and its schedule
  double target_cr = 8.0;
  int64_t final_step = 0;  // step at which CR reaches target (0 = 90% of max_steps)
  int64_t max_steps = 500;
  int64_t window = 512;
  double tau = 0.1, scale = 100.0, offset = 5.0;
  std::string predictor = "adapter";    // adapter | query_neuron
  std::string alpha_per = "head";       // head | layer
  std::string train_mode = "adapters";  // adapters (frozen shared base) | all
  // Optimisation
  int64_t micro_batch = 4, grad_accum = 1;
  double lr = 3e-5;
  std::string lr_schedule = "constant";
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.1;
  double beta1 = 0.9, beta2 = 0.95, weight_decay = 0.0, clip = 1.0;
  std::string kd_direction = "student_teacher";
  double dms_weight = 1.0;
  int64_t kd_chunk = 0;                 // positions per KD chunk (0: auto)
  std::string attention = "blockwise";  // blockwise | dense (the O(T^2) reference)
  int64_t attn_block_q = 128, attn_block_k = 512;
  uint64_t seed = 0;
  // Monitoring
  int64_t log_every = 1, eval_every = 50, eval_batches = 8, checkpoint_every = 100;
  int64_t keep_checkpoints = 3;
  std::string on_checkpoint_error = "stop";  // stop | continue
  bool tensorboard = true;                   // events.out.tfevents.* in the run directory
  // Alerts (trainer/alerts.h)
  double alert_kd_spike = 10.0, alert_grad = 50.0, alert_cr_margin = 0.25;
  int64_t alert_cr_evals = 3;
  std::string stop_on_alert = "nan";
  int threads = 0;
  // Distributed (DESIGN.md §5)
  std::string backend = "auto";  // gloo | nccl | auto
  std::string device = "auto";   // cpu | cuda | auto (cuda:LOCAL_RANK when available)
  double dist_timeout_s = 600;   // collective timeout: a lost rank stops the others
  int64_t checksum_every = 50;   // steps between cross-rank parameter checks

  nlohmann::json to_json() const;
  static RetrofitConfig from_json(const nlohmann::json& j);
  DmsConfig dms() const;
};

// A run ended by an alert configured to stop it (--stop-on-alert).
struct AlertStop : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs (or resumes) a retrofit into cfg.out, joining a process group when the
// environment describes one (torchrun, Slurm, or `--nproc`). Returns 0 when finished,
// 128+signal after a SIGINT/SIGTERM (a checkpoint is written first); throws on errors
// (InputError for bad input, DistError when a rank is lost); a NaN/inf loss stops the run
// with an error, keeping the last checkpoint.
int run_retrofit(const RetrofitConfig& cfg);

}  // namespace dms
