#include "eval/eval_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

namespace batchmax::eval {
namespace {

std::string fmt(double v, int prec = 1) {
  if (!std::isfinite(v)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

std::string signed_fmt(double v, int prec = 1) {
  if (!std::isfinite(v)) return "n/a";
  std::string s = fmt(v, prec);
  return v >= 0 ? "+" + s : s;
}

}  // namespace

nlohmann::ordered_json row_to_json(const Row& r) {
  nlohmann::ordered_json j;
  j["model"] = r.model;
  j["task"] = r.task;
  j["context_tokens"] = r.context_tokens;
  j["mode"] = r.mode;
  j["policy"] = r.policy;
  if (r.kv_budget < 0)
    j["kv_budget"] = "-";
  else
    j["kv_budget"] = r.kv_budget;
  j["chunk"] = r.chunk;
  if (std::isfinite(r.score))
    j["score"] = r.score;
  else
    j["score"] = nullptr;
  j["metric"] = r.metric;
  j["n_samples"] = r.n_samples;
  j["errors"] = r.errors;
  j["prompt_tokens"] = r.prompt_tokens;
  j["commit"] = r.commit;
  j["backend"] = r.backend;
  j["seconds"] = r.seconds;
  if (r.metric == "perplexity") j["nll_per_token"] = r.nll;
  j["text_source"] = r.text_source;
  return j;
}

Row row_from_json(const nlohmann::json& j) {
  Row r;
  r.model = j.value("model", "");
  r.task = j.value("task", "");
  r.context_tokens = j.value("context_tokens", int64_t(0));
  r.mode = j.value("mode", "");
  r.policy = j.value("policy", "-");
  r.kv_budget = j.contains("kv_budget") && j["kv_budget"].is_number() ? j["kv_budget"].get<int64_t>() : -1;
  r.chunk = j.value("chunk", int64_t(0));
  r.score = j.contains("score") && j["score"].is_number() ? j["score"].get<double>() : NAN;
  r.metric = j.value("metric", "");
  r.n_samples = j.value("n_samples", int64_t(0));
  r.errors = j.value("errors", int64_t(0));
  r.prompt_tokens = j.value("prompt_tokens", 0.0);
  r.commit = j.value("commit", "");
  r.backend = j.value("backend", "");
  r.seconds = j.value("seconds", 0.0);
  r.nll = j.value("nll_per_token", 0.0);
  r.text_source = j.value("text_source", "");
  return r;
}

std::string rows_to_json_text(const std::vector<Row>& rows) {
  nlohmann::ordered_json arr = nlohmann::ordered_json::array();
  for (const Row& r : rows) arr.push_back(row_to_json(r));
  // One row per line: readable and diff-friendly.
  std::string out = "[\n";
  for (size_t i = 0; i < arr.size(); ++i)
    out += "  " + arr[i].dump() + (i + 1 < arr.size() ? ",\n" : "\n");
  return out + "]\n";
}

std::string rows_to_markdown(const std::vector<Row>& rows) {
  std::ostringstream md;
  if (rows.empty()) return "No results.\n";
  const Row& r0 = rows.front();
  md << "# batchmax eval: " << r0.model << "\n\n"
     << "commit `" << r0.commit << "`, backend " << r0.backend << ", prefill chunk " << r0.chunk
     << ". Accuracy in % (cell: score, then % of the full-cache score); perplexity "
        "over the second half of each text (cell: ppl, then the change from full cache; "
        "lower is better). Δ rows: batchmax minus post-prefill.\n";

  // Tables in first-seen order of (task, context).
  std::vector<std::pair<std::string, int64_t>> groups;
  for (const Row& r : rows) {
    auto g = std::make_pair(r.task, r.context_tokens);
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
  }
  for (const auto& [task, ctx] : groups) {
    std::vector<const Row*> g;
    for (const Row& r : rows)
      if (r.task == task && r.context_tokens == ctx) g.push_back(&r);
    const Row* full = nullptr;
    std::set<int64_t> budgets;
    std::vector<std::string> policies;
    std::map<std::tuple<std::string, std::string, int64_t>, const Row*> cell;
    double secs = 0;
    int64_t n = 0;
    for (const Row* r : g) {
      secs += r->seconds;
      n += r->n_samples + r->errors;
      if (r->mode == "full") {
        full = r;
        continue;
      }
      budgets.insert(r->kv_budget);
      if (std::find(policies.begin(), policies.end(), r->policy) == policies.end())
        policies.push_back(r->policy);
      cell[{r->mode, r->policy, r->kv_budget}] = r;
    }
    const bool ppl = g.front()->metric == "perplexity";
    const int prec = ppl ? 2 : 1;
    md << "\n## " << task << ", " << ctx << " tokens\n\n";
    if (full)
      md << "Full cache: **" << fmt(full->score, prec) << "** (" << full->metric << ", "
         << full->n_samples << " samples, mean prompt " << fmt(full->prompt_tokens, 0)
         << " tokens). ";
    md << n << " generations in " << fmt(secs, 0) << " s.\n";
    if (budgets.empty()) continue;
    md << "\n| mode | policy |";
    for (int64_t b : budgets) md << " " << b << " |";
    md << "\n|---|---|";
    for (size_t i = 0; i < budgets.size(); ++i) md << "---:|";
    md << "\n";
    auto value = [&](const Row* r) -> std::string {
      if (!r) return "—";
      std::string s = fmt(r->score, prec);
      if (full && std::isfinite(full->score) && std::isfinite(r->score)) {
        if (ppl)
          s += " (" + signed_fmt(r->score - full->score, 2) + ")";
        else if (full->score > 0)
          s += " (" + fmt(100.0 * r->score / full->score, 0) + "%)";
      }
      if (r->errors > 0) s += " [" + std::to_string(r->errors) + " err]";
      return s;
    };
    for (const std::string& pol : policies) {
      bool both = true;
      for (const char* mode : {"post-prefill", "batchmax"}) {
        bool any = false;
        for (int64_t b : budgets) any = any || cell.count({mode, pol, b});
        if (!any) {
          both = false;
          continue;
        }
        md << "| " << mode << " | " << pol << " |";
        for (int64_t b : budgets) {
          auto it = cell.find({mode, pol, b});
          md << " " << value(it == cell.end() ? nullptr : it->second) << " |";
        }
        md << "\n";
      }
      if (!both) continue;
      md << "| Δ | " << pol << " |";
      for (int64_t b : budgets) {
        auto a = cell.find({"batchmax", pol, b});
        auto p = cell.find({"post-prefill", pol, b});
        if (a == cell.end() || p == cell.end())
          md << " — |";
        else
          md << " " << signed_fmt(a->second->score - p->second->score, prec) << " |";
      }
      md << "\n";
    }
  }
  return md.str();
}

}  // namespace batchmax::eval
