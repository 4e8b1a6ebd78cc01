#include "trainer/dist/launcher.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>

#include "trainer/dist/distributed.h"

namespace dms {

namespace {

std::vector<std::string> g_args;
std::atomic<int> g_signal{0};

void on_signal(int sig) {
  g_signal = sig;
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// The worker command: ours without --nproc.
std::vector<std::string> worker_args() {
  std::vector<std::string> args;
  for (size_t i = 0; i < g_args.size(); ++i) {
    if (g_args[i] == "--nproc") {
      ++i;
      continue;
    }
    if (g_args[i].rfind("--nproc=", 0) == 0) continue;
    args.push_back(g_args[i]);
  }
  return args;
}

// Forks worker `rank` of nproc running args, with the torchrun-style environment.
pid_t spawn_worker(int rank, int nproc, int port, const std::vector<std::string>& args) {
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
  if (pid > 0) return pid;
  prctl(PR_SET_PDEATHSIG, SIGTERM);  // a killed launcher takes its workers with it
  setenv("RANK", std::to_string(rank).c_str(), 1);
  setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
  setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
  setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  std::vector<char*> cargs;
  for (const auto& a : args) cargs.push_back(const_cast<char*>(a.c_str()));
  cargs.push_back(nullptr);
  execv("/proc/self/exe", cargs.data());
  std::perror("execv");
  _exit(127);
}

// The running workers: who is done, and whether (and until when) they are being stopped.
struct Workers {
  std::vector<pid_t> pids;
  std::vector<bool> done;
  size_t remaining = 0;
  double grace_s = 0;
  bool stopping = false;
  std::chrono::steady_clock::time_point stop_deadline = std::chrono::steady_clock::now();

  void signal_running(int sig) const {
    for (size_t i = 0; i < pids.size(); ++i)
      if (!done[i]) kill(pids[i], sig);
  }
  // SIGTERM to those still running; SIGKILL follows once grace_s has passed.
  void stop() {
    signal_running(SIGTERM);
    stopping = true;
    stop_deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(grace_s));
  }
  // Records the exit of pid; the first failure sets result and stops the others.
  void exited(pid_t pid, int status, int& result) {
    for (size_t i = 0; i < pids.size(); ++i) {
      if (pids[i] != pid) continue;
      done[i] = true;
      --remaining;
      const int code = exit_code(status);
      if (code != 0 && result == 0) {
        result = code;
        std::cerr << "launcher: worker " << i << " exited with " << code
                  << "; stopping the others\n";
      }
      if (code != 0 && !stopping) stop();
    }
  }
};

}  // namespace

void set_program_args(int argc, char** argv) {
  g_args.assign(argv, argv + argc);
}

int launch_local_workers(int nproc, double grace_s) {
  const std::vector<std::string> args = worker_args();
  const int port = free_local_port();
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  Workers w;
  w.grace_s = grace_s;
  for (int r = 0; r < nproc; ++r) w.pids.push_back(spawn_worker(r, nproc, port, args));
  std::cerr << "launched " << nproc << " workers (rendezvous 127.0.0.1:" << port << ")\n";

  int result = 0;
  w.done.assign(w.pids.size(), false);
  w.remaining = w.pids.size();
  while (w.remaining > 0) {
    if (g_signal && !w.stopping) {
      std::cerr << "launcher: signal " << g_signal << ", stopping workers\n";
      w.stop();
      result = 128 + g_signal;
    }
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      w.exited(pid, status, result);
      continue;
    }
    if (w.stopping && std::chrono::steady_clock::now() > w.stop_deadline) w.signal_running(SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return result;
}

}  // namespace dms
