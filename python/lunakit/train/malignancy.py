"""`lunakit train malignancy`: benign vs malignant nodules, usually fine-tuned from the classifier.

As the book does it: start from a trained nodule classifier (`--finetune cls.pt`), give
it a new head and train only the last `--finetune-depth` blocks (1: the head, 2: head and
block4), SGD at lr 0.003. Training crops are the annotated nodules (balanced malignant :
benign = 1 : `balanced`; with --include-non-nodules non-nodule candidates join the benign
side, as the book's malignancy dataset allows). Validation is the nodules of the
validation series; best.pt is kept by ROC AUC.
"""

from __future__ import annotations

from pathlib import Path

from lunakit.data import MalignancyDataset
from lunakit.train.classify import ClassifyTask


class MalignancyTask(ClassifyTask):
    kind = "mal"
    finetune_kinds = ("cls", "mal")
    title = "malignancy classifier"

    def make_dataset(self, cache: Path, candidates: list, series: list[str], training: bool) -> MalignancyDataset:
        cfg = self.config
        if training:
            return MalignancyDataset(
                cache,
                candidates,
                series,
                include_non_nodules=cfg.include_non_nodules,
                ratio=cfg.balanced,
                epoch_size=cfg.epoch_size,
                seed=cfg.seed,
                shuffle=True,
            )
        return MalignancyDataset(cache, candidates, series, include_non_nodules=False, ratio=None, shuffle=False)

    def default_finetune_depth(self) -> int:
        return 1  # the book's default: only the new head trains
