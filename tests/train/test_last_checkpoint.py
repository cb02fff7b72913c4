"""A run's last epoch (state.pt) as a checkpoint: same weights, right kind, clear errors."""

from __future__ import annotations

import torch

from lunakit.cli import main as lunakit_main
from lunakit.models import LunaModel
from lunakit.models.checkpoint import load_checkpoint


def test_state_becomes_a_loadable_checkpoint(tmp_path, capsys):
    torch.manual_seed(3)
    model = LunaModel()
    state = {"config": {"task": "malignancy"}, "epoch": 4, "model_args": model.init_args(), "model": model.state_dict()}
    torch.save(state, tmp_path / "state.pt")
    assert lunakit_main(["last-checkpoint", str(tmp_path), str(tmp_path / "last.pt")]) == 0
    loaded, meta = load_checkpoint(tmp_path / "last.pt", kind="mal")
    assert meta["extra"]["epoch"] == 4
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_not_a_state_file(tmp_path, capsys):
    torch.save({"something": 1}, tmp_path / "state.pt")
    assert lunakit_main(["last-checkpoint", str(tmp_path), str(tmp_path / "last.pt")]) == 2
    assert "not a lunakit training state" in capsys.readouterr().err
    assert not (tmp_path / "last.pt").exists()
    assert lunakit_main(["last-checkpoint", str(tmp_path / "missing"), str(tmp_path / "last.pt")]) == 2
