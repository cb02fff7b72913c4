#pragma once
// What a loaded Bundle holds beside its manifest: the TorchScript modules (on the CPU).
// Private to lunakit_core (bundle.cpp fills it, analyzer.cpp runs it).
#include <torch/script.h>

#include <map>
#include <optional>
#include <string>

#include "lunakit/bundle.h"

namespace lunakit {

struct Bundle::Impl {
  std::string dir;
  PipelineOptions options;
  std::map<std::string, std::string> model_sha256;  // kind -> sha256
  std::map<std::string, std::string> model_file;    // kind -> file name in dir
  std::string lunakit_version;
  std::string torch_version;
  torch::jit::Module seg;
  torch::jit::Module cls;
  std::optional<torch::jit::Module> mal;
};

// The first line of an exception's message without torch's backtrace, for one-line errors.
std::string first_line(const std::exception& e);

}  // namespace lunakit
