"""Scoring nodule detections: the LUNA16 FROC / CPM (froc, tables, plot), the book's
classification confusion (confusion), and analyzing plus scoring a dataset split (validate).
docs/evaluation.md.
"""

from __future__ import annotations

from lunakit.evaluation.confusion import (
    CONFUSION_COLUMNS,
    CONFUSION_ROWS,
    MATCH_DIAMETER_FRACTION,
    classification_confusion,
)
from lunakit.evaluation.froc import (
    DEFAULT_DIAMETER_MM,
    FP_RATES,
    MAX_MARKS_PER_SCAN,
    FrocResult,
    bootstrap_cpm,
    froc,
    froc_with_interval,
    sensitivity_at,
)
from lunakit.evaluation.plot import check_plot_path, plot_froc, require_matplotlib
from lunakit.evaluation.tables import (
    AnnotationTable,
    CandidateTable,
    read_annotations_table,
    read_candidates_table,
    read_series_list,
)

__all__ = [
    "CONFUSION_COLUMNS",
    "CONFUSION_ROWS",
    "DEFAULT_DIAMETER_MM",
    "FP_RATES",
    "MATCH_DIAMETER_FRACTION",
    "MAX_MARKS_PER_SCAN",
    "AnnotationTable",
    "CandidateTable",
    "FrocResult",
    "bootstrap_cpm",
    "check_plot_path",
    "classification_confusion",
    "froc",
    "froc_with_interval",
    "plot_froc",
    "read_annotations_table",
    "read_candidates_table",
    "read_series_list",
    "require_matplotlib",
    "sensitivity_at",
]
