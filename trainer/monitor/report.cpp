#include "trainer/monitor/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"

namespace fs = std::filesystem;

namespace dms {

namespace {

struct Series {
  std::string name, color;
  std::vector<double> x, y;
  bool markers = false;  // a dot at each point (few points: the curve's)
};

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}

std::string num(double v, int prec = 3) {
  std::ostringstream o;
  o << std::setprecision(prec) << v;
  return o.str();
}

// A line chart as an <svg> element with axes, 5 ticks per axis and a legend.
std::string line_chart(const std::string& id, const std::string& title,
                       const std::vector<Series>& series, bool log_y, const std::string& x_label) {
  const double W = 640, H = 300, l = 60, r = 150, t = 30, b = 40;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  auto ty = [&](double v) { return log_y ? std::log10(std::max(v, 1e-12)) : v; };
  for (const auto& s : series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i]) || (log_y && s.y[i] <= 0)) continue;
      x0 = std::min(x0, s.x[i]);
      x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, ty(s.y[i]));
      y1 = std::max(y1, ty(s.y[i]));
    }
  std::ostringstream o;
  o << "<svg id=\"" << id << "\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W
    << "\" height=\"" << H << "\" viewBox=\"0 0 " << W << " " << H << "\">"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
    << "<text x=\"" << l << "\" y=\"18\" font-size=\"14\" font-family=\"sans-serif\">" << esc(title)
    << (log_y ? " (log scale)" : "") << "</text>";
  if (x0 > x1) {
    o << "<text x=\"" << W / 2 << "\" y=\"" << H / 2
      << "\" font-family=\"sans-serif\">no data yet</text></svg>";
    return o.str();
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  auto px = [&](double x) { return l + (x - x0) / (x1 - x0) * (W - l - r); };
  auto py = [&](double y) { return t + (1 - (ty(y) - y0) / (y1 - y0)) * (H - t - b); };
  o << "<g font-size=\"10\" font-family=\"sans-serif\" fill=\"#444\">";
  for (int i = 0; i <= 4; ++i) {
    const double yv = y0 + (y1 - y0) * i / 4, yp = t + (1 - double(i) / 4) * (H - t - b);
    o << "<line x1=\"" << l << "\" x2=\"" << W - r << "\" y1=\"" << yp << "\" y2=\"" << yp
      << "\" stroke=\"#eee\"/><text x=\"" << l - 4 << "\" y=\"" << yp + 3
      << "\" text-anchor=\"end\">" << num(log_y ? std::pow(10.0, yv) : yv) << "</text>";
    const double xv = x0 + (x1 - x0) * i / 4, xp = l + double(i) / 4 * (W - l - r);
    o << "<text x=\"" << xp << "\" y=\"" << H - b + 14 << "\" text-anchor=\"middle\">" << num(xv, 4)
      << "</text>";
  }
  o << "<text x=\"" << (l + W - r) / 2 << "\" y=\"" << H - 6 << "\" text-anchor=\"middle\">"
    << esc(x_label) << "</text></g>";
  o << "<rect x=\"" << l << "\" y=\"" << t << "\" width=\"" << W - l - r << "\" height=\""
    << H - t - b << "\" fill=\"none\" stroke=\"#999\"/>";
  int row = 0;
  for (const auto& s : series) {
    o << "<path class=\"series\" fill=\"none\" stroke=\"" << s.color
      << "\" stroke-width=\"1.5\" d=\"";
    bool pen = false;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i]) || (log_y && s.y[i] <= 0)) {
        pen = false;
        continue;
      }
      o << (pen ? "L" : "M") << num(px(s.x[i]), 6) << " " << num(py(s.y[i]), 6) << " ";
      pen = true;
    }
    o << "\"/>";
    for (size_t i = 0; s.markers && i < s.x.size(); ++i)
      if (std::isfinite(s.y[i]) && !(log_y && s.y[i] <= 0))
        o << "<circle cx=\"" << num(px(s.x[i]), 6) << "\" cy=\"" << num(py(s.y[i]), 6)
          << "\" r=\"3\" fill=\"" << s.color << "\"/>";
    o << "<rect x=\"" << W - r + 10 << "\" y=\"" << t + row * 16
      << "\" width=\"12\" height=\"3\" fill=\"" << s.color << "\"/><text x=\"" << W - r + 26
      << "\" y=\"" << t + row * 16 + 5 << "\" font-size=\"11\" font-family=\"sans-serif\">"
      << esc(s.name) << "</text>";
    ++row;
  }
  o << "</svg>";
  return o.str();
}

// The start of a heat map or bar chart: the <svg> element on a white ground, the title, and
// a <g> of the given font size that the chart closes with "</g></svg>".
void open_chart(std::ostream& o, const std::string& id, const std::string& title, double W,
                double H, int font_size) {
  o << "<svg id=\"" << id << "\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W
    << "\" height=\"" << H
    << "\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"10\" y=\"18\" "
       "font-size=\"14\" font-family=\"sans-serif\">"
    << esc(title) << "</text><g font-size=\"" << font_size << "\" font-family=\"sans-serif\">";
}

// Layer x head heat map of values in [0, 1] (eviction rates).
std::string heat_map(const std::string& id, const std::string& title, const nlohmann::json& m) {
  const size_t L = m.size(), K = L ? m[0].size() : 0;
  const double cell = 40, l = 70, t = 40;
  const double W = std::max(460.0, l + cell * double(K) + 20), H = t + cell * double(L) + 30;
  std::ostringstream o;
  open_chart(o, id, title, W, H, 10);
  for (size_t i = 0; i < L; ++i) {
    o << "<text x=\"" << l - 6 << "\" y=\"" << t + cell * double(i) + cell / 2 + 3
      << "\" text-anchor=\"end\">layer " << i << "</text>";
    for (size_t h = 0; h < K; ++h) {
      const double v = m[i][h].get<double>();
      const int shade = int(255 * (1 - std::clamp(v, 0.0, 1.0)));
      o << "<rect class=\"cell\" x=\"" << l + cell * double(h) << "\" y=\"" << t + cell * double(i)
        << "\" width=\"" << cell - 2 << "\" height=\"" << cell - 2 << "\" fill=\"rgb(255," << shade
        << "," << shade << ")\"><title>layer " << i << " head " << h << ": " << num(v)
        << "</title></rect>"
        << "<text x=\"" << l + cell * double(h) + cell / 2 - 1 << "\" y=\""
        << t + cell * double(i) + cell / 2 + 3 << "\" text-anchor=\"middle\">" << num(v, 2)
        << "</text>";
    }
  }
  for (size_t h = 0; h < K; ++h)
    o << "<text x=\"" << l + cell * double(h) + cell / 2 << "\" y=\"" << t - 4
      << "\" text-anchor=\"middle\">h" << h << "</text>";
  o << "</g></svg>";
  return o.str();
}

// Bars of tokens held per (layer, head), grouped by layer.
std::string bar_chart(const std::string& id, const std::string& title, const nlohmann::json& m) {
  std::vector<double> v;
  std::vector<std::string> label;
  for (size_t i = 0; i < m.size(); ++i)
    for (size_t h = 0; h < m[i].size(); ++h) {
      v.push_back(m[i][h].get<double>());
      label.push_back("L" + std::to_string(i) + "h" + std::to_string(h));
    }
  const double W = 640, H = 260, l = 50, b = 50, t = 30;
  const double mx = v.empty() ? 1 : *std::max_element(v.begin(), v.end());
  const double bw = v.empty() ? 1 : (W - l - 20) / double(v.size());
  std::ostringstream o;
  open_chart(o, id, title, W, H, 9);
  for (size_t i = 0; i < v.size(); ++i) {
    const double hgt = mx > 0 ? v[i] / mx * (H - t - b) : 0;
    o << "<rect class=\"bar\" x=\"" << l + bw * double(i) << "\" y=\"" << H - b - hgt
      << "\" width=\"" << std::max(1.0, bw - 2) << "\" height=\"" << hgt
      << "\" fill=\"#4a7fb5\"><title>" << label[i] << ": " << num(v[i]) << " tokens</title></rect>";
    if (v.size() <= 48)
      o << "<text x=\"" << l + bw * double(i) + bw / 2 << "\" y=\"" << H - b + 12
        << "\" text-anchor=\"middle\">" << label[i] << "</text>";
  }
  o << "<text x=\"" << l - 4 << "\" y=\"" << t + 8 << "\" text-anchor=\"end\">" << num(mx)
    << "</text>"
    << "<text x=\"" << l - 4 << "\" y=\"" << H - b << "\" text-anchor=\"end\">0</text></g></svg>";
  return o.str();
}

std::vector<nlohmann::json> read_metrics(const fs::path& p) {
  std::vector<nlohmann::json> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    try {
      out.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception&) {
      // A torn last line of a live or killed run.
    }
  }
  return out;
}

Series series_of(const std::vector<nlohmann::json>& recs, const std::string& key,
                 const std::string& name, const std::string& color,
                 const std::string& x_key = "step") {
  Series s{name, color, {}, {}};
  for (const auto& r : recs)
    if (r.contains(key) && r[key].is_number() && r.contains(x_key)) {
      s.x.push_back(r[x_key].get<double>());
      s.y.push_back(r[key].get<double>());
    }
  return s;
}

// A JSON file, or a discarded value where it does not parse.
nlohmann::json read_json_lenient(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in, nullptr, false);
}

// What the report shows of a run directory.
struct RunData {
  std::vector<nlohmann::json> recs;  // metrics.jsonl
  nlohmann::json cfg = nlohmann::json::object();
  nlohmann::json eval;      // eval.json of the run or of the folder above
  nlohmann::json curve;     // curve.json (dms eval --curve), likewise
  nlohmann::json last_val;  // the last record with per-head validation stats
  std::vector<nlohmann::json> alerts;
};

RunData read_run(const fs::path& run) {
  RunData d;
  d.recs = read_metrics(run / "metrics.jsonl");
  if (fs::exists(run / "config.json")) d.cfg = read_json_lenient(run / "config.json");
  for (const fs::path& p : {run / "eval.json", run.parent_path() / "eval.json"})
    if (d.eval.is_null() && fs::exists(p)) d.eval = read_json_lenient(p);
  for (const fs::path& p : {run / "curve.json", run.parent_path() / "curve.json"})
    if (d.curve.is_null() && fs::exists(p)) d.curve = read_json_lenient(p);
  for (const auto& r : d.recs) {
    if (r.contains("val_eviction_rate_lh")) d.last_val = r;
    if (r.contains("alert")) d.alerts.push_back(r);
  }
  return d;
}

using Charts = std::vector<std::pair<std::string, std::string>>;  // id, svg

// The curve's figure `key` against effective KV CR, one series per policy, by CR.
std::vector<Series> curve_series(const nlohmann::json& curve, const std::string& key) {
  const std::vector<std::pair<std::string, std::string>> policies = {
      {"dms", "#d62728"}, {"window", "#1f77b4"}, {"h2o", "#2ca02c"}, {"tova", "#9467bd"}};
  std::vector<Series> out;
  for (const auto& [policy, color] : policies) {
    std::vector<std::pair<double, double>> pts;
    for (const auto& p : curve["points"])
      for (const auto& r : p.value("rows", nlohmann::json::array()))
        if (r.value("policy", "") == policy &&
            r.value("effective_kv_cr", nlohmann::json()).is_number() &&
            r.value(key, nlohmann::json()).is_number())
          pts.emplace_back(r["effective_kv_cr"].get<double>(), r[key].get<double>());
    std::sort(pts.begin(), pts.end());
    Series s{policy == "dms"    ? "DMS"
             : policy == "h2o"  ? "H2O"
             : policy == "tova" ? "TOVA"
                                : "window",
             color,
             {},
             {},
             true};
    for (const auto& [x, y] : pts) {
      s.x.push_back(x);
      s.y.push_back(y);
    }
    out.push_back(s);
  }
  const nlohmann::json& o = curve["original"];
  if (key == "ppl" && o.is_object() && o.value("ppl", nlohmann::json()).is_number() &&
      !out.front().x.empty()) {  // the original's perplexity as a level line across the plot
    double x0 = 1e300, x1 = 0;
    for (const auto& s : out)
      for (double x : s.x) x0 = std::min(x0, x), x1 = std::max(x1, x);
    out.push_back(
        {"original", "#7f7f7f", {x0, x1}, {o["ppl"].get<double>(), o["ppl"].get<double>()}});
  }
  return out;
}

Charts make_charts(const RunData& d) {
  const auto& recs = d.recs;
  nlohmann::json last_val = d.last_val;  // non-const: a missing key reads as null
  Charts charts;
  auto losses = [&](bool log_y) {
    return line_chart(log_y ? "chart-loss-log" : "chart-loss", "Losses",
                      {series_of(recs, "kd_loss", "KD (train)", "#d62728"),
                       series_of(recs, "dms_loss", "DMS (train)", "#9467bd"),
                       series_of(recs, "val_kd_loss", "KD (validation)", "#ff9896")},
                      log_y, "step");
  };
  charts.emplace_back("chart-loss", losses(false));
  charts.emplace_back("chart-loss-log", losses(true));
  charts.emplace_back("chart-lm",
                      line_chart("chart-lm", "Student LM loss",
                                 {series_of(recs, "lm_loss", "LM (train)", "#2ca02c"),
                                  series_of(recs, "val_lm_loss", "LM (validation)", "#98df8a")},
                                 false, "step"));
  charts.emplace_back(
      "chart-cr",
      line_chart(
          "chart-cr", "Compression ratio",
          {series_of(recs, "target_cr", "target", "#7f7f7f"),
           series_of(recs, "decision_cr", "decision (train)", "#1f77b4"),
           series_of(recs, "effective_kv_cr", "effective KV (train)", "#ff7f0e"),
           series_of(recs, "end_of_sequence_kv_cr", "end-of-sequence KV (train)", "#98df8a"),
           series_of(recs, "val_decision_cr", "decision (val)", "#aec7e8"),
           series_of(recs, "val_effective_kv_cr", "effective KV (val)", "#ffbb78"),
           series_of(recs, "val_end_of_sequence_kv_cr", "end-of-sequence KV (val)", "#2ca02c")},
          false, "step"));
  charts.emplace_back(
      "chart-throughput",
      line_chart("chart-throughput", "Throughput",
                 {series_of(recs, "tokens_per_s", "tokens/s", "#17becf", "elapsed_s")}, false,
                 "elapsed seconds"));
  if (!last_val.is_null()) {
    charts.emplace_back("chart-heat",
                        heat_map("chart-heat",
                                 "Eviction rate per layer and KV head (validation, step " +
                                     std::to_string(last_val["step"].get<int64_t>()) + ")",
                                 last_val["val_eviction_rate_lh"]));
    charts.emplace_back(
        "chart-cache",
        bar_chart("chart-cache", "Tokens held per KV head (mean over queries, validation)",
                  last_val["val_cache_size_lh"]));
  }
  if (d.curve.is_object() && d.curve.contains("points")) {
    charts.emplace_back(
        "chart-pareto-kl",
        line_chart("chart-pareto-kl", "KL(original || model) vs KV compression",
                   curve_series(d.curve, "kl_original_model"), false, "effective KV CR"));
    charts.emplace_back("chart-pareto-ppl",
                        line_chart("chart-pareto-ppl", "Perplexity vs KV compression",
                                   curve_series(d.curve, "ppl"), false, "effective KV CR"));
  }
  return charts;
}

// --format png: each chart as <out>/<id>.svg and, through rsvg-convert, <out>/<id>.png.
void write_png_charts(const Charts& charts, const std::string& out) {
  fs::create_directories(out);
  for (const auto& [id, svg] : charts) {
    const fs::path svg_path = fs::path(out) / (id + ".svg"), png = fs::path(out) / (id + ".png");
    write_file_atomic(svg_path.string(), svg);
    const std::string cmd =
        "rsvg-convert -f png -o '" + png.string() + "' '" + svg_path.string() + "'";
    if (std::system(cmd.c_str()) != 0)
      throw std::runtime_error("rsvg-convert failed for " + svg_path.string() +
                               " (install librsvg2-bin for --format png)");
  }
}

void html_head(std::ostream& h, const std::string& run, const RunData& d) {
  h << "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>dms report: " << esc(run)
    << "</title><style>body{font-family:sans-serif;margin:24px;color:#222}h2{margin-top:28px}"
       "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px "
       "8px;text-align:right}"
       "th{background:#f4f4f4}.chart{margin:6px 12px 6px 0;border:1px solid "
       "#ddd}.hidden{display:none}"
       ".alert{color:#b00}</style></head><body>";
  h << "<h1>DMS retrofit report</h1><p>Run <code>" << esc(run) << "</code>: " << d.recs.size()
    << " records";
  if (!d.recs.empty() && d.recs.back().contains("step"))
    h << ", last step " << d.recs.back()["step"];
  h << ".</p>";
  if (!d.alerts.empty()) {
    h << "<h2>Alerts</h2><ul>";
    for (const auto& a : d.alerts)
      h << "<li class=\"alert\">step " << a.value("step", 0) << " "
        << esc(a.value("alert", std::string())) << ": " << esc(a.value("message", std::string()))
        << "</li>";
    h << "</ul>";
  }
}

// The charts, the two loss charts toggled by the log-scale checkbox.
void html_charts(std::ostream& h, const Charts& charts) {
  h << "<h2>Training</h2><label><input type=\"checkbox\" id=\"logscale\"> log scale for "
       "losses</label><div>";
  for (const auto& [id, svg] : charts) {
    if (id == "chart-loss-log")
      h << "<span class=\"hidden\" id=\"wrap-loss-log\">" << svg << "</span>";
    else if (id == "chart-loss")
      h << "<span id=\"wrap-loss\">" << svg << "</span>";
    else if (id == "chart-heat")
      h << "</div><h2>Eviction</h2><div>" << svg;
    else if (id == "chart-pareto-kl")
      h << "</div><h2>Quality vs KV memory (dms eval --curve)</h2><div>" << svg;
    else
      h << svg;
  }
  h << "</div>";
}

// A figure that was not computed is null (or absent): "-".
std::string figure(const nlohmann::json& r, const char* key, int prec) {
  return r.contains(key) && r[key].is_number() ? num(r[key].get<double>(), prec) : std::string("-");
}

void html_eval_table(std::ostream& h, const nlohmann::json& eval) {
  if (!eval.is_object() || !eval.contains("rows")) return;
  h << "<h2>Evaluation</h2>";
  if (eval.contains("original") && eval["original"].is_string())
    h << "<p>original: <code>" << esc(eval["original"].get<std::string>()) << "</code></p>";
  h << "<table><tr><th>model</th><th>policy</th><th>budget</th><th>decision "
       "CR</th><th>effective KV CR</th><th>end-of-sequence KV "
       "CR</th><th>ppl</th><th>KL(original||model)</th>"
       "<th>KL(model||original)</th><th>greedy agreement</th></tr>";
  for (const auto& r : eval["rows"])
    h << "<tr><td>" << esc(r.value("model", std::string())) << "</td><td>"
      << esc(r.value("policy", std::string())) << "</td><td>"
      << (r.value("budget", 0) > 0 ? std::to_string(r.value("budget", 0)) : "-") << "</td><td>"
      << figure(r, "decision_cr", 4) << "</td><td>" << figure(r, "effective_kv_cr", 4)
      << "</td><td>" << figure(r, "end_of_sequence_kv_cr", 4) << "</td><td>" << figure(r, "ppl", 5)
      << "</td><td>" << figure(r, "kl_original_model", 4) << "</td><td>"
      << figure(r, "kl_model_original", 4) << "</td><td>" << figure(r, "greedy_agreement", 3)
      << "</td></tr>";
  h << "</table>";
}

// The configuration table, then the log-scale toggle's script and the end of the page.
void html_config_and_end(std::ostream& h, const nlohmann::json& cfg) {
  h << "<h2>Configuration</h2><table>";
  for (auto it = cfg.begin(); it != cfg.end(); ++it)
    h << "<tr><th style=\"text-align:left\">" << esc(it.key())
      << "</th><td style=\"text-align:left\">" << esc(it.value().dump()) << "</td></tr>";
  h << "</table><script>document.getElementById('logscale').addEventListener('change',function(e){"
       "document.getElementById('wrap-loss').classList.toggle('hidden',e.target.checked);"
       "document.getElementById('wrap-loss-log').classList.toggle('hidden',!e.target.checked);});</"
       "script>"
       "</body></html>\n";
}

}  // namespace

int write_report(const ReportOptions& o) {
  const fs::path run(o.run);
  require(fs::exists(run / "metrics.jsonl"), o.run,
          "no metrics.jsonl (not a retrofit run directory?)");
  require(o.format == "html" || o.format == "png", "--format", "html or png");
  const RunData d = read_run(run);
  const Charts charts = make_charts(d);
  if (o.format == "png") {
    write_png_charts(charts, o.out);
    return int(charts.size());
  }
  std::ostringstream h;
  html_head(h, o.run, d);
  html_charts(h, charts);
  html_eval_table(h, d.eval);
  html_config_and_end(h, d.cfg);
  if (fs::path(o.out).has_parent_path()) fs::create_directories(fs::path(o.out).parent_path());
  write_file_atomic(o.out, h.str());
  return int(charts.size());
}

}  // namespace dms
