"""lunakit: lung-nodule CT analysis. Python trains and evaluates; C++ (LibTorch) infers."""

from lunakit.errors import LunakitError

__version__ = "0.1.0"
__all__ = ["LunakitError", "__version__"]
