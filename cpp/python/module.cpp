// lunakit._core: the C++ runtime in-process. Loading it loads lunakit_core and with it the
// torch.ops.lunakit registrations; the bindings below carry the scan readers and the Analyzer.
// Volumes cross as numpy arrays (buffer protocol), never as torch tensors, so the module needs no
// torch_python (docs/design.md, "Building against torch"). Every lunakit::Error reaches Python
// as lunakit._core.Error with its one-line message; python/lunakit/pipeline/cpp_engine.py wraps it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "lunakit/analyzer.h"
#include "lunakit/bundle.h"
#include "lunakit/error.h"
#include "lunakit/metaimage.h"
#include "lunakit/resample.h"
#include "lunakit/scan.h"
#include "lunakit/version.h"
#include "manifest_json.h"

namespace py = pybind11;

namespace {

// The module's exception type; the module holds the reference, so it outlives every translation.
PyObject* error_type = nullptr;

std::string one_line(std::string message) {
  for (char& ch : message) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  return message;
}

std::string shape_text(const py::array& array) {
  std::string text = "(";
  for (py::ssize_t k = 0; k < array.ndim(); ++k) text += (k ? ", " : "") + std::to_string(array.shape(k));
  return text + (array.ndim() == 1 ? ",)" : ")");
}

// A 3-vector from any sequence of 3 numbers.
lunakit::Vec3 vec3(const py::handle& value, const char* name) {
  const auto array = py::array_t < double, py::array::c_style | py::array::forcecast > ::ensure(value);
  if (!array || array.size() != 3) throw lunakit::Error(std::string(name) + ": expected 3 numbers");
  return {array.at(0), array.at(1), array.at(2)};
}

// A row-major 3x3 matrix from 3 rows of 3 numbers (or 9 numbers).
lunakit::Mat3 mat3(const py::handle& value) {
  const auto array = py::array_t < double, py::array::c_style | py::array::forcecast > ::ensure(value);
  if (!array || array.size() != 9) throw lunakit::Error("direction: expected a 3x3 matrix");
  lunakit::Mat3 m{};
  for (size_t k = 0; k < 9; ++k) m[k] = array.data()[k];
  return m;
}

py::tuple geometry_tuple(const lunakit::Geometry& g) {
  const lunakit::Vec3 &o = g.origin_xyz(), &s = g.spacing_xyz();
  const lunakit::Mat3& d = g.direction();
  return py::make_tuple(py::make_tuple(o[0], o[1], o[2]), py::make_tuple(s[0], s[1], s[2]),
                        py::make_tuple(py::make_tuple(d[0], d[1], d[2]), py::make_tuple(d[3], d[4], d[5]),
                                       py::make_tuple(d[6], d[7], d[8])));
}

// A Volume over the array's own memory, without a copy: the caller keeps the array alive (and
// unchanged) while the Volume is in use. Anything but a C-contiguous 3D int16 or float32 array is refused.
lunakit::Volume wrap_volume(const py::handle& value, const lunakit::Geometry& geometry) {
  if (!py::isinstance<py::array>(value)) {
    const std::string type = py::str(value.get_type().attr("__name__"));
    throw lunakit::Error("volume: expected a numpy array, got " + type);
  }
  const auto array = py::reinterpret_borrow<py::array>(value);
  if (array.ndim() != 3) {
    throw lunakit::Error("volume: expected a 3D array [I, R, C], got shape " + shape_text(array));
  }
  const bool int16 = py::isinstance<py::array_t<int16_t>>(array);  // native byte order only
  if (!int16 && !py::isinstance<py::array_t<float>>(array)) {
    throw lunakit::Error("volume: expected int16 (HU) or float32 voxels, got " + std::string(py::str(array.dtype())));
  }
  if (!(array.flags() & py::array::c_style)) {
    throw lunakit::Error("volume: the array is not C-contiguous (numpy.ascontiguousarray gives a contiguous copy)");
  }
  const int64_t i = array.shape(0), r = array.shape(1), c = array.shape(2);
  if (int16) return lunakit::Volume::from_buffer(static_cast<const int16_t*>(array.data()), i, r, c, geometry);
  return lunakit::Volume::from_buffer(static_cast<const float*>(array.data()), i, r, c, geometry);
}

// A numpy array over a tensor's memory, the tensor kept alive by the array (no copy).
py::array to_numpy(const torch::Tensor& voxels) {
  const torch::Tensor t = voxels.contiguous();
  const py::dtype dtype = t.scalar_type() == torch::kInt16 ? py::dtype::of<int16_t>() : py::dtype::of<float>();
  std::vector<py::ssize_t> shape(t.sizes().begin(), t.sizes().end());
  auto* owner = new torch::Tensor(t);
  py::capsule capsule(owner, [](void* p) { delete static_cast<torch::Tensor*>(p); });
  return py::array(dtype, shape, {}, t.data_ptr(), capsule);
}

py::dict finding_dict(const lunakit::Finding& f) {
  py::dict d;
  d["center_xyz"] = py::make_tuple(f.center_xyz[0], f.center_xyz[1], f.center_xyz[2]);
  d["center_irc"] = py::make_tuple(f.center_irc[0], f.center_irc[1], f.center_irc[2]);
  d["voxel_count"] = f.voxel_count;
  d["bbox_irc"] = py::make_tuple(py::make_tuple(f.bbox_min_irc[0], f.bbox_min_irc[1], f.bbox_min_irc[2]),
                                 py::make_tuple(f.bbox_max_irc[0], f.bbox_max_irc[1], f.bbox_max_irc[2]));
  d["diameter_mm"] = f.diameter_mm;
  d["p_nodule"] = f.p_nodule;
  d["p_malignant"] = f.p_malignant ? py::object(py::float_(*f.p_malignant)) : py::object(py::none());
  return d;
}

// A Python value as JSON, as json.dumps would write it (NaN and infinities kept as numbers, so
// that the options' checks, not the conversion, name them). `where` names it in messages.
nlohmann::json json_value(const py::handle& value, const std::string& where) {
  if (value.is_none()) return nullptr;
  if (py::isinstance<py::bool_>(value)) return value.cast<bool>();
  if (PyLong_Check(value.ptr())) {
    try {
      return value.cast<int64_t>();
    } catch (const py::cast_error&) {
      return value.cast<double>();  // beyond int64: a number, refused where an integer is due
    }
  }
  if (PyFloat_Check(value.ptr())) return value.cast<double>();
  if (py::isinstance<py::str>(value)) return value.cast<std::string>();
  if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
    nlohmann::json out = nlohmann::json::array();
    for (const py::handle item : value) out.push_back(json_value(item, where));
    return out;
  }
  if (py::isinstance<py::dict>(value)) {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [key, item] : value.cast<py::dict>()) {
      if (!py::isinstance<py::str>(key)) throw lunakit::Error(where + ": field names must be strings");
      const std::string name = key.cast<std::string>();
      out[name] = json_value(item, where + ": " + name);
    }
    return out;
  }
  const std::string type = py::str(value.get_type().attr("__name__"));
  throw lunakit::Error(where + " is a " + type + ", not a JSON value");
}

// A loaded bundle and its Analyzer. The mutex keeps to the Analyzer's one-analyze-at-a-time rule
// when Python threads share one object (the GIL is released while it runs).
struct PyAnalyzer {
  lunakit::Bundle bundle;
  lunakit::Analyzer analyzer;
  std::mutex running;
};

std::unique_ptr<PyAnalyzer> make_analyzer(const std::string& bundle_dir, const std::string& device, int threads,
                                          const std::string& precision) {
  py::gil_scoped_release release;
  lunakit::Bundle bundle = lunakit::Bundle::load(bundle_dir);
  lunakit::AnalyzerOptions options;
  options.device = device;
  options.threads = threads;
  options.precision = precision;
  return std::unique_ptr<PyAnalyzer>(new PyAnalyzer{bundle, lunakit::Analyzer(bundle, options), {}});
}

py::list analyze(PyAnalyzer& self, const py::object& volume, const py::object& origin_xyz,
                 const py::object& spacing_xyz, const py::object& direction, const py::object& progress) {
  const lunakit::Geometry geometry(vec3(origin_xyz, "origin_xyz"), vec3(spacing_xyz, "spacing_xyz"), mat3(direction));
  const lunakit::Volume wrapped = wrap_volume(volume, geometry);
  lunakit::Progress report;
  if (!progress.is_none()) {
    // Called on this thread with the GIL released: take it back for the Python callable. Captured
    // by reference, so no reference count changes without the GIL.
    report = [&progress](const std::string& stage, int64_t done, int64_t total) {
      py::gil_scoped_acquire gil;
      progress(stage, done, total);
    };
  }
  std::vector<lunakit::Finding> findings;
  {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(self.running);
    findings = self.analyzer.analyze(wrapped, report);
  }
  py::list out;
  for (const lunakit::Finding& f : findings) out.append(finding_dict(f));
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lunakit C++ core: the op library, the scan readers and the Analyzer";
  m.attr("__version__") = lunakit::version();
  m.def("built_with_cuda", &lunakit::built_with_cuda, "Whether the op library carries CUDA kernels.");
  m.def("native_bf16", &lunakit::native_bf16, py::arg("device"),
        "Whether a device (cpu, cuda[:N]) computes bf16 natively: precision 'auto''s rule.");

  error_type = py::exception<lunakit::Error>(m, "Error").ptr();
  py::register_exception_translator([](std::exception_ptr thrown) {
    try {
      if (thrown) std::rethrow_exception(thrown);
    } catch (const lunakit::Error& e) {
      PyErr_SetString(error_type, one_line(e.what()).c_str());
    }
  });

  m.def(
      "read_metaimage",
      [](const std::string& path) {
        lunakit::Volume volume;
        {
          py::gil_scoped_release release;
          volume = lunakit::read_metaimage(path);
        }
        const py::tuple g = geometry_tuple(volume.geometry);
        return py::make_tuple(to_numpy(volume.voxels), g[0], g[1], g[2]);
      },
      py::arg("path"),
      "A .mhd / .mha file -> (voxels int16 or float32 [I, R, C], origin_xyz, spacing_xyz, direction).");

  m.def(
      "load_scan",
      [](const std::string& path, const std::string& series_uid) {
        lunakit::Scan scan;
        {
          py::gil_scoped_release release;
          scan = lunakit::load_scan(path, series_uid);
        }
        const py::tuple g = geometry_tuple(scan.volume.geometry);
        return py::make_tuple(to_numpy(scan.volume.voxels), g[0], g[1], g[2], scan.series_uid, scan.source);
      },
      py::arg("path"), py::arg("series_uid") = "",
      "A .mhd / .mha file or DICOM series folder -> (int16 HU [I, R, C], origin_xyz, spacing_xyz, "
      "direction, series_uid, source).");

  m.def(
      "resample",
      [](const py::handle& volume, const py::handle& origin, const py::handle& spacing, const py::handle& direction,
         const py::handle& spacing_irc) {
        const lunakit::Volume source =
            wrap_volume(volume, {vec3(origin, "origin_xyz"), vec3(spacing, "spacing_xyz"), mat3(direction)});
        const lunakit::Vec3 target = vec3(spacing_irc, "spacing_irc");
        lunakit::Volume out;
        {
          py::gil_scoped_release release;
          out = lunakit::resample(source, target);
        }
        const py::tuple g = geometry_tuple(out.geometry);
        return py::make_tuple(to_numpy(out.voxels), g[0], g[1], g[2]);
      },
      py::arg("volume"), py::arg("origin_xyz"), py::arg("spacing_xyz"), py::arg("direction"), py::arg("spacing_irc"),
      "int16 HU [I, R, C] and its geometry on a grid of spacing_irc mm (lunakit::resample) -> (int16 HU, "
      "origin_xyz, spacing_xyz, direction).");

  m.def(
      "check_options",
      [](const py::object& values) { return lunakit::options_from_json(json_value(values, "options")).to_json(); },
      py::arg("values"),
      "Pipeline options from a dict (fields left out take their defaults), checked by "
      "lunakit::PipelineOptions -> the complete options as JSON text. The one copy of the options' rules.");

  const lunakit::ManifestFormat bundle_format;
  m.def(
      "read_manifest",
      [](const std::string& dir, const std::string& name, int version, const std::vector<std::string>& kinds,
         const std::vector<std::string>& model_formats, const std::string& label) {
        py::gil_scoped_release release;  // checksums read every model file
        return lunakit::read_manifest(dir, {name, version, kinds, model_formats, label}).json;
      },
      py::arg("dir"), py::arg("format") = bundle_format.name, py::arg("format_version") = bundle_format.version,
      py::arg("kinds") = bundle_format.kinds, py::arg("model_formats") = bundle_format.model_formats,
      py::arg("label") = bundle_format.label,
      "A bundle folder's manifest.json, checked by lunakit::read_manifest (format, version, model "
      "files inside the folder with their sha256, options) -> the manifest as JSON text.");

  py::class_<PyAnalyzer>(m, "Analyzer", "A loaded bundle (lunakit::Bundle::load) and its lunakit::Analyzer.")
      .def(py::init(&make_analyzer), py::arg("bundle_dir"), py::arg("device") = "cpu", py::arg("threads") = 0,
           py::arg("precision") = "")
      .def("analyze", &analyze, py::arg("volume"), py::arg("origin_xyz"), py::arg("spacing_xyz"), py::arg("direction"),
           py::arg("progress") = py::none(),
           "Findings of a C-contiguous int16 or float32 array [I, R, C], read in place (not copied), "
           "as findings.json records sorted by p_nodule; progress(stage, done, total) if given.")
      .def_property_readonly("options", [](const PyAnalyzer& self) { return self.analyzer.options().to_json(); })
      .def_property_readonly("checksums", [](const PyAnalyzer& self) { return self.bundle.model_sha256(); })
      .def_property_readonly("device", [](const PyAnalyzer& self) { return self.analyzer.device(); })
      .def_property_readonly("bundle_dir", [](const PyAnalyzer& self) { return self.bundle.dir(); });
}
