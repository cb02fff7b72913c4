"""lunakit's models: the nodule / malignancy classifier, the segmentation U-Net, checkpoints."""

from lunakit.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # after the models
from lunakit.models.classifier import LunaModel, malignancy_from_classifier
from lunakit.models.unet import UNet, UNetWrapper

__all__ = [
    "CheckpointError",
    "LunaModel",
    "UNet",
    "UNetWrapper",
    "load_checkpoint",
    "malignancy_from_classifier",
    "save_checkpoint",
]
