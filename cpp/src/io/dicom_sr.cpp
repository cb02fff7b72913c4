// Findings -> TID 1500 Comprehensive 3D SR with DCMTK's dcmsr (see lunakit/dicom_sr.h). No torch
// here: this translation unit includes only DCMTK and the standard library.
#include "lunakit/dicom_sr.h"

#include <dcmtk/config/osconfig.h>  // first: DCMTK's configuration
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcostrmb.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmsr/dsrdoc.h>
#include <dcmtk/oflog/oflog.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "lunakit/error.h"
#include "lunakit/version.h"

namespace lunakit {

namespace {

namespace fs = std::filesystem;
using T = DSRTypes;

// The root-level attributes of the CT Image IOD's Patient and Study modules (Patient, Clinical
// Trial Subject, General Study, Patient Study, Clinical Trial Study): what highdicom's
// copy_patient_and_study_information copies from the first source image, when present.
const DcmTagKey kPatientAndStudy[] = {
    // Patient
    {0x0008, 0x1120},
    {0x0010, 0x0010},
    {0x0010, 0x0020},
    {0x0010, 0x0021},
    {0x0010, 0x0022},
    {0x0010, 0x0024},
    {0x0010, 0x0026},
    {0x0010, 0x0027},
    {0x0010, 0x0030},
    {0x0010, 0x0032},
    {0x0010, 0x0033},
    {0x0010, 0x0034},
    {0x0010, 0x0035},
    {0x0010, 0x0040},
    {0x0010, 0x0200},
    {0x0010, 0x0212},
    {0x0010, 0x0213},
    {0x0010, 0x0216},
    {0x0010, 0x0218},
    {0x0010, 0x0219},
    {0x0010, 0x0221},
    {0x0010, 0x1001},
    {0x0010, 0x1002},
    {0x0010, 0x1100},
    {0x0010, 0x2161},
    {0x0010, 0x2201},
    {0x0010, 0x2202},
    {0x0010, 0x2292},
    {0x0010, 0x2293},
    {0x0010, 0x2294},
    {0x0010, 0x2297},
    {0x0010, 0x2298},
    {0x0010, 0x2299},
    {0x0010, 0x4000},
    {0x0012, 0x0062},
    {0x0012, 0x0063},
    {0x0012, 0x0064},
    // Clinical Trial Subject
    {0x0012, 0x0010},
    {0x0012, 0x0020},
    {0x0012, 0x0021},
    {0x0012, 0x0022},
    {0x0012, 0x0023},
    {0x0012, 0x0030},
    {0x0012, 0x0031},
    {0x0012, 0x0032},
    {0x0012, 0x0040},
    {0x0012, 0x0041},
    {0x0012, 0x0042},
    {0x0012, 0x0043},
    {0x0012, 0x0081},
    {0x0012, 0x0082},
    // General Study
    {0x0008, 0x0020},
    {0x0008, 0x0030},
    {0x0008, 0x0050},
    {0x0008, 0x0051},
    {0x0008, 0x0090},
    {0x0008, 0x0096},
    {0x0008, 0x009c},
    {0x0008, 0x009d},
    {0x0008, 0x1030},
    {0x0008, 0x1032},
    {0x0008, 0x1048},
    {0x0008, 0x1049},
    {0x0008, 0x1060},
    {0x0008, 0x1062},
    {0x0008, 0x1110},
    {0x0020, 0x000d},
    {0x0020, 0x0010},
    {0x0032, 0x1033},
    {0x0032, 0x1034},
    {0x0040, 0x1012},
    // Patient Study
    {0x0008, 0x1080},
    {0x0008, 0x1084},
    {0x0010, 0x1010},
    {0x0010, 0x1020},
    {0x0010, 0x1021},
    {0x0010, 0x1022},
    {0x0010, 0x1023},
    {0x0010, 0x1024},
    {0x0010, 0x1030},
    {0x0010, 0x2000},
    {0x0010, 0x2110},
    {0x0010, 0x2180},
    {0x0010, 0x21a0},
    {0x0010, 0x21b0},
    {0x0010, 0x21c0},
    {0x0010, 0x21d0},
    {0x0010, 0x2203},
    {0x0032, 0x1066},
    {0x0032, 0x1067},
    {0x0038, 0x0010},
    {0x0038, 0x0014},
    {0x0038, 0x0060},
    {0x0038, 0x0062},
    {0x0038, 0x0064},
    {0x0038, 0x0500},
    // Clinical Trial Study
    {0x0012, 0x0050},
    {0x0012, 0x0051},
    {0x0012, 0x0052},
    {0x0012, 0x0053},
    {0x0012, 0x0054},
    {0x0012, 0x0055},
    {0x0012, 0x0083},
};

const char* kScheme = "99LUNAKIT";  // lunakit's codes for the probabilities (PS3.16 8.2)

// DCMTK failing to build what lunakit asks of it is lunakit's bug, not bad input.
void ok(const OFCondition& status, const char* what) {
  if (status.bad()) throw std::runtime_error(std::string("DICOM SR: ") + what + ": " + status.text());
}

std::string new_uid() {
  char uid[100];
  return dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT);
}

// A DS value (at most 16 characters) holding as many significant digits as fit, as pydicom's
// format_number_as_ds writes it.
std::string decimal_string(double value) {
  char text[40];
  for (int digits = 17; digits > 0; --digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, value);
    if (std::string(text).size() <= 16) break;
  }
  return text;
}

// Adds content items in document order: add() puts an item after the current one, or as the
// first child of the current one after enter(); leave() returns to the parent.
class TreeWriter {
 public:
  explicit TreeWriter(DSRDocumentTree& tree) : tree_(tree) {}

  DSRContentItem& add(T::E_RelationshipType relation, T::E_ValueType type, const DSRCodedEntryValue& name) {
    ok(child_ ? tree_.addChildContentItem(relation, type, name) : tree_.addContentItem(relation, type, name),
       "content item");
    child_ = false;
    return tree_.getCurrentContentItem();
  }
  void enter() { child_ = true; }
  void leave() {
    if (!child_) tree_.goUp();
    child_ = false;
  }

  void code(T::E_RelationshipType relation, const DSRCodedEntryValue& name, const DSRCodedEntryValue& value) {
    ok(add(relation, T::VT_Code, name).setCodeValue(value), "CODE");
  }
  void text(T::E_RelationshipType relation, const DSRCodedEntryValue& name, const std::string& value) {
    ok(add(relation, T::VT_Text, name).setStringValue(value.c_str()), "TEXT");
  }
  void uid(T::E_RelationshipType relation, const DSRCodedEntryValue& name, const std::string& value) {
    ok(add(relation, T::VT_UIDRef, name).setStringValue(value.c_str()), "UIDREF");
  }
  void num(const DSRCodedEntryValue& name, double value, const DSRCodedEntryValue& unit) {
    DSRNumericMeasurementValue measurement(decimal_string(value).c_str(), unit);
    ok(measurement.setFloatingPointRepresentation(value), "NUM value");
    ok(add(T::RT_contains, T::VT_Num, name).setNumericValue(measurement), "NUM");
  }
  void container(T::E_RelationshipType relation, const DSRCodedEntryValue& name, const char* template_id) {
    DSRContentItem& item = add(relation, T::VT_Container, name);
    ok(item.setContinuityOfContent(T::COC_Continuous), "continuity");
    if (template_id != nullptr) ok(item.setTemplateIdentification(template_id, "DCMR"), "template");
  }

 private:
  DSRDocumentTree& tree_;
  bool child_ = false;
};

const DSRCodedEntryValue kMm("mm", "UCUM", "mm");
const DSRCodedEntryValue kNoUnits("1", "UCUM", "no units");

// The algorithm of TID 4019 (name, version, parameters: "kind sha256[:12], ..." of the models).
void algorithm(TreeWriter& w, const std::map<std::string, std::string>& model_sha256) {
  w.text(T::RT_hasConceptMod, {"111001", "DCM", "Algorithm Name"}, "lunakit");
  w.text(T::RT_hasConceptMod, {"111003", "DCM", "Algorithm Version"}, version());
  std::string parameters;
  for (const auto& [kind, sha] : model_sha256)
    parameters += (parameters.empty() ? "" : ", ") + kind + " " + sha.substr(0, 12);
  if (!parameters.empty()) w.text(T::RT_hasConceptMod, {"111002", "DCM", "Algorithm Parameters"}, parameters);
}

void tracking(TreeWriter& w, const std::string& identifier) {
  w.text(T::RT_hasObsContext, {"112039", "DCM", "Tracking Identifier"}, identifier);
  w.uid(T::RT_hasObsContext, {"112040", "DCM", "Tracking Unique Identifier"}, new_uid());
}

// One TID 1411 group, in highdicom's item order.
void finding_group(TreeWriter& w, int k, const Finding& f, const std::string& series_uid, const std::string& frame,
                   const std::map<std::string, std::string>& model_sha256) {
  w.container(T::RT_contains, {"125007", "DCM", "Measurement Group"}, "1411");
  w.enter();
  tracking(w, "finding " + std::to_string(k));
  w.code(T::RT_contains, {"276214006", "SCT", "Finding category"},
         {"49755003", "SCT", "Morphologically Abnormal Structure"});
  w.code(T::RT_contains, {"121071", "DCM", "Finding"}, {"27925004", "SCT", "Nodule"});
  algorithm(w, model_sha256);
  w.num({"81827009", "SCT", "Diameter"}, f.diameter_mm, kMm);
  w.num({"p_nodule", kScheme, "Probability of nodule"}, f.p_nodule, kNoUnits);
  if (f.p_malignant) w.num({"p_malignant", kScheme, "Probability of malignancy"}, *f.p_malignant, kNoUnits);
  w.code(T::RT_contains, {"130400", "DCM", "Geometric purpose of region"}, {"111010", "DCM", "Center"});
  DSRSpatialCoordinates3DValue center(T::GT3_Point);
  center.getGraphicDataList().addItem(static_cast<Float32>(f.center_xyz[0]), static_cast<Float32>(f.center_xyz[1]),
                                      static_cast<Float32>(f.center_xyz[2]));
  ok(center.setFrameOfReferenceUID(frame.c_str()), "frame of reference");
  ok(w.add(T::RT_contains, T::VT_SCoord3D, {"121231", "DCM", "Volume Surface"}).setSpatialCoordinates3D(center),
     "SCOORD3D");
  w.uid(T::RT_contains, {"121232", "DCM", "Source Series for Segmentation"}, series_uid);
  w.leave();
}

// The DCMTK loggers print to stderr; lunakit reports problems through exceptions.
void quiet_dcmtk() {
  static const bool quiet = [] {
    for (const char* name : {"dcmtk.dcmdata", "dcmtk.dcmsr"})
      OFLog::getLogger(name).setLogLevel(OFLogger::OFF_LOG_LEVEL);
    return true;
  }();
  (void)quiet;
}

struct Source {
  std::unique_ptr<DcmFileFormat> first;  // the first slice's header (patient and study attributes)
  std::string study_uid, frame_uid;
  std::vector<std::pair<std::string, std::string>> instances;  // (SOP class, SOP instance) per slice
};

std::string value_of(DcmDataset& dataset, const DcmTagKey& tag) {
  OFString value;
  if (dataset.findAndGetOFString(tag, value).bad()) return {};
  return value.c_str();
}

Source read_sources(const std::vector<std::string>& files, const std::string& series_uid) {
  if (files.empty()) throw Error("DICOM SR: no source files (the scan was not read from a DICOM series)");
  Source source;
  for (const std::string& file : files) {
    auto header = std::make_unique<DcmFileFormat>();
    // Elements over 4 KiB (the pixels) stay on disk.
    if (header->loadFile(file.c_str(), EXS_Unknown, EGL_noChange, 4096).bad()) {
      throw Error(file + ": DCMTK cannot read this DICOM file");
    }
    DcmDataset& ds = *header->getDataset();
    const std::string name = fs::path(file).filename().string();
    if (value_of(ds, DCM_SeriesInstanceUID) != series_uid) throw Error(file + ": not of series " + series_uid);
    const std::string modality = value_of(ds, DCM_Modality);
    if (modality != "CT") throw Error(file + ": series " + series_uid + " is not CT (Modality " + modality + ")");
    const std::string study = value_of(ds, DCM_StudyInstanceUID);
    const std::string sop_class = value_of(ds, DCM_SOPClassUID);
    const std::string sop_instance = value_of(ds, DCM_SOPInstanceUID);
    if (study.empty() || sop_class.empty() || sop_instance.empty()) {
      throw Error(file + ": lacks a Study Instance, SOP Class or SOP Instance UID");
    }
    if (!source.first) {
      source.study_uid = study;
      source.frame_uid = value_of(ds, DCM_FrameOfReferenceUID);
      if (source.frame_uid.empty()) throw Error(file + ": lacks a Frame of Reference UID (0020,0052)");
      source.first = std::move(header);
    } else if (study != source.study_uid) {
      throw Error(file + ": of study " + study + ", not " + source.study_uid);
    }
    source.instances.emplace_back(sop_class, sop_instance);
  }
  return source;
}

// Copies the element `tag` of `from`, if there, into `to` (replacing `to`'s).
void copy_element(DcmDataset& from, DcmDataset& to, const DcmTagKey& tag) {
  DcmElement* element = nullptr;
  if (from.findAndGetElement(tag, element).good() && element != nullptr) {
    ok(to.insert(static_cast<DcmElement*>(element->clone()), OFTrue), "copied attribute");
  }
}

// The Part 10 file's bytes (DCMTK's stream writer, flushed into a string chunk by chunk).
std::string part10_bytes(DcmFileFormat& file) {
  std::string bytes;
  std::vector<char> buffer(1 << 16);
  DcmOutputBufferStream stream(buffer.data(), buffer.size());
  file.transferInit();
  OFCondition status = EC_StreamNotifyClient;
  while (status == EC_StreamNotifyClient) {
    status = file.write(stream, EXS_LittleEndianExplicit, EET_ExplicitLength, nullptr);
    void* chunk = nullptr;
    offile_off_t length = 0;
    stream.flushBuffer(chunk, length);
    bytes.append(static_cast<const char*>(chunk), static_cast<size_t>(length));
  }
  file.transferEnd();
  ok(status, "write");
  return bytes;
}

}  // namespace

std::string findings_sr(const std::vector<std::string>& source_files, const FindingsDocument& document,
                        const std::vector<Finding>& findings) {
  quiet_dcmtk();
  const Source source = read_sources(source_files, document.series_uid);
  DcmDataset& first = *source.first->getDataset();

  DSRDocument sr(T::DT_Comprehensive3DSR);
  ok(sr.createNewSeriesInStudy(source.study_uid.c_str()), "series");
  long series_number = 0;
  if (first.findAndGetLongInt(DCM_SeriesNumber, series_number).bad()) series_number = 0;
  ok(sr.setSeriesNumber(std::to_string(series_number + 1001).c_str()), "series number");
  ok(sr.setInstanceNumber("1"), "instance number");
  ok(sr.setManufacturer("lunakit"), "manufacturer");
  ok(sr.setSeriesDescription("lunakit nodule findings"), "series description");
  for (const auto& [sop_class, sop_instance] : source.instances) {
    ok(sr.getCurrentRequestedProcedureEvidence().addItem(source.study_uid.c_str(), document.series_uid.c_str(),
                                                         sop_class.c_str(), sop_instance.c_str()),
       "evidence");
  }

  DSRDocumentTree& tree = sr.getTree();
  ok(tree.addContentItem(T::RT_isRoot, T::VT_Container) > 0 ? EC_Normal : EC_IllegalCall, "root");
  ok(tree.getCurrentContentItem().setConceptName({"126000", "DCM", "Imaging Measurement Report"}), "root name");
  ok(tree.getCurrentContentItem().setContinuityOfContent(T::COC_Continuous), "root continuity");
  ok(tree.getCurrentContentItem().setTemplateIdentification("1500", "DCMR"), "root template");
  TreeWriter w(tree);
  w.enter();
  w.code(T::RT_hasConceptMod, {"121049", "DCM", "Language of Content Item and Descendants"},
         {"en-US", "RFC5646", "English (United States)"});
  w.code(T::RT_hasObsContext, {"121005", "DCM", "Observer Type"}, {"121007", "DCM", "Device"});
  w.uid(T::RT_hasObsContext, {"121012", "DCM", "Device Observer UID"}, new_uid());
  w.text(T::RT_hasObsContext, {"121013", "DCM", "Device Observer Name"}, "lunakit");
  w.text(T::RT_hasObsContext, {"121015", "DCM", "Device Observer Model Name"}, std::string("lunakit ") + version());
  w.code(T::RT_hasConceptMod, {"121058", "DCM", "Procedure reported"}, {"25045-6", "LN", "CT unspecified body region"});
  w.container(T::RT_contains, {"126010", "DCM", "Imaging Measurements"}, nullptr);
  w.enter();
  int k = 0;
  for (const Finding& f : findings)
    finding_group(w, ++k, f, document.series_uid, source.frame_uid, document.model_sha256);
  if (findings.empty()) {  // TID 1500 needs a group: an empty one says "analyzed, nothing found"
    w.container(T::RT_contains, {"125007", "DCM", "Measurement Group"}, "1501");
    w.enter();
    tracking(w, "no findings");
    algorithm(w, document.model_sha256);
    w.leave();
  }
  w.leave();
  ok(sr.completeDocument(), "completion flag");
  ok(sr.setPreliminaryFlag(T::PF_Preliminary), "preliminary flag");

  DcmFileFormat file;
  ok(sr.write(*file.getDataset()), "dataset");
  DcmDataset& out = *file.getDataset();
  // The source's character set, as highdicom takes it (none when the source has none).
  delete out.remove(DCM_SpecificCharacterSet);
  copy_element(first, out, DCM_SpecificCharacterSet);
  for (const DcmTagKey& tag : kPatientAndStudy) copy_element(first, out, tag);
  return part10_bytes(file);
}

void write_findings_sr(const std::string& path, const std::vector<std::string>& source_files,
                       const FindingsDocument& document, const std::vector<Finding>& findings) {
  write_files_atomically({{path, findings_sr(source_files, document, findings)}});
}

}  // namespace lunakit
