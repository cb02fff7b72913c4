"""lunakit: lung-nodule CT analysis. Python trains and evaluates; C++ (LibTorch) infers."""

from importlib.metadata import PackageNotFoundError, version

from lunakit.errors import LunakitError

try:
    __version__ = version("lunakit")  # written once, in pyproject.toml
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["LunakitError", "__version__"]
