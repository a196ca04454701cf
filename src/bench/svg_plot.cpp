#include "bench/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>

#include "core/error.h"

namespace batchmax::bench {
namespace {

struct Point {
  double x, y;
  std::string label;
};

constexpr double kPanelW = 460, kPanelH = 340, kLeft = 70, kRight = 20, kTop = 50, kBottom = 55;

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

std::string num(double v) {
  char b[32];
  if (v != 0 && (std::fabs(v) >= 1e5 || std::fabs(v) < 1e-2)) std::snprintf(b, sizeof b, "%.2g", v);
  else if (std::fabs(v - std::round(v)) < 1e-9) std::snprintf(b, sizeof b, "%.0f", v);
  else std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

// 1, 2 or 5 times a power of ten, giving about `n` ticks over [0, hi].
double tick_step(double hi, int n) {
  const double raw = hi / n, p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * p) return m * p;
  return 10 * p;
}

const char* colour(size_t i) {
  static const char* c[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"};
  return c[i % 6];
}

// One panel at x offset `ox`: axes from 0, grid, one polyline per series.
std::string panel(double ox, const std::string& xlabel, const std::string& ylabel,
                  const std::map<std::string, std::vector<Point>>& series,
                  const std::vector<std::string>& order) {
  double xmax = 0, ymax = 0;
  for (const auto& [k, pts] : series)
    for (const Point& p : pts) {
      xmax = std::max(xmax, p.x);
      ymax = std::max(ymax, p.y);
    }
  if (xmax <= 0) xmax = 1;
  if (ymax <= 0) ymax = 1;
  const double xs = tick_step(xmax * 1.05, 5), ys = tick_step(ymax * 1.05, 5);
  xmax = std::ceil(xmax * 1.05 / xs) * xs;
  ymax = std::ceil(ymax * 1.05 / ys) * ys;
  const double pw = kPanelW - kLeft - kRight, ph = kPanelH - kTop - kBottom;
  auto X = [&](double x) { return ox + kLeft + x / xmax * pw; };
  auto Y = [&](double y) { return kTop + ph - y / ymax * ph; };
  std::string s;
  char b[512];
  for (double t = 0; t <= xmax + 1e-9; t += xs) {
    std::snprintf(b, sizeof b,
                  "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#e5e5e5'/>"
                  "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='11'>%s</text>\n",
                  X(t), Y(0), X(t), Y(ymax), X(t), Y(0) + 15, num(t).c_str());
    s += b;
  }
  for (double t = 0; t <= ymax + 1e-9; t += ys) {
    std::snprintf(b, sizeof b,
                  "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#e5e5e5'/>"
                  "<text x='%.1f' y='%.1f' text-anchor='end' font-size='11'>%s</text>\n",
                  X(0), Y(t), X(xmax), Y(t), X(0) - 5, Y(t) + 4, num(t).c_str());
    s += b;
  }
  std::snprintf(b, sizeof b,
                "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#333'/>\n"
                "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='12'>%s</text>\n"
                "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='12' "
                "transform='rotate(-90 %.1f %.1f)'>%s</text>\n",
                X(0), Y(ymax), pw, ph, X(xmax / 2), Y(0) + 35, esc(xlabel).c_str(), ox + 18,
                Y(ymax / 2), ox + 18, Y(ymax / 2), esc(ylabel).c_str());
  s += b;
  for (size_t si = 0; si < order.size(); ++si) {
    auto it = series.find(order[si]);
    if (it == series.end()) continue;
    std::vector<Point> pts = it->second;
    std::sort(pts.begin(), pts.end(), [](const Point& a, const Point& c) { return a.x < c.x; });
    std::string line;
    for (const Point& p : pts) {
      std::snprintf(b, sizeof b, "%.1f,%.1f ", X(p.x), Y(p.y));
      line += b;
    }
    s += std::string("<polyline fill='none' stroke-width='1.5' stroke='") + colour(si) +
         "' points='" + line + "'/>\n";
    for (const Point& p : pts) {
      std::snprintf(b, sizeof b,
                    "<circle cx='%.1f' cy='%.1f' r='3.5' fill='%s'><title>%s</title></circle>\n",
                    X(p.x), Y(p.y), colour(si), esc(p.label).c_str());
      s += b;
      if (!p.label.empty()) {
        std::snprintf(b, sizeof b, "<text x='%.1f' y='%.1f' font-size='9' fill='%s'>%s</text>\n",
                      X(p.x) + 5, Y(p.y) - 5, colour(si), esc(p.label).c_str());
        s += b;
      }
    }
  }
  return s;
}

}  // namespace

std::string throughput_svg(const std::vector<BenchRow>& rows, const std::string& title) {
  std::map<std::string, std::vector<Point>> by_batch, by_mem;
  std::vector<std::string> order;
  for (const BenchRow& r : rows) {
    if (r.output_tok_s <= 0) continue;  // nothing ran
    if (std::find(order.begin(), order.end(), r.mode) == order.end()) order.push_back(r.mode);
    std::string label = r.kv_budget ? "b" + std::to_string(r.kv_budget) : "";
    if (r.policy != "-" && r.policy != "snapkv") label += " " + r.policy;
    by_batch[r.mode].push_back({double(r.max_batch), r.output_tok_s, label});
    const double mem = double(r.mem_budget_bytes ? r.mem_budget_bytes : r.peak_backend_bytes);
    by_mem[r.mode].push_back({mem / double(int64_t(1) << 30), r.output_tok_s, label});
  }
  const double w = 2 * kPanelW, h = kPanelH + 30;
  std::string s;
  char b[256];
  std::snprintf(b, sizeof b,
                "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' "
                "font-family='sans-serif'>\n<rect width='100%%' height='100%%' fill='white'/>\n",
                w, h);
  s += b;
  std::snprintf(b, sizeof b, "<text x='%.0f' y='22' text-anchor='middle' font-size='14'>", w / 2);
  s += b + esc(title) + "</text>\n";
  s += panel(0, "largest batch reached", "output tokens/s", by_batch, order);
  s += panel(kPanelW, "memory budget (GiB)", "output tokens/s", by_mem, order);
  for (size_t i = 0; i < order.size(); ++i) {
    std::snprintf(b, sizeof b,
                  "<rect x='%.0f' y='%.0f' width='12' height='12' fill='%s'/>"
                  "<text x='%.0f' y='%.0f' font-size='12'>",
                  kLeft + 130 * double(i), kPanelH + 8, colour(i), kLeft + 130 * double(i) + 16,
                  kPanelH + 19);
    s += b + esc(order[i]) + "</text>\n";
  }
  return s + "</svg>\n";
}

void write_throughput_svg(const std::vector<BenchRow>& rows, const std::string& title,
                          const std::string& path) {
  std::ofstream out(path);
  if (!out) throw Error("cannot write " + path);
  out << throughput_svg(rows, title);
  if (!out) throw Error("cannot write " + path);
}

}  // namespace batchmax::bench
