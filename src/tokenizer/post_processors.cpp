// Post-processors: TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence.
// Only the single-sequence template matters for encode(); offsets are not tracked.
#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace gale::tok {
namespace {

class Template final : public PostProcessor {
 public:
  explicit Template(const json& j) {
    const json& specials = j.contains("special_tokens") ? j["special_tokens"] : json::object();
    const json& single = field(j, "single");
    if (!single.is_array()) throw Error("TemplateProcessing: 'single' must be a list");
    for (const json& piece : single) {
      if (piece.contains("Sequence")) {
        items_.push_back({true, {}});
      } else if (piece.contains("SpecialToken")) {
        std::string id = get_string(piece["SpecialToken"], "id");
        if (!specials.is_object() || !specials.contains(id))
          throw Error("TemplateProcessing: special token '" + id + "' missing from special_tokens");
        const json& ids = field(specials[id], "ids");
        if (!ids.is_array()) throw Error("TemplateProcessing: 'ids' must be a list");
        Item it{false, {}};
        for (const json& v : ids) {
          if (!v.is_number_integer()) throw Error("TemplateProcessing: ids must be integers");
          it.ids.push_back(v.get<int32_t>());
        }
        items_.push_back(std::move(it));
      } else {
        throw Error("TemplateProcessing: unknown template piece " + piece.dump().substr(0, 80));
      }
    }
  }
  void process(std::vector<int32_t>& ids) const override {
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const Item& it : items_) {
      if (it.sequence) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), it.ids.begin(), it.ids.end());
    }
    ids.swap(out);
  }

 private:
  struct Item {
    bool sequence;
    std::vector<int32_t> ids;
  };
  std::vector<Item> items_;
};

// RobertaProcessing / BertProcessing: cls + A + sep. {"sep": ["</s>", 2], "cls": ["<s>", 0]}
class ClsSep final : public PostProcessor {
 public:
  explicit ClsSep(const json& j) : cls_(pair_id(field(j, "cls"))), sep_(pair_id(field(j, "sep"))) {}
  void process(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), cls_);
    ids.push_back(sep_);
  }

 private:
  static int32_t pair_id(const json& p) {
    if (!p.is_array() || p.size() != 2 || !p[1].is_number_integer())
      throw Error("post_processor: expected [token, id] pair");
    return p[1].get<int32_t>();
  }
  int32_t cls_, sep_;
};

class Noop final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&) const override {}
};

class SequencePost final : public PostProcessor {
 public:
  explicit SequencePost(const json& j) {
    const json& list = field(j, "processors");
    if (!list.is_array()) throw Error("Sequence post_processor: 'processors' must be a list");
    for (const json& e : list)
      if (auto p = make_post_processor(e)) steps_.push_back(std::move(p));
  }
  void process(std::vector<int32_t>& ids) const override {
    for (const auto& s : steps_) s->process(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& j) {
  if (j.is_null()) return nullptr;
  if (!j.is_object()) throw Error("post_processor must be an object");
  std::string type = get_string(j, "type");
  if (type == "TemplateProcessing") return std::make_unique<Template>(j);
  if (type == "RobertaProcessing" || type == "BertProcessing") return std::make_unique<ClsSep>(j);
  if (type == "ByteLevel") return std::make_unique<Noop>();  // only trims offsets
  if (type == "Sequence") return std::make_unique<SequencePost>(j);
  throw Error("unsupported post_processor type: " + type);
}

}  // namespace gale::tok
