"""lunakit.models: shapes, TorchScript parity, any-size U-Net, book checkpoints, initialization."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lunakit.models import LunaModel, UNet, UNetWrapper, malignancy_from_classifier
from lunakit.models.init import fan_out_of

from helpers import require

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

BOOK_CLS = "book-models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state"
BOOK_SEG = "book-models/seg_2020-01-26_19.45.12_w4d3c1-bal_1_nodupe-label_pos-d1_fn8-adam.best.state"


@pytest.fixture(scope="module")
def luna_model() -> LunaModel:
    torch.manual_seed(0)
    return LunaModel().eval()


@pytest.fixture(scope="module")
def unet_wrapper() -> UNetWrapper:
    torch.manual_seed(0)
    model = UNetWrapper().eval()
    with torch.no_grad():  # running statistics of HU-like input, so the outputs are not all 0 or 1
        model.input_batchnorm.running_mean.fill_(-500.0)
        model.input_batchnorm.running_var.fill_(400.0**2)
    return model


def test_luna_model_shapes_and_softmax(luna_model):
    x = torch.randn(3, 1, 32, 48, 48)
    with torch.no_grad():
        logits, probs = luna_model(x)
    assert logits.shape == (3, 2) and probs.shape == (3, 2)
    torch.testing.assert_close(probs, torch.softmax(logits, dim=1))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))


def test_luna_model_parameter_names_and_sizes():
    shapes = {k: tuple(v.shape) for k, v in LunaModel().state_dict().items()}
    assert shapes["head_linear.weight"] == (2, 1152)  # 64 channels x (2 x 3 x 3) after four pools
    for n, width in enumerate((8, 16, 32, 64), start=1):
        assert shapes[f"block{n}.conv1.weight"] == (width, width // 2 if n > 1 else 1, 3, 3, 3)
        assert shapes[f"block{n}.conv2.weight"] == (width, width, 3, 3, 3)
        assert shapes[f"block{n}.conv2.bias"] == (width,)
    assert shapes["tail_batchnorm.running_var"] == (1,)


def test_luna_model_rejects_wrong_crop_size(luna_model):
    with pytest.raises(ValueError, match="32, 48, 48"):
        luna_model(torch.zeros(1, 1, 32, 48, 40))
    with pytest.raises(ValueError):
        luna_model(torch.zeros(1, 32, 48, 48))


def test_luna_model_script_parity(luna_model):
    scripted = torch.jit.script(luna_model)
    x = torch.randn(2, 1, 32, 48, 48) * 300.0 - 400.0
    with torch.no_grad():
        eager_logits, eager_probs = luna_model(x)
        script_logits, script_probs = scripted(x)
    torch.testing.assert_close(script_logits, eager_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(script_probs, eager_probs, atol=1e-6, rtol=0)


def test_unet_wrapper_parameter_names():
    keys = set(UNetWrapper().state_dict())
    for key in (
        "input_batchnorm.running_mean",
        "unet.down_path.0.block.0.weight",
        "unet.down_path.2.block.5.running_var",
        "unet.up_path.0.up.weight",
        "unet.up_path.1.conv_block.block.3.weight",
        "unet.last.bias",
    ):
        assert key in keys, key


@pytest.mark.parametrize("height, width", [(100, 77), (64, 64), (1, 3), (13, 128)])
def test_unet_wrapper_any_size(unet_wrapper, height, width):
    x = torch.randn(2, 7, height, width) * 300.0 - 500.0
    with torch.no_grad():
        prob = unet_wrapper(x)
    assert prob.shape == (2, 1, height, width)
    assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0


def test_unet_wrapper_pads_by_replicating_edges(unet_wrapper):
    """Reference: pad with numpy's 'edge' mode to a multiple of 4 by hand, run the bare network, crop."""
    height, width = 30, 21  # pads 2 rows (1 top, 1 bottom) and 3 columns (1 left, 2 right)
    x = torch.randn(1, 7, height, width) * 300.0 - 500.0
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 2)), mode="edge")
    with torch.no_grad():
        expected = torch.sigmoid(unet_wrapper.unet(unet_wrapper.input_batchnorm(torch.from_numpy(padded))))
        expected = expected[:, :, 1 : 1 + height, 1 : 1 + width]
        got = unet_wrapper(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_unet_wrapper_without_padding_is_plain_network(unet_wrapper):
    x = torch.randn(1, 7, 32, 44) * 300.0 - 500.0
    with torch.no_grad():
        expected = torch.sigmoid(unet_wrapper.unet(unet_wrapper.input_batchnorm(x)))
        torch.testing.assert_close(unet_wrapper(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("up_mode", ["upconv", "upsample"])
def test_unet_wrapper_script_parity(unet_wrapper, up_mode):
    model = unet_wrapper if up_mode == "upconv" else UNetWrapper(up_mode=up_mode).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 7, 100, 77) * 300.0 - 500.0
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_unet_pools_as_told(pool):
    """One level down: the bridge is the conv block's output, the next level sees it pooled 2x2."""
    torch.manual_seed(1)
    net = UNet(in_channels=2, n_classes=1, depth=2, wf=2, padding=True, pool=pool).eval()
    x = torch.randn(1, 2, 8, 6)
    seen = {}
    net.down_path[1].register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        net(x)
        top = net.down_path[0](x)  # (1, 4, 8, 6)
    blocks = top.reshape(1, 4, 4, 2, 3, 2).permute(0, 1, 2, 4, 3, 5).reshape(1, 4, 4, 3, 4)  # 2x2 blocks last
    expected = blocks.mean(-1) if pool == "avg" else blocks.amax(-1)
    torch.testing.assert_close(seen["x"], expected, atol=1e-6, rtol=0)
    scripted = torch.jit.script(UNetWrapper(pool=pool).eval())
    assert scripted.pool == pool and scripted.unet.pool == pool


def test_unet_valid_convolutions_shrink():
    """padding=False: each 3x3 conv loses 2 pixels (one level: two convs -> -4)."""
    net = UNet(in_channels=2, n_classes=3, depth=1, wf=2, padding=False)
    assert net(torch.zeros(1, 2, 10, 12)).shape == (1, 3, 6, 8)


def test_model_argument_errors():
    with pytest.raises(ValueError, match="up_mode"):
        UNetWrapper(up_mode="nearest")
    with pytest.raises(ValueError, match="padding"):
        UNetWrapper(padding=False)
    with pytest.raises(ValueError, match="pool must be one of avg, max, got 'median'"):
        UNetWrapper(pool="median")
    with pytest.raises(ValueError):
        UNetWrapper()(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="finetune_depth"):
        malignancy_from_classifier(LunaModel(), finetune_depth=0)


@torch.no_grad()
def test_init_statistics():
    torch.manual_seed(1)
    model = LunaModel()
    conv = model.block4.conv2  # 64 x 64 x 27 weights: enough for tight statistics
    fan_out = 64 * 27
    assert fan_out_of(conv.weight) == fan_out
    std = float(conv.weight.std())
    assert abs(std - math.sqrt(2.0 / fan_out)) < 0.03 * math.sqrt(2.0 / fan_out)
    assert abs(float(conv.weight.mean())) < 0.05 * std
    head = model.head_linear.weight  # fan_out 2 -> std 1
    assert abs(float(head.std()) - 1.0) < 0.05
    for layer in (model.block1.conv1, model.block4.conv2, model.head_linear):
        bound = 1.0 / math.sqrt(fan_out_of(layer.weight))
        assert float(layer.bias.abs().max()) <= bound
    bias = model.block4.conv2.bias  # 64 uniform draws: spread like U(-b, b), not collapsed to 0
    assert float(bias.std()) > 0.3 * (1.0 / math.sqrt(fan_out)) / math.sqrt(3.0)
    assert torch.equal(model.tail_batchnorm.weight, torch.ones(1))
    assert torch.equal(model.tail_batchnorm.bias, torch.zeros(1))
    unet = UNetWrapper()
    up = unet.unet.up_path[0].up.weight  # ConvTranspose2d [64, 32, 2, 2]: fan_out counted on dim 0
    assert abs(float(up.std()) - math.sqrt(2.0 / (64 * 4))) < 0.1 * math.sqrt(2.0 / (64 * 4))


def test_malignancy_from_classifier():
    torch.manual_seed(2)
    cls_model = LunaModel()
    mal, trainable = malignancy_from_classifier(cls_model, finetune_depth=1)
    assert trainable == ["head_linear.weight", "head_linear.bias"]
    assert [n for n, p in mal.named_parameters() if p.requires_grad] == trainable
    assert torch.equal(mal.block3.conv1.weight, cls_model.block3.conv1.weight)
    assert torch.equal(mal.tail_batchnorm.running_var, cls_model.tail_batchnorm.running_var)
    assert not torch.equal(mal.head_linear.weight, cls_model.head_linear.weight)  # fresh head, as the book does
    assert all(p.requires_grad for p in cls_model.parameters())  # the source model is untouched

    mal2, trainable2 = malignancy_from_classifier(cls_model, finetune_depth=2, reset_head=False)
    assert set(trainable2) == {f"block4.conv{k}.{w}" for k in (1, 2) for w in ("weight", "bias")} | set(trainable)
    assert torch.equal(mal2.head_linear.weight, cls_model.head_linear.weight)
    mal2.block4.conv1.weight.data.add_(1.0)  # a copy, not shared storage
    assert not torch.equal(mal2.block4.conv1.weight, cls_model.block4.conv1.weight)


def test_book_checkpoints_load_strict(test_data):
    for name, model in ((BOOK_CLS, LunaModel()), (BOOK_SEG, UNetWrapper())):
        payload = torch.load(require(test_data / name), map_location="cpu", weights_only=True)
        result = model.load_state_dict(payload["model_state"], strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert payload["model_name"] == type(model).__name__
