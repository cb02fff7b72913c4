// The lunakit op schemas, declared once; backends implement them in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY(lunakit, m) {
  m.def("version() -> str");

  // Crops of size (I, R, C) around each center_irc, HU clipped, as float32 [N, 1, *size].
  // start = round(center - size / 2), half to even; mode "shift" moves a crop inside the
  // volume, "pad" keeps it centered and writes `fill` outside. extract_crops_into fills a
  // caller's buffer instead (returning nothing, as torch.library wants of mutating ops; its mode
  // is named crop_mode because torch.compile's auto_functionalize takes a `mode` argument itself).
  m.def(
      "extract_crops(Tensor volume, Tensor centers_irc, int[3] size=[32, 48, 48], str mode=\"shift\", "
      "float fill=-1000., float clip_min=-1000., float clip_max=1000.) -> Tensor");
  m.def(
      "extract_crops_into(Tensor volume, Tensor centers_irc, int[3] size=[32, 48, 48], str crop_mode=\"shift\", "
      "float fill=-1000., float clip_min=-1000., float clip_max=1000., *, Tensor(a!) out) -> ()");

  // One binary erosion with the 6-connected cross; outside the volume is background.
  m.def("binary_erode(Tensor mask) -> Tensor");

  // Connected components (6, 18 or 26), int32 labels 1..count numbered as scipy.ndimage.label.
  // count is a SymInt so that fake tensors (torch.compile, export) can leave it data-dependent.
  m.def("label_components(Tensor mask, int connectivity=6) -> (Tensor labels, SymInt count)");

  // Per component 1..count: voxel count, inclusive bbox, (weighted) center of mass, weight sum.
  m.def(
      "component_stats(Tensor labels, int count, Tensor? weights=None) -> (Tensor voxel_count, "
      "Tensor bbox_min, Tensor bbox_max, Tensor center_irc, Tensor weight_sum)");

  // Per component 1..count: its voxels of greatest depth, as a bool mask of labels' shape. Depth
  // is the taxicab distance to the nearest background: in-plane in pixels, or with spacing
  // (slice, row, column mm) in 3D and mm.
  m.def("component_cores(Tensor labels, int count, float[]? spacing=None) -> Tensor");

  // The lung field of a CT (bool [I, R, C]): air below -400 HU in 6-connected components that
  // reach no slice's edge, hold at least 5% of the largest air component and average above
  // -930 HU (not bowel gas, not the trachea), each slice's holes (vessels, nodules) filled.
  m.def("lung_field(Tensor hu) -> Tensor");

  // For each center (irc): does a voxel of mask lie within margin_mm (Euclidean, at spacing:
  // slice, row, column mm)? bool [K].
  m.def("near_mask(Tensor mask, Tensor centers_irc, float[] spacing, float margin_mm) -> Tensor");
}
