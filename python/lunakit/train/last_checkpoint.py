"""The model of a run's last finished epoch (state.pt) as a lunakit checkpoint.

best.pt keeps the best validation by the task's metric; sometimes the last epoch is wanted
instead (e.g. a segmenter whose recall saturated in the first epoch while its precision kept
improving). Usage: python -m lunakit.train.last_checkpoint RUN_DIR OUT.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

from lunakit.errors import LunakitError
from lunakit.models.checkpoint import KIND_MODEL_CLASS, build_model, read_torch_file, save_checkpoint

TASK_KIND = {"classify": "cls", "segment": "seg", "malignancy": "mal"}


def last_checkpoint(run_dir: str | Path, out: str | Path) -> Path:
    state_path = Path(run_dir) / "state.pt"
    state = read_torch_file(state_path)
    try:
        config, epoch = state["config"], state["epoch"]
        kind = TASK_KIND[config["task"]]
        model = build_model(KIND_MODEL_CLASS[kind], state["model_args"], state["model"], str(state_path))
    except (KeyError, TypeError) as exc:
        raise LunakitError(f"{state_path}: not a lunakit training state ({exc})") from None
    return save_checkpoint(out, model, kind, config=config, extra={"epoch": epoch, "from": "state.pt"})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lunakit.train.last_checkpoint RUN_DIR OUT.pt", file=sys.stderr)
        return 2
    try:
        out = last_checkpoint(*args)
    except LunakitError as exc:
        print(f"lunakit: error: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: last epoch of {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
