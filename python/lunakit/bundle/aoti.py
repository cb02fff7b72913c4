"""AOTInductor bundles: each model exported with torch.export and compiled ahead of time.

TorchScript is deprecated upstream; `lunakit export --format aoti` writes the same bundle as the
TorchScript export (lunakit.bundle: manifest.json with the format version, versions, pipeline
options and each file's sha256) plus `"model_format": "aoti"`, with one AOTInductor package
`<kind>.pt2` per model instead of `<kind>.pt`:

  seg       input [batch, 7, height, width] float32 (clipped HU) -> probability [batch, 1, height, width]
  cls, mal  input [batch, 1, 32, 48, 48] float32 (clipped HU) -> (logits, probability) [batch, 2] each

The batch axis is dynamic for every model, the U-Net's height and width too (any slice size, as the
TorchScript model: it pads to a multiple of 2**(depth - 1) and crops back). The packages hold compiled
CPU code: they load only on the CPU, with torch's own version (the manifest records it), in Python
through `torch._inductor.aoti_load_package` (lunakit.bundle.load_bundle) and in C++ through
`torch::inductor::AOTIModelPackageLoader` (lunakit::Bundle::load). Compiling needs a C++ compiler
and takes about a minute per model on two cores.

A compiled package does not check its input's shape (a wrong channel count runs on garbage), so
each package carries its input shape in its metadata (INPUT_SHAPE_KEY: "-1,7,-1,-1", -1 for a
dynamic axis) and both loaders check every input against it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from lunakit.bundle.manifest import (
    FORMAT,
    FORMAT_VERSION,
    BundleError,
    check_export_request,
    manifest_header,
    model_entry,
    write_bundle,
)
from lunakit.errors import first_line
from lunakit.models.inputs import example_input
from lunakit.pipeline.options import AnalysisOptions

MODEL_FORMAT = "aoti"
DEVICE = "cpu"  # what the packages are compiled for
INPUT_SHAPE_KEY = "lunakit.input_shape"  # package metadata: the input's sizes, -1 where dynamic


def _inductor() -> Any:
    """torch._inductor with its AOT entry points, or a BundleError saying this torch has none."""
    try:
        import torch._inductor as inductor
    except Exception as exc:  # a torch built without inductor
        raise BundleError(
            f"export --format aoti: torch {torch.__version__} has no AOTInductor ({first_line(exc)})"
        ) from None
    if not (hasattr(inductor, "aoti_compile_and_package") and hasattr(inductor, "aoti_load_package")):
        raise BundleError(
            f"export --format aoti: torch {torch.__version__} has no AOTInductor packaging (torch >= 2.6 needed)"
        )
    return inductor


def _require_compiler() -> None:
    """Fail before the slow part when inductor finds no C++ compiler."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except ImportError:
        return  # the compile itself will tell
    except Exception as exc:
        raise BundleError(
            f"export --format aoti: AOTInductor needs a C++ compiler (g++ or clang++, or set CXX): {first_line(exc)}"
        ) from None


def _dynamic_axes(kind: str) -> tuple[int, ...]:
    return (0, 2, 3) if kind == "seg" else (0,)


def input_shape(model: torch.nn.Module, kind: str) -> list[int]:
    """The model's input sizes as the package metadata records them: -1 for a dynamic axis."""
    shape = list(example_input(model, kind).shape)
    return [-1 if axis in _dynamic_axes(kind) else size for axis, size in enumerate(shape)]


def export_program(model: torch.nn.Module, kind: str) -> torch.export.ExportedProgram:
    """torch.export of one eager model (eval mode) with a dynamic batch (and H, W for seg)."""
    dynamic = ({axis: torch.export.Dim.DYNAMIC for axis in _dynamic_axes(kind)},)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model.eval(), (example_input(model, kind),), dynamic_shapes=dynamic)
    except Exception as exc:
        raise BundleError(
            f"export --format aoti: torch.export of the {kind} model failed ({first_line(exc)})"
        ) from None


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """No warnings, no torch log lines below ERROR and no compiler chatter on stdout while
    AOTInductor compiles or loads: a user sees lunakit's one line, or nothing (issue #17)."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def compile_package(program: torch.export.ExportedProgram, path: Path, kind: str, shape: list[int]) -> Path:
    """AOTInductor-compile an exported program into the package `path` (<kind>.pt2), with the
    input `shape` (-1 = dynamic) in its metadata."""
    inductor = _inductor()
    try:
        with quiet_torch():
            written = inductor.aoti_compile_and_package(
                program,
                package_path=str(path),
                inductor_configs={"aot_inductor.metadata": {INPUT_SHAPE_KEY: ",".join(map(str, shape))}},
            )
    except Exception as exc:
        raise BundleError(f"{path}: AOTInductor compile of the {kind} model failed ({first_line(exc)})") from None
    if Path(written) != path or not path.is_file():
        raise BundleError(f"{path}: AOTInductor wrote no package there")
    return path


def export_aoti_bundle(
    out: str | os.PathLike, checkpoints: dict[str, str | os.PathLike], options: AnalysisOptions = AnalysisOptions()
) -> Path:
    """Export and compile each checkpoint's model and write the AOTInductor bundle to `out`.

    `checkpoints` maps kind ("seg", "cls", optional "mal") to a lunakit checkpoint. Nothing is
    written when torch lacks AOTInductor, no compiler is found or a compile fails.
    """
    from lunakit.models.checkpoint import load_checkpoint

    out = check_export_request(out, checkpoints)
    _inductor()
    _require_compiler()
    programs, shapes = {}, {}
    for kind, path in checkpoints.items():
        model = load_checkpoint(path, kind=kind)[0]
        programs[kind], shapes[kind] = export_program(model, kind), input_shape(model, kind)

    def write_models(staging: Path) -> dict[str, dict[str, Any]]:
        models = {}
        for kind, program in programs.items():
            compile_package(program, staging / f"{kind}.pt2", kind, shapes[kind])
            models[kind] = model_entry(
                staging, f"{kind}.pt2", checkpoints[kind], device=DEVICE, input_shape=shapes[kind]
            )
        return models

    header = manifest_header(FORMAT, FORMAT_VERSION, model_format=MODEL_FORMAT)
    return write_bundle(out, header, options, write_models)


class AotiModel:
    """A loaded package, called like the TorchScript model, refusing inputs of another shape."""

    def __init__(self, path: Path, inductor: Any) -> None:
        self.path = path
        with quiet_torch():
            self.package = inductor.aoti_load_package(str(path))
        text = self.package.get_metadata().get(INPUT_SHAPE_KEY, "")
        try:
            self.input_shape = [int(v) for v in text.split(",")]
        except ValueError:
            raise BundleError(f"{path}: the package records no valid {INPUT_SHAPE_KEY} ({text!r})") from None

    def __call__(self, x: torch.Tensor) -> Any:
        if x.dim() != len(self.input_shape) or any(
            want not in (-1, got) for want, got in zip(self.input_shape, x.shape)
        ):
            shown = ", ".join("*" if v < 0 else str(v) for v in self.input_shape)
            raise RuntimeError(
                f"{self.path.name}: input of shape {list(x.shape)} does not match the package's [{shown}]"
            )
        return self.package(x.contiguous())


def load_aoti_models(
    bundle: Path, manifest: dict[str, Any], device: str | torch.device
) -> dict[str, Callable[[torch.Tensor], Any]]:
    """The checked bundle's packages as callables (tensor in; a tensor, or (logits, probability), out)."""
    if torch.device(device).type != DEVICE:
        raise BundleError(
            f"{bundle}: an AOTInductor bundle holds {DEVICE} code; it cannot run on {device} "
            f"(use --device cpu, or a TorchScript bundle)"
        )
    inductor = _inductor()
    loaded = {}
    for kind, entry in manifest["models"].items():
        path = bundle / entry["file"]
        try:
            loaded[kind] = AotiModel(path, inductor)
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(f"{path}: not a loadable AOTInductor package ({first_line(exc)})") from None
    return loaded
