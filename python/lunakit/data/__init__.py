"""Training data: candidate crops, segmentation slice stacks, batch augmentation.

Datasets read the volumes of `lunakit.io.cache` (int16 memory maps opened lazily per worker)
and cut crops with `lunakit.pipeline.ops.extract_crops`; see each module's docstring for the items
they return.
"""

from lunakit.data.augment import (
    AUGMENTATION_NAMES,
    AugmentConfig,
    AugmentError,
    affine_matrices,
    apply_affine,
    augment_batch,
    parse_augmentations,
    random_affine_matrices,
)
from lunakit.data.classification import (
    ClassificationDataset,
    MalignancyDataset,
    is_malignant,
    is_nodule,
    train_val_series,
)
from lunakit.data.loader import batch_loader
from lunakit.data.segmentation import (
    PositiveMask,
    SegmentationTrainDataset,
    SegmentationValDataset,
    build_positive_mask,
    positive_mask,
    slice_stack,
)
from lunakit.data.volumes import DataError, VolumeSource

__all__ = [
    "AUGMENTATION_NAMES",
    "AugmentConfig",
    "AugmentError",
    "ClassificationDataset",
    "DataError",
    "MalignancyDataset",
    "PositiveMask",
    "SegmentationTrainDataset",
    "SegmentationValDataset",
    "VolumeSource",
    "affine_matrices",
    "apply_affine",
    "augment_batch",
    "batch_loader",
    "build_positive_mask",
    "is_malignant",
    "is_nodule",
    "parse_augmentations",
    "positive_mask",
    "random_affine_matrices",
    "slice_stack",
    "train_val_series",
]
