#pragma once
// Pipeline options from an already parsed JSON value (manifest.cpp): for readers inside lunakit
// that hold nlohmann::json (Bundle's manifest, the Python bindings' dicts). Not installed.
#include <nlohmann/json.hpp>

#include "lunakit/bundle.h"

namespace lunakit {

// AnalysisOptions.from_dict's rule: known fields only, defaults for the ones left out, then
// PipelineOptions::validate. Throws lunakit::Error "options: ...".
PipelineOptions options_from_json(const nlohmann::json& d);

}  // namespace lunakit
