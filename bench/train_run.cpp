#include "bench/train_run.h"

#include "bench/bench_util.h"

namespace dms::bench {

std::unique_ptr<TrainRun> make_train_run(const std::function<Model()>& load, const TrainSetup& s) {
  auto r = std::make_unique<TrainRun>();
  r->student = load();
  DmsConfig d;
  d.window = s.window;
  attach_dms(r->student, d);
  // Adapters N(0, 0.02) so that decisions vary (drawn on the CPU: the same on any device).
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (auto& [n, t] : named_dms_weights(r->student))
    if (n.find("dms_proj") != std::string::npos) t->normal_(0.0, 0.02, gen);
  cast_to(r->student, s.dtype);
  move_to(r->student, s.device);
  if (s.full) {
    r->teacher_copy = load();
    cast_to(r->teacher_copy, s.dtype);
    move_to(r->teacher_copy, s.device);
  }
  for (auto& [n, t] : s.full ? named_weights(r->student) : named_dms_weights(r->student)) {
    t->requires_grad_(true);
    r->trained.emplace_back(n, *t);
  }
  r->dist = Dist::join(DistEnv{}, "gloo", std::chrono::milliseconds(60000), s.device);
  r->opt = std::make_unique<Optimizer>(r->trained, AdamWOptions{}, ShardPlan{0, 1, false});
  r->in.student = &r->student;
  r->in.teacher = s.full ? &r->teacher_copy : &r->student;
  r->in.micro_batch = s.batch;
  r->in.attention = s.attention;
  r->in.checkpoint_layers = s.checkpoint;
  Optimizer* opt = r->opt.get();
  r->in.after_backward = [opt] { opt->absorb_gradients(); };
  r->tokens = at::randint(0, r->student.config.vocab_size, {s.batch, s.seq}, gen,
                          at::TensorOptions(at::kLong))
                  .to(s.device);
  return r;
}

void train_step(TrainRun& r) {
  accumulate_gradients(r.in, r.tokens, r.step, 0, r.tokens.size(0), 0.5);
  r.opt->reduce_gradients(*r.dist, 1.0);
  r.opt->step(*r.dist, 1e-4);
  r.step++;
  sync(r.tokens.device());
}

int64_t optimizer_bytes(const TrainRun& r) {
  return 4 * 4 * r.opt->numel();  // gradient buffer, masters, m, v: fp32 each
}

}  // namespace dms::bench
