// dms plan: per-device memory by part and step FLOPs of a retrofit, from a model's
// configuration alone (trainer/plan/plan.h; docs/plan.md).
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "checkpoints/load_model.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "trainer/cli/cli.h"
#include "trainer/cli/commands.h"
#include "trainer/plan/device_memory.h"
#include "trainer/plan/plan_report.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

// Cross-option rules of the retrofit (RetrofitConfig::validate); a plan has no data and no
// run directory, so those required paths hold placeholders.
void validate_plan(const PlanConfig& a) {
  RetrofitConfig r = a.retrofit;
  r.run.model = a.model;
  r.run.data = r.run.out = "(not used by dms plan)";
  r.validate();
}

// The device planned for: --device, auto as `dms retrofit` would choose on this machine.
at::Device plan_device(DeviceKind kind) {
  if (kind == DeviceKind::cuda) return at::Device(at::kCUDA, 0);
  if (kind == DeviceKind::cpu || !at::hasCUDA()) return at::Device(at::kCPU);
  return at::Device(at::kCUDA, 0);
}

void run_plan(const PlanConfig& a) {
  validate_plan(a);
  const ModelConfig model = read_model_config(a.model);
  const std::string& teacher_path = a.retrofit.run.teacher;
  const ModelConfig teacher = teacher_path.empty() ? model : read_model_config(teacher_path);
  const at::Device device = plan_device(a.retrofit.dist.device);
  // A CUDA device this machine lacks has no memory to read: only --device-memory judges.
  const bool readable = !device.is_cuda() || at::hasCUDA();
  const DeviceMemory mem = readable || a.retrofit.dist.device_memory_gib > 0
                               ? device_memory(device, a.retrofit.dist.device_memory_gib)
                               : DeviceMemory{};
  const PlanInput in =
      plan_input(a.retrofit, model, teacher, a.seq_len, a.world_size, device.is_cuda());
  const Plan p = plan_step(in);
  std::cout << format_plan(in, p, mem.bytes);
  if (mem.bytes > 0) {
    std::cout << "device memory: " << mem.source << "\n";
    if (double(p.total) > mem.bytes)
      for (const auto& [name, total] : plan_reductions(in))
        std::cout << "  with " << name << ": " << std::fixed << std::setprecision(2) << gib(total)
                  << " GiB\n";
  }
  if (!a.json.empty()) {
    if (fs::path(a.json).has_parent_path()) fs::create_directories(fs::path(a.json).parent_path());
    write_file_atomic(a.json, plan_json(in, p, mem.bytes).dump(2) + "\n");
    std::cerr << "wrote " << a.json << "\n";
  }
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto st = std::make_shared<Parsed<PlanConfig>>();
  CLI::App* cmd = app.add_subcommand(
      "plan",
      "Per-device memory of a retrofit step by part (weights, teacher, gradients, master "
      "weights, optimizer, activations, logits and KD buffers), whether it fits a device, and "
      "the step's FLOPs, from a model's configuration and the retrofit's options (the same "
      "model `dms retrofit` checks before it loads anything). docs/plan.md explains each part.");
  add_fields(cmd, plan_fields(), st->cfg, st->errors);
  cmd->callback([st] {
    st->check(plan_fields());
    run_plan(st->cfg);
  });
}

}  // namespace dms
