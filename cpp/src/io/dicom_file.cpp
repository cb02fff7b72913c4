// DICOM Part-10 structure check (dicom_file.h), the same walk as python lunakit/io/dicom_file.py.
#include "dicom_file.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>

#include <zlib.h>

#include "lunakit/error.h"

namespace lunakit::dicom_file {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kUndefined = 0xFFFFFFFFu;
constexpr int64_t kMaxInflated = int64_t{1} << 30;
const char* const kDeflated = "1.2.840.10008.1.2.1.99";

std::string tag_text(uint16_t group, uint16_t element) {
  char text[16];
  std::snprintf(text, sizeof text, "(%04X,%04X)", group, element);
  return text;
}

// The bytes of one file (or of its inflated data set); every read is bounds-checked by the caller.
class File {
 public:
  File(std::string name, std::string data) : name_(std::move(name)), data_(std::move(data)) {}
  static File open(const std::string& path) {
    const std::string name = fs::path(path).filename().string();
    std::ifstream in(path, std::ios::binary);
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (!in || ec) throw Error(name + ": cannot open");
    std::string data(static_cast<size_t>(size), '\0');
    in.read(data.data(), static_cast<std::streamsize>(size));
    if (in.gcount() != static_cast<std::streamsize>(size)) throw Error(name + ": cannot read");
    return File(name, std::move(data));
  }
  int64_t size() const { return static_cast<int64_t>(data_.size()); }
  const std::string& name() const { return name_; }
  std::string bytes(int64_t at, int64_t n) const {
    return data_.substr(static_cast<size_t>(at), static_cast<size_t>(n));
  }
  [[noreturn]] void fail(const std::string& problem) const { throw Error(name_ + ": " + problem); }

 private:
  std::string name_;
  std::string data_;
};

uint32_t number(const std::string& b, size_t at, int width, bool big) {
  uint32_t v = 0;
  for (int k = 0; k < width; ++k) {
    const uint32_t byte = static_cast<unsigned char>(b[at + (big ? k : width - 1 - k)]);
    v = (v << 8) | byte;
  }
  return v;
}

// VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length.
bool long_vr(const std::string& vr) {
  static const char* kLong[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"};
  for (const char* v : kLong) {
    if (vr == v) return true;
  }
  return false;
}

// The value representations of PS3.5 6.2.
bool known_vr(const std::string& vr) {
  static const std::string kKnown =
      "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV";
  for (size_t at = 0; at + 2 <= kKnown.size(); at += 3) {
    if (kKnown.compare(at, 2, vr) == 0) return true;
  }
  return false;
}

struct Element {
  uint16_t group = 0, element = 0;
  int64_t header = 0;
  uint32_t length = 0;
};

Element read_element(const File& file, int64_t pos, bool explicit_vr, bool big, const char* where) {
  const int64_t left = file.size() - pos;
  if (left < 8) {
    file.fail("cut short " + std::string(where) + " (" + std::to_string(left) + " stray bytes at byte " +
              std::to_string(pos) + ")");
  }
  const std::string head = file.bytes(pos, std::min<int64_t>(left, 12));
  Element e{static_cast<uint16_t>(number(head, 0, 2, big)), static_cast<uint16_t>(number(head, 2, 2, big)), 8, 0};
  if (!explicit_vr || e.group == 0xFFFE) {
    e.length = number(head, 4, 4, big);
    return e;
  }
  const std::string vr = head.substr(4, 2);
  if (!std::isupper(static_cast<unsigned char>(vr[0])) || !std::isupper(static_cast<unsigned char>(vr[1]))) {
    file.fail("malformed element " + tag_text(e.group, e.element) + " at byte " + std::to_string(pos) + " " + where);
  }
  // GDCM reads a VR the standard does not know its own way (found by cpp/fuzz, fuzz_dicom).
  if (!known_vr(vr)) {
    file.fail("malformed element " + tag_text(e.group, e.element) + " at byte " + std::to_string(pos) + " " + where +
              " (unknown VR " + vr + ")");
  }
  if (!long_vr(vr)) {
    e.length = number(head, 6, 2, big);
    return e;
  }
  if (left < 12) file.fail("cut short " + std::string(where) + " (element " + tag_text(e.group, e.element) + ")");
  e.header = 12;
  e.length = number(head, 8, 4, big);
  return e;
}

void require_fits(const File& file, int64_t pos, const Element& e, const char* where) {
  const int64_t have = file.size() - pos - e.header;
  if (have < static_cast<int64_t>(e.length)) {
    file.fail("cut short " + std::string(where) + ": element " + tag_text(e.group, e.element) + " needs " +
              std::to_string(e.length) + " bytes, the file holds " + std::to_string(have));
  }
}

// Every element of a data set from pos: defined-length items and values are skipped; undefined
// lengths are entered and left at their delimiters (depth counts them).
void walk_data_set(const File& file, int64_t pos, bool explicit_vr, bool big) {
  const char* data = "inside its data set";
  int depth = 0;
  int64_t pixel_bytes = -1;
  std::map<uint32_t, uint32_t> image;  // (0028,0010) rows, (0028,0011) columns, (0028,0100) bits allocated
  while (pos < file.size()) {
    const Element e = read_element(file, pos, explicit_vr, big, data);
    if (e.group == 0xFFFE && (e.element == 0xE00D || e.element == 0xE0DD)) {
      if (--depth < 0)
        file.fail("malformed data set (a delimiter outside any sequence at byte " + std::to_string(pos) + ")");
      pos += 8;
      continue;
    }
    if (e.length == kUndefined) {
      ++depth;
      pos += e.header;
      continue;
    }
    const bool pixels = depth == 0 && e.group == 0x7FE0 && e.element == 0x0010;
    require_fits(file, pos, e, pixels ? "inside its pixel data" : data);
    if (pixels) pixel_bytes = e.length;
    const uint32_t tag = (uint32_t{e.group} << 16) | e.element;
    if (depth == 0 && e.length == 2 && (tag == 0x00280010 || tag == 0x00280011 || tag == 0x00280100)) {
      image[tag] = number(file.bytes(pos + e.header, 2), 0, 2, big);
    }
    pos += e.header + e.length;
  }
  if (depth != 0) file.fail("cut short inside a sequence (no end delimiter)");
  if (pixel_bytes >= 0 && image.size() == 3) {
    const uint32_t rows = image[0x00280010], cols = image[0x00280011], bits = image[0x00280100];
    const int64_t needed = int64_t{rows} * cols * ((bits + 7) / 8);
    if (pixel_bytes < needed) {
      file.fail("pixel data hold " + std::to_string(pixel_bytes) + " bytes, " + std::to_string(rows) + " x " +
                std::to_string(cols) + " pixels of " + std::to_string(bits) + " bits need " + std::to_string(needed));
    }
  }
}

// A deflated data set (PS3.5 A.5), inflated so that the same walk sees what GDCM will read; at most
// kMaxInflated bytes (a few kilobytes can claim gigabytes).
std::string inflated(const File& file, int64_t pos) {
  const std::string packed = file.bytes(pos, file.size() - pos);
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) file.fail("cannot initialise zlib");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(packed.data()));
  zs.avail_in = static_cast<uInt>(packed.size());
  std::string out;
  char chunk[65536];
  int ret = Z_OK;
  while (ret == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(chunk);
    zs.avail_out = sizeof chunk;
    ret = inflate(&zs, Z_NO_FLUSH);
    out.append(chunk, sizeof chunk - zs.avail_out);
    if (static_cast<int64_t>(out.size()) > kMaxInflated) ret = Z_MEM_ERROR;
  }
  inflateEnd(&zs);
  if (static_cast<int64_t>(out.size()) > kMaxInflated) {
    file.fail("deflated data set inflates to over " + std::to_string(kMaxInflated >> 20) + " MiB");
  }
  if (ret == Z_BUF_ERROR) file.fail("cut short inside its deflated data set");
  if (ret != Z_STREAM_END) file.fail("corrupt deflated data set");
  return out;
}

}  // namespace

bool check(const std::string& path) {
  {  // a look at the first 132 bytes before reading all of a file that may be no DICOM at all
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(fs::path(path).filename().string() + ": cannot open");
    char head[132];
    if (!in.read(head, sizeof head) || std::string(head + 128, 4) != "DICM") return false;
  }
  const File file = File::open(path);

  // File meta information: group 0002, explicit VR little endian.
  int64_t pos = 132;
  std::string syntax;
  int last = -1;
  const char* meta = "inside its file meta information";
  while (true) {
    // The data set starts at the first group other than 0002 (and may have another syntax).
    if (file.size() - pos >= 8 && number(file.bytes(pos, 2), 0, 2, false) != 0x0002) break;
    const Element e = read_element(file, pos, true, false, meta);
    if (e.length == kUndefined) file.fail("malformed file meta information (undefined length)");
    // The value representations of the file meta elements (PS3.10 7.1); GDCM asserts on others
    // there (found by cpp/fuzz, fuzz_dicom).
    const std::string vr = file.bytes(pos + 4, 2);
    if (vr != "AE" && vr != "OB" && vr != "SH" && vr != "UI" && vr != "UL") {
      file.fail("malformed file meta information (element " + tag_text(e.group, e.element) + " has VR " + vr + ")");
    }
    require_fits(file, pos, e, meta);
    // Ascending tags (PS3.5 7.1): GDCM reads repeated meta elements another way than this walk
    // (found by cpp/fuzz, fuzz_dicom).
    if (e.element <= last) {
      file.fail("malformed file meta information (element " + tag_text(e.group, e.element) + " out of order)");
    }
    last = e.element;
    if (e.element == 0x0010) syntax = file.bytes(pos + e.header, e.length);
    pos += e.header + e.length;
  }
  while (!syntax.empty() && (syntax.back() == '\0' || syntax.back() == ' ')) syntax.pop_back();
  if (syntax.empty()) file.fail("file meta information lacks the transfer syntax (0002,0010)");
  if (syntax == kDeflated) {
    walk_data_set(File(file.name(), inflated(file, pos)), 0, true, false);
  } else {
    walk_data_set(file, pos, syntax != "1.2.840.10008.1.2", syntax == "1.2.840.10008.1.2.2");
  }
  return true;
}

}  // namespace lunakit::dicom_file
