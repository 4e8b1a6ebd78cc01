// Where a retrofit step's time goes: teacher forward, student forward (train mode),
// backward, for a model and batch shape. Prints medians of several runs.
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <iostream>

#include "checkpoints/load_model.h"
#include "trainer/train/losses.h"

using namespace dms;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  if (argc < 2) {
    std::cerr << "usage: step_profile MODEL [batch] [seq] [window]\n";
    return 2;
  }
  const int64_t B = argc > 2 ? std::atoll(argv[2]) : 4, T = argc > 3 ? std::atoll(argv[3]) : 512;
  const int64_t w = argc > 4 ? std::atoll(argv[4]) : 16;
  Model m = load_model(argv[1]);
  DmsConfig d;
  d.window = w;
  attach_dms(m, d);
  for (auto& [n, t] : named_dms_weights(m)) t->requires_grad_(true);
  at::Tensor x = at::randint(0, m.config.vocab_size, {B, T}, at::kLong);
  std::vector<double> tt, ts, tb;
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = now();
    at::Tensor tl;
    {
      at::NoGradGuard ng;
      ForwardOptions to;
      to.mode = AttentionMode::teacher;
      to.final_hidden = true;
      tl = forward_full(m, x, {}, to).hidden.reshape({B * T, -1});
    }
    double t1 = now();
    ForwardOptions so;
    so.mode = AttentionMode::train;
    so.noise = dms_batch_noise(0, rep, 0, B, m.config.n_layers, m.config.n_kv_heads, T);
    so.final_hidden = true;
    ForwardResult r = forward_full(m, x, {}, so);
    at::Tensor loss = kd_loss_sum(LogitSource::of_hidden(r.hidden.reshape({B * T, -1}), m.lm_head),
                                  LogitSource::of_hidden(tl, m.lm_head), at::ones({B * T}),
                                  KdDirection::student_teacher) +
                      dms_loss_sum(fraction_closed(r.decisions, {}, FractionOver::positions), 0.5);
    double t2 = now();
    loss.backward();
    double t3 = now();
    tt.push_back(t1 - t0);
    ts.push_back(t2 - t1);
    tb.push_back(t3 - t2);
  }
  auto med = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::cout << "threads " << at::get_num_threads() << " B " << B << " T " << T << "\n"
            << "teacher fwd " << med(tt) * 1e3 << " ms, student fwd " << med(ts) * 1e3
            << " ms, backward " << med(tb) * 1e3 << " ms\n";
}
