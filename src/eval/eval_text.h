#pragma once
// Real English text for haystacks and perplexity, read from an installed package (no
// downloads): the prose of the Python documentation sources shipped by Debian's
// python3-doc (PSF licence), cleaned of reStructuredText markup.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace batchmax::eval {

// Where python3-doc puts the documentation sources (a symlink to the versioned docs).
inline constexpr const char* kDefaultTextDir = "/usr/share/doc/python3/html/_sources";
// Environment variable that overrides the directory.
inline constexpr const char* kTextDirEnv = "BATCHMAX_EVAL_TEXT";

class TextCorpus {
 public:
  // Reads the prose (tutorial, howto, faq, reference, using, library) under `dir`: empty means $BATCHMAX_EVAL_TEXT
  // or kDefaultTextDir. Throws batchmax::Error naming the package when missing.
  static TextCorpus load(const std::string& dir = "");
  // From text already in memory: paragraphs separated by blank lines (tests).
  static TextCorpus from_text(std::string_view text, std::string source);

  const std::string& source() const { return source_; }
  size_t size() const { return sentences_.size(); }
  const std::string& sentence(size_t i) const { return sentences_[i % sentences_.size()]; }
  // True when sentence i is the last of its paragraph.
  bool ends_paragraph(size_t i) const { return para_end_[i % para_end_.size()]; }
  // Contiguous text from sentence `first` on, at least `min_chars` long (wraps around).
  std::string text_from(size_t first, size_t min_chars) const;
  size_t total_chars() const { return total_chars_; }

 private:
  void add_paragraph(std::string_view paragraph);
  std::string source_;
  std::vector<std::string> sentences_;
  std::vector<bool> para_end_;
  size_t total_chars_ = 0;
};

// reStructuredText to prose: keeps ordinary paragraphs, drops headings, directives,
// code blocks, lists and tables, and strips inline markup (roles, literals, links).
// Paragraphs come out one per line.
std::string rst_to_prose(std::string_view rst);
// Splits a paragraph after '.', '?' or '!' followed by a space and a capital letter.
std::vector<std::string> split_sentences(std::string_view paragraph);

}  // namespace batchmax::eval
