#include "bench/train_run.h"

namespace dms::bench {

std::unique_ptr<TrainRun> make_train_run(const std::function<Model()>& load, const TrainSetup& s) {
  auto r = std::make_unique<TrainRun>();
  r->student = load();
  DmsConfig d;
  d.window = s.window;
  attach_dms(r->student, d);
  cast_to(r->student, s.dtype);
  if (s.full) {
    r->teacher_copy = load();
    cast_to(r->teacher_copy, s.dtype);
  }
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (auto& [n, t] : s.full ? named_weights(r->student) : named_dms_weights(r->student)) {
    if (n.find("dms_proj") != std::string::npos) t->normal_(0.0, 0.02, gen);
    t->requires_grad_(true);
    r->params.push_back(*t);
  }
  r->opt = std::make_unique<AdamW>(r->params, AdamWOptions{});
  r->in.student = &r->student;
  r->in.teacher = s.full ? &r->teacher_copy : &r->student;
  r->in.micro_batch = s.batch;
  r->in.attention = s.attention;
  r->in.checkpoint_layers = s.checkpoint;
  r->tokens = at::randint(0, r->student.config.vocab_size, {s.batch, s.seq}, gen,
                          at::TensorOptions(at::kLong));
  return r;
}

void train_step(TrainRun& r) {
  r.opt->zero_grad();
  accumulate_gradients(r.in, r.tokens, r.step, 0, r.tokens.size(0), 0.5);
  clip_grad_norm(r.params, 1.0);
  r.opt->step(1e-4);
  r.step++;
}

}  // namespace dms::bench
