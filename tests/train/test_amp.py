"""--amp on the CPU: the models run in bfloat16, everything around them in float32.

The augmentation must not run under autocast: its affine grids are batched matrix products,
which autocast would round to bfloat16 (about 3 significant digits), moving every sampled
voxel. So the inputs a model receives with --amp are compared, bit for bit, with those it
receives without.
"""

from __future__ import annotations

import pytest
import torch
from test_train import _config, _metrics, tiny  # noqa: F401  (tiny is a fixture)
from torch import nn

from lunakit.models import LunaModel
from lunakit.models.unet import UNetWrapper
from lunakit.train.classify import ClassifyTask
from lunakit.train.config import TrainConfig
from lunakit.train.distributed import DistContext
from lunakit.train.loop import train
from lunakit.train.segment import SegmentTask

SPATIAL_AND_INTENSITY = "flip,offset,scale,rotate,zoom,blur,contrast,shift,noise"


def _classify_case() -> tuple[str, type, nn.Module, tuple]:
    crops = torch.randn(4, 1, 32, 48, 48, generator=torch.Generator().manual_seed(1)) * 300 - 500
    return "classify", ClassifyTask, LunaModel(), (crops, torch.tensor([0, 1, 0, 1]))


def _segment_case() -> tuple[str, type, nn.Module, tuple]:
    stacks = torch.randn(4, 7, 32, 32, generator=torch.Generator().manual_seed(1)) * 300 - 500
    labels = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    labels[:, :, 10:20, 12:22] = True
    unet = UNetWrapper(in_channels=7, n_classes=1, depth=3, wf=4, padding=True, batch_norm=True)
    return "segment", SegmentTask, unet, (stacks, labels, ["a"] * 4, torch.arange(4))


def _step(case, amp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.dtype, torch.dtype]:
    """One train_step from the same weights and random numbers: (the input the model received,
    the loss, the first convolution's output dtype, the dtype of the outputs the loss read)."""
    torch.manual_seed(0)
    name, task_class, model, batch = case()
    config = TrainConfig(task=name, data="d", cache="c", out="o", amp=amp, augment=SPATIAL_AND_INTENSITY)
    task = task_class(config, DistContext())
    seen: list[torch.Tensor] = []
    conv_dtypes: list[torch.dtype] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    conv = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    conv.register_forward_hook(lambda m, args, out: conv_dtypes.append(out.dtype))
    loss, outputs = task.train_step(model, batch, torch.Generator().manual_seed(7))
    probs = outputs[1] if name == "classify" else outputs[2]
    return seen[0], loss, conv_dtypes[0], probs.dtype


@pytest.mark.parametrize("case", [_classify_case, _segment_case], ids=["classify", "segment"])
def test_amp_runs_the_model_in_bfloat16_and_augments_in_float32(case):
    inputs32, loss32, conv32, probs32 = _step(case, amp=False)
    inputs16, loss16, conv16, probs16 = _step(case, amp=True)
    assert (conv32, conv16) == (torch.float32, torch.bfloat16)  # amp reached the model
    assert torch.equal(inputs16, inputs32)  # the augmented batch is the float32 one, bit for bit
    assert inputs16.dtype == torch.float32
    assert probs16 == probs32 == torch.float32  # metrics read float32 outputs
    assert loss16.dtype == torch.float32
    assert loss16.item() != loss32.item()  # computed at the lower precision...
    assert loss16.item() == pytest.approx(loss32.item(), rel=0.05)  # ...and close to float32's


def test_amp_training_run_tracks_float32_and_records_the_option(tiny, tmp_path):  # noqa: F811
    train(_config(tiny, tmp_path / "fp32", epochs=2))
    train(_config(tiny, tmp_path / "amp", epochs=2, amp=True))
    m32, m16 = _metrics(tmp_path / "fp32"), _metrics(tmp_path / "amp")
    assert len(m16) == len(m32) == 2
    for a, b in zip(m16, m32):  # the same batches, so losses within bfloat16's rounding of each other
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=0.1)
        assert a["train"]["loss"] != b["train"]["loss"]
    state = torch.load(tmp_path / "amp" / "state.pt", weights_only=True)
    assert state["config"]["amp"] is True  # a resume runs at the same precision
