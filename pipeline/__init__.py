"""facekd: offline knowledge distillation for face recognition (library code)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facekd")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
