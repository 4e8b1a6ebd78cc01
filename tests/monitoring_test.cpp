// Monitoring: TensorBoard event files (framing, CRC32C, protobuf decoding by protobuf's own
// library, surviving a kill), alerts in a run, and the HTML/PNG report in headless Chromium.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "checkpoints/checkpoint_dir.h"
#include "tests/tb_event.h"
#include "tests/test_util.h"
#include "trainer/monitor/tensorboard.h"

namespace fs = std::filesystem;

namespace dms {
namespace {

using test::asset;
using test::quote;

TEST(TensorBoard, Crc32cMatchesTheSpecVectors) {
  // RFC 3720 (iSCSI) appendix B.4 and the common check value.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
  std::string inc(32, '\0');
  for (int i = 0; i < 32; ++i) inc[size_t(i)] = char(i);
  EXPECT_EQ(crc32c(inc.data(), 32), 0x46DD794Eu);
}

// Reads TFRecords, verifying both CRCs; stops at a torn tail. Returns the payloads.
std::vector<std::string> read_records(const std::string& path, bool* torn = nullptr) {
  const std::string b = test::read_bytes(path);
  std::vector<std::string> out;
  size_t p = 0;
  if (torn) *torn = false;
  while (p < b.size()) {
    if (p + 12 > b.size()) {
      if (torn) *torn = true;
      break;
    }
    uint64_t len;
    uint32_t lcrc;
    std::memcpy(&len, b.data() + p, 8);
    std::memcpy(&lcrc, b.data() + p + 8, 4);
    EXPECT_EQ(lcrc, masked_crc32c(b.data() + p, 8)) << "length CRC at " << p;
    if (p + 12 + len + 4 > b.size()) {
      if (torn) *torn = true;
      break;
    }
    uint32_t dcrc;
    std::memcpy(&dcrc, b.data() + p + 12 + len, 4);
    EXPECT_EQ(dcrc, masked_crc32c(b.data() + p + 12, len)) << "data CRC at " << p;
    out.emplace_back(b.data() + p + 12, len);
    p += 12 + len + 4;
  }
  return out;
}

TEST(TensorBoard, EventsDecodeWithProtobufsOwnParser) {
  test::TempDir tmp;
  std::string path;
  {
    EventWriter w(tmp.path);
    path = w.path();
    w.scalars(1, {{"train/kd_loss", 0.5f}, {"compression/decision_cr", 3.25f}});
    w.scalars(300, {{"val/kd_loss", 1e-3f}});
  }
  EXPECT_NE(fs::path(path).filename().string().find("events.out.tfevents."), std::string::npos);
  auto recs = read_records(path);
  ASSERT_EQ(recs.size(), 3u);
  test::TbEvent e;
  ASSERT_TRUE(test::parse_tb_event(recs[0], e));
  EXPECT_EQ(e.file_version, "brain.Event:2");
  EXPECT_GT(e.wall_time, 1.6e9);
  ASSERT_TRUE(test::parse_tb_event(recs[1], e));
  EXPECT_EQ(e.step, 1);
  ASSERT_EQ(e.scalars.size(), 2u);
  EXPECT_EQ(e.scalars[0].first, "train/kd_loss");
  EXPECT_EQ(e.scalars[0].second, 0.5f);
  EXPECT_EQ(e.scalars[1].first, "compression/decision_cr");
  EXPECT_EQ(e.scalars[1].second, 3.25f);
  ASSERT_TRUE(test::parse_tb_event(recs[2], e));
  EXPECT_EQ(e.step, 300);
  EXPECT_EQ(e.scalars[0].second, 1e-3f);
}

std::vector<nlohmann::json> records(const std::string& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    try {
      out.push_back(nlohmann::json::parse(line));
    } catch (...) {
    }
  }
  return out;
}

std::string run_args(const std::string& out, int steps, const std::string& target = "4",
                     const std::string& lr = "1e-2") {
  return "retrofit --model " + quote(asset("stories260K/stories260K.bin")) + " --data " +
         quote(test::small_token_file()) + " --out " + quote(out) + " --window 8 --target-cr " +
         target + " --micro-batch 2 --lr " + lr + " --threads 1 --max-steps " +
         std::to_string(steps) + " --eval-every 5 --eval-batches 2 --checkpoint-every 2";
}

TEST(TensorBoard, KilledRunLeavesEveryCompleteRecordReadable) {
  test::TempDir tmp;
  auto bg = test::spawn_dms(run_args(tmp.file("run"), 400), "", tmp.path, "run");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline && records(tmp.file("run")).size() < 12)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  bg.kill_group(SIGKILL);
  bg.wait(30);
  std::string events;
  for (const auto& e : fs::directory_iterator(tmp.file("run")))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0)
      events = e.path().string();
  ASSERT_FALSE(events.empty());
  bool torn = false;
  auto recs = read_records(events, &torn);
  ASSERT_GE(recs.size(), 10u);
  int64_t last_step = 0;
  for (size_t i = 1; i < recs.size(); ++i) {
    test::TbEvent e;
    ASSERT_TRUE(test::parse_tb_event(recs[i], e)) << "record " << i;
    EXPECT_GE(e.step, last_step);
    last_step = e.step;
    EXPECT_GT(e.scalars.size(), 0u);
  }
}

TEST(Alerts, SpikeIsReportedAndNanStopsCleanlyKeepingTheCheckpoint) {
  test::TempDir tmp;
  // A KD spike at step 14 (injected into what the monitor sees): reported, the run goes on.
  auto a = test::spawn_dms(run_args(tmp.file("spike"), 16) + " --stop-on-alert none",
                           "DMS_TEST_INJECT=spike@14", tmp.path, "spike");
  ASSERT_EQ(a.wait(120), 0) << a.err();
  EXPECT_NE(a.err().find("ALERT kd_spike: KD loss"), std::string::npos) << a.err();
  int spikes = 0;
  for (const auto& r : records(tmp.file("spike")))
    if (r.value("alert", std::string()) == "kd_spike") {
      ++spikes;
      EXPECT_EQ(r["step"], 14);
    }
  EXPECT_EQ(spikes, 1);
  // The same spike with --stop-on-alert kd_spike ends the run.
  auto s = test::spawn_dms(run_args(tmp.file("spike_stop"), 16) + " --stop-on-alert kd_spike",
                           "DMS_TEST_INJECT=spike@14", tmp.path, "spike_stop");
  EXPECT_EQ(s.wait(120), 1) << s.err();
  EXPECT_NE(s.err().find("stopped by alert 'kd_spike' at step 14"), std::string::npos) << s.err();

  // NaN at step 7 (stops by default): clean stop, checkpoints of steps 2..6 intact, none after.
  auto n = test::spawn_dms(run_args(tmp.file("nan"), 16), "DMS_TEST_INJECT=nan@7", tmp.path, "nan");
  EXPECT_EQ(n.wait(120), 1) << n.err();
  EXPECT_NE(n.err().find("ALERT nan"), std::string::npos) << n.err();
  EXPECT_NE(n.err().find("stopped by alert 'nan' at step 7"), std::string::npos) << n.err();
  auto ck = list_checkpoints(tmp.file("nan"));
  ASSERT_FALSE(ck.empty());
  EXPECT_EQ(read_train_state(ck.back()).step, 6);
  bool nan_record = false;
  for (const auto& r : records(tmp.file("nan")))
    nan_record |= r.value("alert", std::string()) == "nan";
  EXPECT_TRUE(nan_record);

  // An unreachable target: validation CR lags for 2 evaluations -> cr_lag alert, stop.
  auto c = test::spawn_dms(run_args(tmp.file("lag"), 30, "60", "1e-5") +
                               " --final-step 1 --alert-cr-evals 2 --stop-on-alert cr_lag",
                           "", tmp.path, "lag");
  EXPECT_EQ(c.wait(120), 1) << c.err();
  EXPECT_NE(c.err().find("ALERT cr_lag"), std::string::npos) << c.err();
  EXPECT_NE(c.err().find("stopped by alert 'cr_lag' at step 10"), std::string::npos) << c.err();
}

TEST(Report, RendersInHeadlessChromiumWithEveryChartAndNoConsoleErrors) {
  test::TempDir tmp;
  auto r = test::run_dms(run_args(tmp.file("run"), 12));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json eval = {{"rows",
                          {{{"model", "dms"},
                            {"policy", "dms"},
                            {"budget", 0},
                            {"decision_cr", 4.1},
                            {"effective_kv_cr", 2.2},
                            {"ppl", 3.9},
                            {"kl_original_model", 0.04},
                            {"kl_model_original", 0.05},
                            {"greedy_agreement", nullptr}}}}};
  test::write_bytes(tmp.file("run/eval.json"), eval.dump());
  r = test::run_dms("report --run " + quote(tmp.file("run")) + " --out " +
                    quote(tmp.file("report.html")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string html = test::read_bytes(tmp.file("report.html"));
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org/2000/svg"));  // no network fetches
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find("<script src"), std::string::npos);

  // Render it: the DOM after scripts ran, the console log, and a screenshot.
  const std::string chrome =
      "chromium --headless --no-sandbox --disable-gpu --enable-logging=stderr --v=0 ";
  const std::string url = "file://" + tmp.file("report.html");
  const std::string dom_cmd = chrome + "--dump-dom " + quote(url) + " > " +
                              quote(tmp.file("dom.html")) + " 2> " + quote(tmp.file("console.txt"));
  ASSERT_EQ(std::system(dom_cmd.c_str()), 0) << test::read_bytes(tmp.file("console.txt"));
  const std::string dom = test::read_bytes(tmp.file("dom.html"));
  for (const char* id : {"chart-loss", "chart-loss-log", "chart-lm", "chart-cr", "chart-throughput",
                         "chart-heat", "chart-cache"})
    EXPECT_NE(dom.find(std::string("<svg id=\"") + id + "\""), std::string::npos) << id;
  auto count = [&](const std::string& needle) {
    size_t n = 0;
    for (size_t p = dom.find(needle); p != std::string::npos; p = dom.find(needle, p + 1)) ++n;
    return n;
  };
  EXPECT_GE(count("class=\"series\""), 10u);  // loss, LM, CR, throughput curves
  EXPECT_EQ(count("class=\"cell\""), 20u);    // 5 layers x 4 KV heads
  EXPECT_EQ(count("class=\"bar\""), 20u);
  EXPECT_NE(dom.find("<td>dms</td>"), std::string::npos);  // the eval table
  const std::string console = test::read_bytes(tmp.file("console.txt"));
  EXPECT_EQ(console.find("Uncaught"), std::string::npos) << console;
  EXPECT_FALSE(std::regex_search(console, std::regex("CONSOLE.*(error|Error)"))) << console;

  const std::string shot = fs::temp_directory_path().string() + "/dms_report_screenshot.png";
  const std::string shot_cmd = chrome + "--window-size=1400,2400 --screenshot=" + quote(shot) +
                               " " + quote(url) + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(shot_cmd.c_str()), 0);
  const std::string png = test::read_bytes(shot);
  EXPECT_GT(png.size(), 20000u);
  EXPECT_EQ(png.substr(1, 3), "PNG");

  // The same charts as PNG files.
  r = test::run_dms("report --run " + quote(tmp.file("run")) + " --out " + quote(tmp.file("png")) +
                    " --format png");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* id : {"chart-loss", "chart-cr", "chart-heat", "chart-cache"})
    EXPECT_EQ(test::read_bytes(tmp.file(std::string("png/") + id + ".png")).substr(1, 3), "PNG")
        << id;
}

}  // namespace
}  // namespace dms
