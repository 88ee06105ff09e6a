// Loading tokenizer.json and running the encode / decode pipeline.
#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>

#include "core/error.h"
#include "core/json_depth.h"
#include "core/mapped_file.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode_util.h"

namespace gale::tok {

const json& field(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key)) throw Error(std::string("missing field '") + key + "'");
  return j[key];
}

std::string get_string(const json& j, const char* key, const char* def) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) {
    if (def) return def;
    throw Error(std::string("missing field '") + key + "'");
  }
  if (!j[key].is_string()) throw Error(std::string("field '") + key + "' must be a string");
  return j[key].get<std::string>();
}

bool get_bool(const json& j, const char* key, bool def) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_boolean()) throw Error(std::string("field '") + key + "' must be true or false");
  return j[key].get<bool>();
}

HfTokenizer::HfTokenizer(const json& tj, const json* config, const BpeSections* raw) {
  (void)config;
  if (!tj.is_object()) throw Error("top level must be an object");
  const json& model = field(tj, "model");
  if (!model.is_object()) throw Error("'model' must be an object");
  std::string type = model.contains("type") ? get_string(model, "type") : (model.contains("merges") ? "BPE" : "");
  if (type != "BPE") throw Error("unsupported tokenizer model: " + (type.empty() ? std::string("(no type)") : type));
  model_ = std::make_unique<BpeModel>(model, raw);

  normalizer_ = make_normalizer(tj.value("normalizer", json()));
  pre_tokenizer_ = make_pre_tokenizer(tj.value("pre_tokenizer", json()));
  post_processor_ = make_post_processor(tj.value("post_processor", json()));
  decoder_ = make_decoder(tj.value("decoder", json()));

  // HF re-adds the added tokens on load and ignores their "id" fields: a token whose content is
  // already in the vocab (or added before) takes that id, any other the next free id after the
  // model's vocab. Real files agree with this; hand-written ones may not.
  int32_t max_id = model_->max_id();
  const int32_t model_size = int32_t(model_->vocab_count());
  int32_t max_added = -1;
  std::vector<AddedToken> added;
  StrMap<int32_t> added_ids;
  if (tj.contains("added_tokens") && !tj["added_tokens"].is_null()) {
    const json& list = tj["added_tokens"];
    if (!list.is_array()) throw Error("'added_tokens' must be a list");
    size_t limit = 2 * (model_->vocab_count() + list.size()) + 1024;
    for (const json& a : list) {
      AddedToken t;
      const json& id = field(a, "id");
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || size_t(id.get<int64_t>()) >= limit)
        throw Error("added token id out of range: " + id.dump());
      t.content = get_string(a, "content");
      if (t.content.empty()) continue;  // HF skips empty added tokens
      if (added_ids.count(t.content)) {
        continue;  // same content again: HF keeps the first token's flags
      } else if (int32_t jt = model_->find(t.content); jt >= 0) {
        t.id = jt;
      } else {
        t.id = max_added < 0 ? model_size : (max_added >= model_size || model_size == 0 ? max_added + 1 : model_size);
      }
      added_ids.emplace(t.content, t.id);
      max_added = std::max(max_added, t.id);
      t.special = get_bool(a, "special", false);
      t.lstrip = get_bool(a, "lstrip", false);
      t.rstrip = get_bool(a, "rstrip", false);
      t.single_word = get_bool(a, "single_word", false);
      t.normalized = get_bool(a, "normalized", !t.special);
      max_id = std::max(max_id, t.id);
      added.push_back(std::move(t));
    }
  }
  added_.init(std::move(added), normalizer_.get());
  vocab_size_ = size_t(max_id + 1);
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string clean;
  if (utf8_valid_prefix(text) != text.size()) {  // HF takes only valid strings; replace bad bytes
    clean = utf8_lossy(text);
    text = clean;
  }
  std::vector<Piece> pieces;
  added_.extract_and_normalize(text, normalizer_.get(), pieces);
  if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pieces);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const Piece& p : pieces) {
    if (p.id >= 0) ids.push_back(p.id);
    else model_->tokenize(p.text, ids);
  }
  if (add_special_tokens && post_processor_) post_processor_->process(ids);
  return ids;
}

std::string HfTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0) throw Error("token id " + std::to_string(id) + " is negative");
    // Ids past the vocabulary (padded embedding rows: Qwen2.5 has 152,064 rows for 151,665
    // tokens) have no text: HF's decode filter_maps them away, and so does the lookup below.
    if (const AddedToken* a = added_.by_id(id)) {
      if (skip_special_tokens && a->special) continue;
      tokens.push_back(added_.decode_form(*a));
    } else {
      std::optional<std::string_view> s = model_->id_to_token(id);
      if (!s) continue;  // a hole in the vocab: HF skips it too
      if (skip_special_tokens && added_.is_special_content(*s)) continue;
      tokens.emplace_back(*s);
    }
  }
  std::string out;
  if (decoder_) {
    decoder_->decode_chain(tokens);
    for (const auto& t : tokens) out += t;
  } else {
    for (size_t k = 0; k < tokens.size(); ++k) {
      if (k) out += ' ';
      out += tokens[k];
    }
  }
  return out;
}

std::optional<int32_t> HfTokenizer::token_to_id(std::string_view token) const {
  if (const AddedToken* a = added_.by_content(token)) return a->id;
  if (int32_t id = model_->find(token); id >= 0) return id;
  return std::nullopt;
}

bool HfTokenizer::is_special(int32_t id) const {
  if (const AddedToken* a = added_.by_id(id)) return a->special;
  std::optional<std::string_view> s = model_->id_to_token(id);
  return s && added_.is_special_content(*s);
}

bool HfTokenizer::stream_holds(int32_t id) const {
  if (!decoder_ || !decoder_->groups_byte_tokens() || added_.by_id(id)) return false;
  std::optional<std::string_view> s = model_->id_to_token(id);
  return s && s->size() == 6 && s->starts_with("<0x") && (*s)[5] == '>';
}

std::string HfTokenizer::token_bytes(int32_t id) const {
  if (id < 0) return {};
  if (const AddedToken* a = added_.by_id(id)) return added_.decode_form(*a);
  std::optional<std::string_view> s = model_->id_to_token(id);
  if (!s) return {};
  if (decoder_ && decoder_->byte_level()) {
    const auto& t = byte_level_tables();
    std::string out;
    size_t i = 0;
    while (i < s->size()) {
      uint32_t cp = utf8_next(*s, i);
      if (cp >= t.cp_to_byte.size() || t.cp_to_byte[cp] < 0) return std::string(*s);  // not a byte-level string
      out.push_back(char(t.cp_to_byte[cp]));
    }
    return out;
  }
  if (decoder_ && decoder_->groups_byte_tokens() && s->size() == 6 && s->starts_with("<0x") && (*s)[5] == '>') {
    unsigned v = 0;
    for (size_t k = 3; k < 5; ++k) {
      char c = (*s)[k];
      v = v * 16 + unsigned(c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c - 'a' + 10);
    }
    return std::string(1, char(v));
  }
  // SentencePiece-style: the metaspace stands for a space.
  std::string out;
  for (size_t i = 0; i < s->size();) {
    if (s->compare(i, 3, "\xE2\x96\x81") == 0) {
      out += ' ';
      i += 3;
    } else {
      out += (*s)[i++];
    }
  }
  return out;
}

}  // namespace gale::tok

namespace gale {

namespace {

std::unique_ptr<Tokenizer> build(std::string_view tok_text, std::string_view cfg_text, const std::string& tok_name,
                                 const std::string& cfg_name) {
  using tok::json;
  json cfg;
  bool has_cfg = !cfg_text.empty();
  if (has_cfg) {
    check_json_depth(cfg_text, cfg_name);
    try {
      cfg = json::parse(cfg_text);
    } catch (const json::exception& e) {
      throw Error(cfg_name + ": invalid JSON: " + e.what());
    }
  }
  try {
    // The big vocab / merges sections go through the fast scanner; nlohmann parses the rest.
    tok::BpeSections raw;
    // The builders recurse once per nested Sequence: bound the nesting before parsing. The
    // vocab and merges the fast path takes out of `rest` are flat by its own rules.
    if (tok::split_bpe_sections(tok_text, raw)) {
      check_json_depth(raw.rest, "the document");
      json tj = json::parse(raw.rest);
      return std::make_unique<tok::HfTokenizer>(tj, has_cfg ? &cfg : nullptr, &raw);
    }
    check_json_depth(tok_text, "the document");
    json tj = json::parse(tok_text);
    return std::make_unique<tok::HfTokenizer>(tj, has_cfg ? &cfg : nullptr);
  } catch (const json::exception& e) {
    throw Error(tok_name + ": " + e.what());
  } catch (const Error& e) {
    throw Error(tok_name + ": " + e.what());
  }
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& model_dir) {
  std::string tok_path = model_dir + "/tokenizer.json";
  std::string cfg_path = model_dir + "/tokenizer_config.json";
  std::ifstream probe(tok_path);
  if (!probe) throw Error("no tokenizer.json in " + model_dir);
  // Mapped with every page faulted in at once: no copy, no zero-filled buffer to fault in.
  MappedFile tok_file(tok_path, /*populate=*/true);
  std::optional<MappedFile> cfg_file;
  if (std::ifstream(cfg_path)) cfg_file.emplace(cfg_path, true);
  return build(tok_file.text(), cfg_file ? cfg_file->text() : std::string_view(), tok_path, cfg_path);
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json) {
  return build(tokenizer_json, config_json, "tokenizer.json", "tokenizer_config.json");
}

}  // namespace gale
