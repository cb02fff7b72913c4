"""--ema: the weight average, by hand on a toy model and in a real (tiny) training run."""

from __future__ import annotations

import pytest
import torch
from test_train import _config, _metrics, _state_hash, tiny  # noqa: F401  (tiny is a fixture)
from torch import nn

from lunakit.cli import main as cli_main
from lunakit.models.checkpoint import load_checkpoint
from lunakit.train.average import WeightAverage
from lunakit.train.loop import train


def test_the_average_follows_the_hand_computed_recurrence():
    """d_t = min(decay, (1 + t) / (10 + t)); average <- d_t * average + (1 - d_t) * weights."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    average = WeightAverage(model, decay=0.15)
    for value, mean in ((1.0, 2.0), (3.0, 4.0)):
        with torch.no_grad():
            model[0].weight.fill_(value)
        model[1].running_mean.fill_(mean)
        model[1].num_batches_tracked.fill_(int(value))
        average.update(model)
    # step 0: d = min(0.15, 1/10) = 0.1 -> 0.9 * 1 = 0.9; step 1: d = min(0.15, 2/11) = 0.15 -> 0.15 * 0.9 + 0.85 * 3
    assert average.model[0].weight.item() == pytest.approx(0.15 * 0.9 + 0.85 * 3.0)
    # running mean starts at BatchNorm's 0: 0.9 * 2 = 1.8, then 0.15 * 1.8 + 0.85 * 4
    assert average.model[1].running_mean.item() == pytest.approx(0.15 * 1.8 + 0.85 * 4.0)
    assert average.model[1].num_batches_tracked.item() == 3  # integers are copied, not averaged
    assert model[0].weight.item() == 3.0  # the trained model is left alone
    assert not any(p.requires_grad for p in average.model.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


def test_ema_run_saves_the_average_and_trains_the_same_raw_model(tiny, tmp_path):  # noqa: F811
    # validated at the last epoch only, so best.pt is that epoch's average
    plain = train(_config(tiny, tmp_path / "plain", epochs=2, val_every=2), progress=False)
    averaged = train(_config(tiny, tmp_path / "ema", epochs=2, val_every=2, ema=0.9), progress=False)
    state = torch.load(tmp_path / "ema" / "state.pt", weights_only=True)
    # the optimizer's path is the same with or without the average
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(state["model"][name], tensor), name
    assert state["average"]["steps"] == 2 * 2  # epoch_size 16 / batch 8, two epochs
    assert _state_hash(averaged.model) != _state_hash(plain.model)
    best, meta = load_checkpoint(tmp_path / "ema" / "best.pt")
    assert meta["config"]["ema"] == 0.9 and meta["extra"]["epoch"] == 2
    assert _state_hash(best) == _state_hash(averaged.model)
    # last-checkpoint gives the average too
    assert cli_main(["last-checkpoint", str(tmp_path / "ema"), str(tmp_path / "last.pt")]) == 0
    last, _ = load_checkpoint(tmp_path / "last.pt")
    assert _state_hash(last) == _state_hash(averaged.model)
    for name, tensor in state["average"]["model"].items():
        assert torch.equal(last.state_dict()[name], tensor), name


def test_ema_resume_reproduces_the_uninterrupted_run(tiny, tmp_path):  # noqa: F811
    kw = dict(epochs=2, ema=0.9, augment="flip,noise")
    train(_config(tiny, tmp_path / "straight", **kw), progress=False)
    train(_config(tiny, tmp_path / "resumed", **{**kw, "epochs": 1}), progress=False)
    assert cli_main(["train", "classify", "--resume", str(tmp_path / "resumed"), "--epochs", "2", "--no-progress"]) == 0
    assert _metrics(tmp_path / "resumed") == _metrics(tmp_path / "straight")
    states = [torch.load(tmp_path / run / "state.pt", weights_only=True)["average"] for run in ("straight", "resumed")]
    assert states[0]["steps"] == states[1]["steps"]
    for name, tensor in states[0]["model"].items():
        assert torch.equal(states[1]["model"][name], tensor), name


@pytest.mark.parametrize("value", ["1", "-0.1", "nan"])
def test_bad_ema_is_one_line_exit_2(tiny, tmp_path, capsys, value):  # noqa: F811
    out = tmp_path / "run"
    argv = ["train", "classify", "--data", str(tiny["data"]), "--cache", str(tiny["cache"]), "--out", str(out)]
    assert cli_main([*argv, "--ema", value, "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lunakit: error:")]
    assert len(errors) == 1 and "--ema" in errors[0]
    assert not out.exists()
