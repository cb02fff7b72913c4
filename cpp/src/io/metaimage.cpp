// MetaImage (.mhd/.raw, .mha with LOCAL data) reader, written against what ITK's MetaIO writes
// and reads, without depending on ITK. See lunakit/metaimage.h for the accepted keys.
#include "lunakit/metaimage.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cctype>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include "lunakit/error.h"
#include "lunakit/finding.h"

namespace lunakit {

namespace {

namespace fs = std::filesystem;

constexpr int64_t kMaxVoxels = int64_t{1} << 34;
constexpr size_t kMaxHeaderBytes = size_t{1} << 20;  // a header longer than this is not a header

[[noreturn]] void fail(const std::string& path, const std::string& problem) { throw Error(path + ": " + problem); }

// A header value quoted in a message: one line of ASCII (other bytes as ?), bounded length.
std::string shown(const std::string& text) {
  std::string out = "'";
  for (size_t k = 0; k < text.size() && k < 80; ++k) {
    const unsigned char ch = static_cast<unsigned char>(text[k]);
    out += (ch < 0x20 || ch >= 0x7f) ? '?' : static_cast<char>(ch);  // ASCII only, as in Python
  }
  if (text.size() > 80) out += "...";
  return out + "'";
}

std::string trim(const std::string& text) {
  const char* space = " \t\r\n\f\v";
  const size_t first = text.find_first_not_of(space);
  if (first == std::string::npos) return "";
  const size_t last = text.find_last_not_of(space);
  return text.substr(first, last - first + 1);
}

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

std::string lower(std::string text) {
  for (char& ch : text) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return text;
}

// The header: key -> value, and where LOCAL data starts (the byte after the ElementDataFile line).
struct Header {
  std::map<std::string, std::string> fields;
  int64_t local_data_offset = 0;
};

Header read_header(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, "file not found");
  if (!fs::is_regular_file(path, ec)) fail(path, "not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open file");

  Header header;
  std::string line;
  int line_number = 0;
  size_t consumed = 0;
  bool found_data_file = false;
  while (!found_data_file) {
    line.clear();
    bool ended = false;
    for (int ch; (ch = in.get()) != std::char_traits<char>::eof();) {
      if (++consumed > kMaxHeaderBytes)
        fail(path, "no ElementDataFile within the first 1 MiB (not a MetaImage header?)");
      if (ch == '\n') {
        ended = true;
        break;
      }
      if (ch == '\0') fail(path, "binary data in the header before ElementDataFile (not a MetaImage header?)");
      line += static_cast<char>(ch);
    }
    if (!ended && line.empty()) break;  // end of file
    ++line_number;
    const std::string text = trim(line);
    if (text.empty()) continue;
    const size_t equals = text.find('=');
    if (equals == std::string::npos) {
      fail(path, "header line " + std::to_string(line_number) + " is not 'Key = Value': " + shown(text));
    }
    const std::string key = trim(text.substr(0, equals));
    const std::string value = trim(text.substr(equals + 1));
    if (key.empty()) fail(path, "header line " + std::to_string(line_number) + " has no key: " + shown(text));
    if (!header.fields.emplace(key, value).second) fail(path, "header key " + key + " appears twice");
    if (key == "ElementDataFile") {
      found_data_file = true;
      header.local_data_offset = static_cast<int64_t>(consumed);
    }
  }
  if (!found_data_file) fail(path, "missing required header key ElementDataFile");
  return header;
}

const std::string* find_field(const Header& header, const std::string& key) {
  const auto it = header.fields.find(key);
  return it == header.fields.end() ? nullptr : &it->second;
}

// The first of several synonymous keys that the header holds, in MetaIO's order of preference.
std::optional<std::pair<std::string, std::string>> first_of(const Header& header,
                                                            std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    if (const std::string* value = find_field(header, key)) return std::make_pair(std::string(key), *value);
  }
  return std::nullopt;
}

const std::string& required(const std::string& path, const Header& header, const std::string& key) {
  const std::string* value = find_field(header, key);
  if (!value) fail(path, "missing required header key " + key);
  return *value;
}

// `count` whitespace-separated numbers of type T (int64_t or double), each read whole.
template <typename T>
std::vector<T> parse_numbers(const std::string& path, const std::string& key, const std::string& value, size_t count) {
  std::vector<T> out;
  for (const std::string& word : split_words(value)) {
    T number{};
    const char* begin = word.data() + (word.size() > 1 && word[0] == '+' ? 1 : 0);
    const auto [end, err] = std::from_chars(begin, word.data() + word.size(), number);
    if (err != std::errc() || end != word.data() + word.size()) {
      fail(path, "header key " + key + " is not numeric: " + shown(value));
    }
    out.push_back(number);
  }
  if (out.size() != count) {
    const char* what = std::is_integral_v<T> ? " integer(s), got " : " numbers, got ";
    fail(path, "header key " + key + " must hold " + std::to_string(count) + what + shown(value));
  }
  return out;
}

std::vector<int64_t> parse_integers(const std::string& path, const std::string& key, const std::string& value,
                                    size_t count) {
  return parse_numbers<int64_t>(path, key, value, count);
}

std::vector<double> parse_reals(const std::string& path, const std::string& key, const std::string& value,
                                size_t count) {
  return parse_numbers<double>(path, key, value, count);
}

bool parse_bool(const std::string& path, const std::string& key, const std::string& value) {
  const std::string word = lower(value);
  if (word == "true" || word == "1") return true;
  if (word == "false" || word == "0") return false;
  fail(path, "header key " + key + " must be True or False, got " + shown(value));
}

enum class ElementKind { kShort, kUShort, kUChar, kFloat };

struct Layout {
  std::array<int64_t, 3> size_cri{};  // DimSize as written: x (columns) fastest
  ElementKind kind = ElementKind::kShort;
  int element_bytes = 2;
  bool msb = false;
  bool compressed = false;
  std::optional<int64_t> compressed_size;
  int64_t header_size = 0;
  int64_t voxels = 0;
  int64_t data_bytes = 0;
};

Layout parse_layout(const std::string& path, const Header& header) {
  Layout layout;
  const int64_t ndims = parse_integers(path, "NDims", required(path, header, "NDims"), 1)[0];
  if (ndims != 3) fail(path, "NDims is " + std::to_string(ndims) + ", only 3D images are supported");

  const std::vector<int64_t> dims = parse_integers(path, "DimSize", required(path, header, "DimSize"), 3);
  layout.voxels = 1;
  for (int k = 0; k < 3; ++k) {
    if (dims[k] <= 0) fail(path, "DimSize must be positive, got " + shown(*find_field(header, "DimSize")));
    if (dims[k] > kMaxVoxels / layout.voxels) {
      fail(path, "DimSize " + shown(*find_field(header, "DimSize")) + " holds more than 2^34 voxels");
    }
    layout.voxels *= dims[k];
    layout.size_cri[k] = dims[k];
  }

  const std::string& type = required(path, header, "ElementType");
  if (type == "MET_SHORT") {
    layout.kind = ElementKind::kShort, layout.element_bytes = 2;
  } else if (type == "MET_USHORT") {
    layout.kind = ElementKind::kUShort, layout.element_bytes = 2;
  } else if (type == "MET_UCHAR") {
    layout.kind = ElementKind::kUChar, layout.element_bytes = 1;
  } else if (type == "MET_FLOAT") {
    layout.kind = ElementKind::kFloat, layout.element_bytes = 4;
  } else {
    fail(path, "unsupported ElementType " + shown(type) + " (supported: MET_SHORT, MET_USHORT, MET_UCHAR, MET_FLOAT)");
  }
  layout.data_bytes = layout.voxels * layout.element_bytes;

  if (const std::string* channels = find_field(header, "ElementNumberOfChannels")) {
    const int64_t n = parse_integers(path, "ElementNumberOfChannels", *channels, 1)[0];
    if (n != 1) fail(path, "ElementNumberOfChannels is " + std::to_string(n) + ", only 1 is supported");
  }
  if (const std::string* binary = find_field(header, "BinaryData")) {
    if (!parse_bool(path, "BinaryData", *binary)) fail(path, "ASCII voxel data (BinaryData = False) is not supported");
  }
  if (const auto msb = first_of(header, {"ElementByteOrderMSB", "BinaryDataByteOrderMSB"})) {
    layout.msb = parse_bool(path, msb->first, msb->second);
  }
  if (const std::string* compressed = find_field(header, "CompressedData")) {
    layout.compressed = parse_bool(path, "CompressedData", *compressed);
  }
  if (const std::string* size = find_field(header, "CompressedDataSize")) {
    const int64_t n = parse_integers(path, "CompressedDataSize", *size, 1)[0];
    if (n <= 0) fail(path, "CompressedDataSize must be positive, got " + shown(*size));
    if (layout.compressed) layout.compressed_size = n;
  }
  if (const std::string* skip = find_field(header, "HeaderSize")) {
    layout.header_size = parse_integers(path, "HeaderSize", *skip, 1)[0];
    if (layout.header_size < -1) fail(path, "HeaderSize must be -1 or at least 0, got " + shown(*skip));
  }
  return layout;
}

Geometry parse_geometry(const std::string& path, const Header& header) {
  Vec3 origin_xyz{0, 0, 0}, spacing_xyz{1, 1, 1};
  Mat3 direction{1, 0, 0, 0, 1, 0, 0, 0, 1};
  if (const auto origin = first_of(header, {"Offset", "Position", "Origin"})) {
    const std::vector<double> v = parse_reals(path, origin->first, origin->second, 3);
    if (!std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); })) {
      fail(path, "header key " + origin->first + " must hold 3 finite numbers, got " + shown(origin->second));
    }
    std::copy(v.begin(), v.end(), origin_xyz.begin());
  }
  if (const auto spacing = first_of(header, {"ElementSpacing", "ElementSize"})) {
    const std::vector<double> v = parse_reals(path, spacing->first, spacing->second, 3);
    if (!std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x) && x > 0; })) {
      fail(path,
           "header key " + spacing->first + " must hold 3 finite positive numbers, got " + shown(spacing->second));
    }
    std::copy(v.begin(), v.end(), spacing_xyz.begin());
  }
  if (const auto matrix = first_of(header, {"TransformMatrix", "Rotation", "Orientation"})) {
    // MetaIO writes the direction matrix column by column: file entry 3*k + j is direction[j][k]
    // (checked against SimpleITK 2.5: TransformMatrix is the transpose of GetDirection()).
    const std::vector<double> file = parse_reals(path, matrix->first, matrix->second, 9);
    for (int row = 0; row < 3; ++row) {
      for (int col = 0; col < 3; ++col) direction[3 * row + col] = file[3 * col + row];
    }
  }
  try {
    return Geometry(origin_xyz, spacing_xyz, direction);
  } catch (const Error& e) {
    fail(path, e.what());
  }
}

int64_t file_size_of(const std::string& path, const std::string& data_path) {
  std::error_code ec;
  const auto size = fs::file_size(data_path, ec);
  if (ec) fail(path, "cannot read the size of data file " + shown(data_path) + ": " + ec.message());
  return static_cast<int64_t>(size);
}

void read_exactly(const std::string& path, const std::string& data_path, int64_t offset, char* out, int64_t bytes) {
  std::ifstream in(data_path, std::ios::binary);
  if (!in) fail(path, "cannot open data file " + shown(data_path));
  in.seekg(offset, std::ios::beg);
  int64_t done = 0;
  while (done < bytes && in) {
    const int64_t chunk = std::min<int64_t>(bytes - done, int64_t{1} << 30);
    in.read(out + done, static_cast<std::streamsize>(chunk));
    done += static_cast<int64_t>(in.gcount());
  }
  if (done != bytes) {
    fail(path, "data file " + shown(data_path) + " ended early: read " + std::to_string(done) + " of " +
                   std::to_string(bytes) + " bytes");
  }
}

// The compressed stream ends exactly where the compressed data do (CompressedDataSize, or the file's end).
void require_all_used(const std::string& path, uint64_t used, size_t packed) {
  if (used != packed) {
    fail(path, "the compressed stream ends after " + std::to_string(used) + " of the " + std::to_string(packed) +
                   " bytes of compressed data");
  }
}

// Inflates a zlib (or gzip) stream into exactly `bytes` bytes; anything else is corrupt data.
// With out == nullptr it only checks, inflating into a small scratch buffer: a header that claims
// more voxels than its few compressed bytes hold is refused before that much memory is taken.
void inflate_exactly(const std::string& path, const std::vector<unsigned char>& packed, char* out, int64_t bytes) {
  std::vector<unsigned char> scratch(out == nullptr ? size_t{1} << 16 : 0);
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) fail(path, "cannot initialise zlib");
  int64_t in_done = 0, out_done = 0;
  int ret = Z_OK;
  const int64_t chunk = int64_t{1} << 30;
  while (ret != Z_STREAM_END) {
    if (zs.avail_in == 0 && in_done < static_cast<int64_t>(packed.size())) {
      const int64_t n = std::min<int64_t>(static_cast<int64_t>(packed.size()) - in_done, chunk);
      zs.next_in = const_cast<unsigned char*>(packed.data() + in_done);
      zs.avail_in = static_cast<uInt>(n);
      in_done += n;
    }
    if (out_done == bytes) break;
    const int64_t room = std::min<int64_t>(bytes - out_done, out ? chunk : static_cast<int64_t>(scratch.size()));
    zs.next_out = out ? reinterpret_cast<unsigned char*>(out + out_done) : scratch.data();
    zs.avail_out = static_cast<uInt>(room);
    ret = inflate(&zs, Z_NO_FLUSH);
    out_done += room - static_cast<int64_t>(zs.avail_out);
    if (ret == Z_STREAM_END) break;
    if (ret == Z_BUF_ERROR && zs.avail_in == 0 && in_done == static_cast<int64_t>(packed.size())) {
      inflateEnd(&zs);
      fail(path, "corrupt compressed data: it ends after " + std::to_string(out_done) + " of " + std::to_string(bytes) +
                     " bytes");
    }
    if (ret != Z_OK && ret != Z_BUF_ERROR) {
      const std::string why = zs.msg ? zs.msg : ("zlib error " + std::to_string(ret));
      inflateEnd(&zs);
      fail(path, "corrupt compressed data (" + why + ")");
    }
  }
  if (ret != Z_STREAM_END) {
    // The output is full: the stream must end here, without producing more.
    unsigned char extra = 0;
    zs.next_out = &extra;
    zs.avail_out = 1;
    ret = inflate(&zs, Z_NO_FLUSH);
    const bool produced = zs.avail_out == 0;
    const std::string why = zs.msg ? zs.msg : "";
    inflateEnd(&zs);
    if (produced) {
      fail(path, "compressed data inflates to more than the " + std::to_string(bytes) +
                     " bytes that DimSize and ElementType call for");
    }
    if (ret != Z_STREAM_END) {
      fail(path, "corrupt compressed data (" + (why.empty() ? "stream does not end" : why) + ")");
    }
    require_all_used(path, zs.total_in, packed.size());
    return;
  }
  inflateEnd(&zs);
  if (out_done != bytes) {
    fail(path, "compressed data inflates to " + std::to_string(out_done) + " bytes, expected " + std::to_string(bytes));
  }
  require_all_used(path, zs.total_in, packed.size());
}

// Where the voxel data lie: which file, from which byte, and how many bytes to read there.
struct DataSource {
  std::string file;
  int64_t start = 0;
  int64_t bytes = 0;  // data_bytes, or the compressed stream's length
};

// Finds the data and checks that the file holds enough of it, before any voxel memory is taken.
DataSource locate_data(const std::string& path, const Header& header, const Layout& layout) {
  const std::string& data_file = *find_field(header, "ElementDataFile");
  const std::vector<std::string> words = split_words(data_file);
  if (data_file == "LIST" || (words.size() > 1 && data_file.find('%') != std::string::npos)) {
    fail(path, "ElementDataFile " + shown(data_file) + ": multi-file data is not supported");
  }
  if (data_file.empty()) fail(path, "header key ElementDataFile is empty");

  const bool local = data_file == "LOCAL";
  DataSource source{path, local ? header.local_data_offset : 0, 0};
  if (!local) {
    fs::path file(data_file);
    if (file.is_relative()) file = fs::path(path).parent_path() / file;
    source.file = file.string();
    std::error_code ec;
    if (!fs::exists(source.file, ec)) fail(path, "data file " + shown(source.file) + " not found");
    if (!fs::is_regular_file(source.file, ec)) fail(path, "data file " + shown(source.file) + " is not a regular file");
  }
  const int64_t file_bytes = file_size_of(path, source.file);
  const std::string where = local ? "after the header" : "in data file " + shown(source.file);
  const std::string what = layout.compressed ? "compressed voxel data " : "voxel data ";

  // The bytes the file must hold from the data start (-1: a compressed stream running to the end).
  const int64_t wanted = layout.compressed ? layout.compressed_size.value_or(-1) : layout.data_bytes;
  if (layout.header_size == -1) {
    if (wanted < 0) fail(path, "HeaderSize = -1 with compressed data needs CompressedDataSize");
    source.start = std::max<int64_t>(file_bytes - wanted, source.start);
  } else {
    source.start += layout.header_size;
  }
  const int64_t available = std::max<int64_t>(file_bytes - source.start, 0);
  if (wanted >= 0 && available != wanted) {  // exactly: more data than the header says is a wrong header
    fail(path,
         "expected " + std::to_string(wanted) + " bytes of " + what + where + ", found " + std::to_string(available));
  }
  source.bytes = wanted >= 0 ? wanted : available;
  if (source.bytes == 0) fail(path, "no " + what + where);
  return source;
}

// The compressed stream of the image, checked to inflate to exactly data_bytes (empty when the
// data are not compressed).
std::vector<unsigned char> checked_packed_bytes(const std::string& path, const Layout& layout,
                                                const DataSource& source) {
  if (!layout.compressed) return {};
  std::vector<unsigned char> packed(static_cast<size_t>(source.bytes));
  read_exactly(path, source.file, source.start, reinterpret_cast<char*>(packed.data()), source.bytes);
  inflate_exactly(path, packed, nullptr, layout.data_bytes);
  return packed;
}

// Loads the element bytes of the image into `out` (data_bytes long), in file byte order.
void load_element_bytes(const std::string& path, const Layout& layout, const DataSource& source,
                        const std::vector<unsigned char>& packed, char* out) {
  if (layout.compressed) {
    inflate_exactly(path, packed, out, layout.data_bytes);
  } else {
    read_exactly(path, source.file, source.start, out, layout.data_bytes);
  }
}

void swap_bytes(char* data, int64_t count, int width) {
  for (int64_t k = 0; k < count; ++k) std::reverse(data + k * width, data + (k + 1) * width);
}

}  // namespace

Volume read_metaimage(const std::string& mhd_path) {
  const Header header = read_header(mhd_path);
  const Layout layout = parse_layout(mhd_path, header);
  Geometry geometry = parse_geometry(mhd_path, header);
  const DataSource source = locate_data(mhd_path, header, layout);
  const std::vector<unsigned char> packed = checked_packed_bytes(mhd_path, layout, source);

  // File order is x fastest, then y, then z: exactly a C-contiguous [I, R, C] tensor.
  const std::vector<int64_t> shape_irc{layout.size_cri[2], layout.size_cri[1], layout.size_cri[0]};
  const torch::Dtype file_dtype = layout.kind == ElementKind::kFloat   ? torch::kFloat32
                                  : layout.kind == ElementKind::kUChar ? torch::kUInt8
                                                                       : torch::kInt16;  // (u)short bits
  torch::Tensor voxels = torch::empty(shape_irc, torch::TensorOptions().dtype(file_dtype));
  char* bytes = static_cast<char*>(voxels.data_ptr());
  load_element_bytes(mhd_path, layout, source, packed, bytes);

  const bool host_msb = std::endian::native == std::endian::big;
  if (layout.element_bytes > 1 && layout.msb != host_msb) swap_bytes(bytes, layout.voxels, layout.element_bytes);

  if (layout.kind == ElementKind::kUChar) {
    voxels = voxels.to(torch::kInt16);
  } else if (layout.kind == ElementKind::kUShort) {
    // The int16 bits equal the uint16 values as long as none exceeds 32767.
    const auto* values = reinterpret_cast<const uint16_t*>(bytes);
    const uint16_t max_value = layout.voxels ? *std::max_element(values, values + layout.voxels) : 0;
    if (max_value > 32767) {
      torch::Tensor wide = torch::empty(shape_irc, torch::TensorOptions().dtype(torch::kFloat32));
      float* out = wide.data_ptr<float>();
      for (int64_t k = 0; k < layout.voxels; ++k) out[k] = static_cast<float>(values[k]);
      voxels = wide;
    }
  }
  return Volume{voxels, geometry};
}

void write_metaimage(const std::string& mhd_path, const Volume& volume) {
  const fs::path header_path(mhd_path);
  if (header_path.extension() != ".mhd") fail(mhd_path, "a MetaImage to write must end in .mhd");
  const torch::Tensor voxels = volume.voxels.to(torch::kCPU).contiguous();
  if (voxels.dim() != 3) fail(mhd_path, "only a 3D volume can be written");
  if constexpr (std::endian::native != std::endian::little) fail(mhd_path, "writing needs a little-endian machine");
  const bool is_short = voxels.scalar_type() == torch::kInt16;
  if (!is_short && voxels.scalar_type() != torch::kFloat32) fail(mhd_path, "voxels must be int16 or float32");
  const Geometry& g = volume.geometry;
  const auto numbers = [](std::initializer_list<double> values) {
    std::ostringstream out;
    out.precision(17);
    for (const double v : values) out << (out.tellp() > 0 ? " " : "") << v;
    return out.str();
  };
  const Mat3& d = g.direction();  // row-major; MetaIO lists it column by column
  const fs::path raw_path = fs::path(header_path).replace_extension(".raw");
  std::string header =
      "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
      "CompressedData = False\n";
  header += "TransformMatrix = " + numbers({d[0], d[3], d[6], d[1], d[4], d[7], d[2], d[5], d[8]}) + "\n";
  header += "Offset = " + numbers({g.origin_xyz()[0], g.origin_xyz()[1], g.origin_xyz()[2]}) + "\n";
  header += "ElementSpacing = " + numbers({g.spacing_xyz()[0], g.spacing_xyz()[1], g.spacing_xyz()[2]}) + "\n";
  header += "DimSize = " + std::to_string(voxels.size(2)) + " " + std::to_string(voxels.size(1)) + " " +
            std::to_string(voxels.size(0)) + "\n";
  header += std::string("ElementType = ") + (is_short ? "MET_SHORT" : "MET_FLOAT") + "\n";
  header += "ElementDataFile = " + raw_path.filename().string() + "\n";
  std::string data(static_cast<const char*>(voxels.data_ptr()), static_cast<size_t>(voxels.nbytes()));
  write_files_atomically({{raw_path.string(), std::move(data)}, {mhd_path, header}});
}

}  // namespace lunakit
