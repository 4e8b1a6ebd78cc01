// dms retrofit / dms export: the main job and its output.
#include <iostream>

#include "model/error.h"
#include "trainer/cli.h"
#include "trainer/export_run.h"
#include "trainer/launcher.h"
#include "trainer/report.h"
#include "trainer/retrofit.h"

namespace dms {

void add_retrofit_command(CLI::App& app) {
  auto c = std::make_shared<RetrofitConfig>();
  CLI::App* cmd = app.add_subcommand(
      "retrofit",
      "Teach a model DMS: distil from the unchanged model while the target compression ratio "
      "is annealed from 1 to --target-cr; checkpoints, metrics.jsonl and config.json go to "
      "--out. Options can also come from a TOML file: dms --config run.toml retrofit (keys under "
      "[retrofit]).");
  cmd->add_option("--model", c->model, "Model: HF directory or llama2.c .bin")->required();
  cmd->add_option("--data", c->data, "Training tokens (.h5 from 'dms data prepare/sample')")
      ->required();
  cmd->add_option("--val-data", c->val_data, "Held-out tokens (default: <data>.val.h5 if present)");
  cmd->add_option("--seq-len", c->seq_len, "Row length for .bin token streams (nanoGPT/llm.c)");
  cmd->add_option("--out", c->out, "Run directory (must be empty unless --resume)")->required();
  cmd->add_flag("--resume", c->resume,
                "Continue the run in --out from its newest valid checkpoint");
  auto* g = "DMS";
  cmd->add_option("--target-cr", c->target_cr, "Final target decision compression ratio")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--final-step", c->final_step,
                  "Step at which the target is reached (0: 90% of --max-steps)")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--max-steps", c->max_steps, "Optimizer steps")->capture_default_str()->group(g);
  cmd->add_option("--window", c->window, "Eviction delay window w (tokens)")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--tau", c->tau, "Temperature of the soft decisions")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--scale", c->scale, "Decision logit scale s")->capture_default_str()->group(g);
  cmd->add_option("--offset", c->offset, "Decision logit offset o (z = -o at init)")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--predictor", c->predictor, "adapter | query_neuron")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--alpha-per", c->alpha_per, "Decisions per KV 'head' or per 'layer'")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--train-mode", c->train_mode,
                  "adapters (frozen shared base) | all (full fine-tune, frozen teacher copy)")
      ->capture_default_str()
      ->group(g);
  g = "Optimisation";
  cmd->add_option("--micro-batch", c->micro_batch, "Rows per forward/backward")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--grad-accum", c->grad_accum, "Micro-batches per optimizer step")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--lr", c->lr, "Peak learning rate")->capture_default_str()->group(g);
  cmd->add_option("--lr-schedule", c->lr_schedule, "constant | warmup | cosine")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--warmup-steps", c->warmup_steps, "Linear warmup steps")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--min-lr-ratio", c->min_lr_ratio, "Cosine floor as a fraction of --lr")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--beta1", c->beta1, "AdamW beta1")->capture_default_str()->group(g);
  cmd->add_option("--beta2", c->beta2, "AdamW beta2")->capture_default_str()->group(g);
  cmd->add_option("--weight-decay", c->weight_decay, "AdamW decoupled weight decay")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--clip", c->clip, "Global gradient-norm clip (0: off)")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--kd-direction", c->kd_direction,
                  "student_teacher: KL(p_s||p_t) | teacher_student: KL(p_t||p_s)")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--dms-weight", c->dms_weight, "Weight of the DMS loss")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--kd-chunk", c->kd_chunk,
                  "Positions per KD-loss chunk (0: about 1 MiB of logits each)")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--attention", c->attention,
                  "blockwise (memory O(T), default) | dense (materialises [T, T]; the reference)")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--attn-block-q", c->attn_block_q, "Blockwise attention: query rows per tile")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--attn-block-k", c->attn_block_k, "Blockwise attention: keys per tile")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--seed", c->seed, "Seed of the data order and the decision noise")
      ->capture_default_str()
      ->group(g);
  g = "Monitoring";
  cmd->add_option("--log-every", c->log_every, "Steps between metrics.jsonl records")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--eval-every", c->eval_every, "Steps between validations")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--eval-batches", c->eval_batches, "Micro-batches per validation")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--checkpoint-every", c->checkpoint_every, "Steps between checkpoints")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--keep-checkpoints", c->keep_checkpoints, "Checkpoints kept (0: all)")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--threads", c->threads, "CPU threads (0: LibTorch default)")->group(g);
  cmd->add_option("--on-checkpoint-error", c->on_checkpoint_error, "stop | continue")
      ->capture_default_str()
      ->group(g);
  cmd->add_flag("--tensorboard,!--no-tensorboard", c->tensorboard,
                "Write TensorBoard event files into the run directory")
      ->group(g);
  cmd->add_option("--alert-kd-spike", c->alert_kd_spike,
                  "Alert when KD loss exceeds this x its running median")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--alert-grad", c->alert_grad,
                  "Alert when the gradient norm exceeds this x its running median")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--alert-cr-margin", c->alert_cr_margin,
                  "Alert when validation CR < target x (1 - margin) ...")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--alert-cr-evals", c->alert_cr_evals, "... for this many validations in a row")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--stop-on-alert", c->stop_on_alert,
                  "Alert kinds that stop the run: comma list of nan,kd_spike,grad_explosion,cr_lag "
                  "| all | none")
      ->capture_default_str()
      ->group(g);
  g = "Distributed";
  auto nproc = std::make_shared<int>(1);
  cmd->add_option("--nproc", *nproc, "Spawn and supervise N local worker processes")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--backend", c->backend, "gloo | nccl | auto")->capture_default_str()->group(g);
  cmd->add_option("--device", c->device, "cpu | cuda | auto (cuda:LOCAL_RANK when present)")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--dist-timeout", c->dist_timeout_s,
                  "Seconds before a collective gives up on a lost rank")
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--checksum-every", c->checksum_every,
                  "Steps between cross-rank parameter checks (0: off)")
      ->capture_default_str()
      ->group(g);
  cmd->callback([c, nproc] {
    if (*nproc > 1 && !std::getenv("RANK")) {
      const int code = launch_local_workers(*nproc);
      if (code != 0) std::exit(code);
      return;
    }
    const int code = run_retrofit(*c);
    if (code != 0) std::exit(code);
  });

  struct ExportArgs {
    std::string run, out;
    int64_t step = 0;
    bool force = false;
  };
  auto e = std::make_shared<ExportArgs>();
  CLI::App* ex = app.add_subcommand(
      "export",
      "Write a retrofit's checkpoint as a Hugging Face directory: config.json with the dms_* "
      "fields, model.safetensors with the official DMS tensor names, tokenizer files and "
      "dms_report.json (measured compression per layer and head).");
  ex->add_option("--run", e->run, "Run directory of 'dms retrofit'")->required();
  ex->add_option("--step", e->step, "Checkpoint step (default: the newest)");
  ex->add_option("--out", e->out, "Export directory")->required();
  ex->add_flag("--force", e->force, "Replace an existing export directory");
  auto ro = std::make_shared<ReportOptions>();
  CLI::App* rep = app.add_subcommand(
      "report",
      "One self-contained HTML page about a run (works while it runs): loss and compression "
      "curves, eviction heat map per layer and head, cache sizes, throughput, config, eval table. "
      "--format png writes the charts as PNG files into --out instead.");
  rep->add_option("--run", ro->run, "Run directory")->required();
  rep->add_option("--out", ro->out, "report.html (or a directory with --format png)")->required();
  rep->add_option("--format", ro->format, "html | png")->capture_default_str();
  rep->callback([ro] {
    const int n = write_report(*ro);
    std::cout << "wrote " << ro->out << " (" << n << " charts)\n";
  });

  ex->callback([e] {
    const std::string ck = export_run(e->run, e->step, e->out, e->force);
    std::cout << "exported " << ck << " -> " << e->out << "\n";
  });
}

}  // namespace dms
