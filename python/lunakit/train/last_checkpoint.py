"""The model of a run's last finished epoch (state.pt) as a lunakit checkpoint.

best.pt keeps the best validation by the task's metric; sometimes the last epoch is wanted
instead (e.g. a segmenter whose recall saturated in the first epoch while its precision kept
improving). A run with a weight average (`--ema`) gives the average, as its best.pt does.
On the command line: `lunakit last-checkpoint RUN_DIR OUT.pt`.
"""

from __future__ import annotations

from pathlib import Path

from lunakit.errors import LunakitError
from lunakit.models.checkpoint import KIND_MODEL_CLASS, build_model, read_torch_file, save_checkpoint

TASK_KIND = {"classify": "cls", "segment": "seg", "malignancy": "mal"}


def last_checkpoint(run_dir: str | Path, out: str | Path) -> Path:
    """Write the model of `run_dir`/state.pt to `out` as a checkpoint of its task's kind."""
    state_path = Path(run_dir) / "state.pt"
    state = read_torch_file(state_path)
    try:
        config, epoch = state["config"], state["epoch"]
        kind = TASK_KIND[config["task"]]
        weights = state["average"]["model"] if state.get("average") else state["model"]
        model = build_model(KIND_MODEL_CLASS[kind], state["model_args"], weights, str(state_path))
    except (KeyError, TypeError) as exc:
        raise LunakitError(f"{state_path}: not a lunakit training state ({exc})") from None
    return save_checkpoint(out, model, kind, config=config, extra={"epoch": epoch, "from": "state.pt"})
