#include "eval/eval_text.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace batchmax::eval {
namespace {

namespace fs = std::filesystem;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }
bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }

std::string trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return std::string(s.substr(a, b - a));
}

// A heading underline, table border or transition: only punctuation, no letters.
bool is_rule_line(std::string_view line) {
  std::string t = trim(line);
  if (t.size() < 3) return false;
  return std::all_of(t.begin(), t.end(), [](char c) { return std::string_view("=-~^*+#:|`'\"._ ").find(c) != std::string_view::npos; });
}

// The text a role or link shows: "text <target>" -> text, "~a.b.c" -> c, "!x" -> x.
std::string shown_text(std::string_view body) {
  std::string s(body);
  size_t lt = s.rfind(" <");
  if (lt != std::string::npos && s.back() == '>') s = trim(s.substr(0, lt));
  if (!s.empty() && s[0] == '!') s.erase(0, 1);
  if (!s.empty() && s[0] == '~') {
    size_t dot = s.rfind('.');
    s = dot == std::string::npos ? s.substr(1) : s.substr(dot + 1);
  }
  return s;
}

// Strips inline markup from one paragraph (lines already joined).
std::string strip_inline(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  size_t i = 0;
  while (i < in.size()) {
    char c = in[i];
    if (c == ':' && i + 1 < in.size() && std::islower(static_cast<unsigned char>(in[i + 1]))) {
      // :role:`body` (roles may have a domain, :py:func:).
      size_t j = i + 1;
      while (j < in.size() && (std::isalnum(static_cast<unsigned char>(in[j])) || in[j] == ':' || in[j] == '-')) ++j;
      if (j < in.size() && in[j] == '`' && in[j - 1] == ':') {
        size_t end = in.find('`', j + 1);
        if (end != std::string_view::npos) {
          out += shown_text(in.substr(j + 1, end - j - 1));
          i = end + 1;
          continue;
        }
      }
    }
    if (c == '`') {
      if (in.substr(i, 2) == "``") {  // ``literal``
        size_t end = in.find("``", i + 2);
        if (end != std::string_view::npos) {
          out.append(in.substr(i + 2, end - i - 2));
          i = end + 2;
          continue;
        }
      }
      size_t end = in.find('`', i + 1);  // `text`, `text <url>`_, `text`__
      if (end != std::string_view::npos) {
        out += shown_text(in.substr(i + 1, end - i - 1));
        i = end + 1;
        while (i < in.size() && in[i] == '_') ++i;
        continue;
      }
    }
    if (c == '*' || c == '\\') {  // emphasis marks and escapes
      ++i;
      continue;
    }
    out.push_back(c);
    ++i;
  }
  // Collapse runs of spaces.
  std::string squeezed;
  for (char ch : out) {
    if (is_space(ch) && (squeezed.empty() || squeezed.back() == ' ')) continue;
    squeezed.push_back(is_space(ch) ? ' ' : ch);
  }
  return trim(squeezed);
}

// An ordinary prose paragraph, or "" when the block is anything else.
std::string prose_of_block(const std::vector<std::string>& lines) {
  if (lines.empty()) return "";
  const std::string& first = lines[0];
  if (first.empty() || is_space(first[0])) return "";  // code, quotes, directive bodies
  for (const char* bad : {"..", "* ", "- ", "+ ", "#", "|", ">>>", "=", "$", "%"})
    if (first.rfind(bad, 0) == 0) return "";
  if (std::isdigit(static_cast<unsigned char>(first[0])) && first.find(". ") != std::string::npos &&
      first.find(". ") < 4)
    return "";  // numbered list
  std::string joined;
  for (const auto& l : lines) {
    if (is_rule_line(l)) return "";       // heading or table
    if (!l.empty() && is_space(l[0])) return "";  // mixed with an indented block
    joined += l;
    joined += ' ';
  }
  std::string t = trim(joined);
  if (t.size() >= 2 && t.substr(t.size() - 2) == "::") return "";  // introduces code
  t = strip_inline(t);
  if (t.size() < 60 || !is_upper(t[0])) return "";
  char last = t.back();
  if (last != '.' && last != '?' && last != '!') return "";
  size_t plain = 0;
  for (char ch : t)
    if (std::isalpha(static_cast<unsigned char>(ch)) || ch == ' ' || ch == ',' || ch == '.') ++plain;
  if (plain * 10 < t.size() * 9) return "";  // mostly symbols: code in disguise
  return t;
}

}  // namespace

std::string rst_to_prose(std::string_view rst) {
  std::string out;
  std::vector<std::string> block;
  auto flush = [&] {
    std::string p = prose_of_block(block);
    if (!p.empty()) out += p + "\n";
    block.clear();
  };
  std::istringstream in{std::string(rst)};
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (trim(line).empty())
      flush();
    else
      block.push_back(line);
  }
  flush();
  return out;
}

std::vector<std::string> split_sentences(std::string_view p) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i + 2 < p.size(); ++i) {
    if ((p[i] == '.' || p[i] == '?' || p[i] == '!') && p[i + 1] == ' ' && is_upper(p[i + 2])) {
      // "e.g. Foo", "Mr. X": a one-letter or dotted word before the stop is no sentence end.
      size_t w = i;
      while (w > start && p[w - 1] != ' ') --w;
      std::string_view word = p.substr(w, i - w);
      if (word.size() <= 1 || word.find('.') != std::string_view::npos) continue;
      out.push_back(trim(p.substr(start, i + 1 - start)));
      start = i + 2;
    }
  }
  std::string rest = trim(p.substr(start));
  if (!rest.empty()) out.push_back(rest);
  return out;
}

void TextCorpus::add_paragraph(std::string_view paragraph) {
  std::vector<std::string> s = split_sentences(paragraph);
  for (size_t i = 0; i < s.size(); ++i) {
    total_chars_ += s[i].size() + 1;
    sentences_.push_back(std::move(s[i]));
    para_end_.push_back(i + 1 == s.size());
  }
}

TextCorpus TextCorpus::from_text(std::string_view text, std::string source) {
  TextCorpus c;
  c.source_ = std::move(source);
  std::istringstream in{std::string(text)};
  std::string para;
  auto flush = [&] {
    std::string t = trim(para);
    if (!t.empty()) c.add_paragraph(t);
    para.clear();
  };
  for (std::string line; std::getline(in, line);) {
    if (trim(line).empty()) {
      flush();
    } else {
      para += line;
      para += ' ';
    }
  }
  flush();
  if (c.sentences_.empty()) throw Error("text corpus " + c.source_ + " is empty");
  return c;
}

TextCorpus TextCorpus::load(const std::string& dir_arg) {
  std::string dir = dir_arg;
  if (dir.empty()) {
    const char* env = std::getenv(kTextDirEnv);
    dir = env && *env ? env : kDefaultTextDir;
  }
  const char* hint =
      ": the eval reads English text from the Python documentation of Debian's python3-doc "
      "package (apt-get install python3-doc, or bash scripts/setup.sh); or point --text-dir "
      "(or BATCHMAX_EVAL_TEXT) at a copy of its html/_sources directory";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error("eval text not found at " + dir + hint);
  // The narrative parts (the filter keeps only prose paragraphs of the reference
  // parts), in sorted order so every machine builds the same corpus from the same
  // package version.
  std::vector<fs::path> files;
  for (const char* sub : {"tutorial", "howto", "faq", "reference", "using", "library"}) {
    fs::path d = fs::path(dir) / sub;
    if (!fs::is_directory(d, ec)) continue;
    for (const auto& e : fs::recursive_directory_iterator(d, ec))
      if (e.is_regular_file() && e.path().string().ends_with(".rst.txt")) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw Error("no *.rst.txt under " + dir + "/{tutorial,howto,faq,...}" + hint);
  TextCorpus c;
  c.source_ = "python3-doc:" + dir;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    std::istringstream prose(rst_to_prose(ss.str()));
    for (std::string para; std::getline(prose, para);) c.add_paragraph(para);
  }
  if (c.sentences_.size() < 100) throw Error("too little prose found under " + dir + hint);
  return c;
}

std::string TextCorpus::text_from(size_t first, size_t min_chars) const {
  std::string out;
  for (size_t i = first; out.size() < min_chars; ++i) {
    out += sentence(i);
    out += ends_paragraph(i) ? "\n\n" : " ";
  }
  return out;
}

}  // namespace batchmax::eval
