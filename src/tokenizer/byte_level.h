// GPT-2's reversible byte <-> printable-character map used by ByteLevel pre-tokenizers and decoders.
#pragma once
#include <array>
#include <cstdint>
#include <string>

#include "tokenizer/unicode_util.h"

namespace gale::tok {

struct ByteLevelTables {
  std::array<std::string, 256> byte_to_utf8;  // byte -> UTF-8 of its stand-in character
  std::array<int16_t, 324> cp_to_byte;        // stand-in code point -> byte, -1 when not a stand-in
  ByteLevelTables() {
    cp_to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = printable ? uint32_t(b) : next++;
      utf8_append(byte_to_utf8[b], cp);
      cp_to_byte[cp] = int16_t(b);
    }
  }
};

inline const ByteLevelTables& byte_level_tables() {
  static const ByteLevelTables t;
  return t;
}

}  // namespace gale::tok
