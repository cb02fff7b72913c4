// SHA-256 of a byte string or a file, for the bundle's checksums: OpenSSL's EVP digest, a
// private dependency of the library (bundle.h names no OpenSSL type).
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <openssl/evp.h>

#include "lunakit/bundle.h"
#include "lunakit/error.h"

namespace lunakit {
namespace {

// OpenSSL failing to hash is not the input's fault: an internal error, not lunakit::Error.
void check(int ok, const char* step) {
  if (ok != 1) throw std::runtime_error(std::string("OpenSSL SHA-256: ") + step + " failed");
}

// A streaming SHA-256: feed bytes with update(), then read hex_digest() once.
class Sha256 {
 public:
  Sha256() : context_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    if (!context_) throw std::bad_alloc();
    check(EVP_DigestInit_ex(context_.get(), EVP_sha256(), nullptr), "init");
  }

  void update(const void* data, size_t size) { check(EVP_DigestUpdate(context_.get(), data, size), "update"); }

  std::string hex_digest() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    check(EVP_DigestFinal_ex(context_.get(), digest, &size), "final");
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned int k = 0; k < size; ++k) {
      out += digits[digest[k] >> 4];
      out += digits[digest[k] & 0xf];
    }
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context_;
};

}  // namespace

std::string sha256_hex(const void* data, size_t size) {
  Sha256 hash;
  hash.update(data, size);
  return hash.hex_digest();
}

std::string sha256_file(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
  // Closed on every path: update() can throw.
  const std::unique_ptr<std::FILE, decltype(&std::fclose)> closer(file, &std::fclose);
  Sha256 hash;
  std::vector<unsigned char> chunk(1 << 16);  // 64 KiB: as fast as larger reads, cheap to allocate
  size_t got = 0;
  while ((got = std::fread(chunk.data(), 1, chunk.size(), file)) > 0) hash.update(chunk.data(), got);
  if (std::ferror(file) != 0) throw Error(path + ": read error");
  return hash.hex_digest();
}

}  // namespace lunakit
