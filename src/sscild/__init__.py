"""sscild: automatic, explainable CT measurements of interstitial lung disease in systemic sclerosis.

Research software, not a medical device.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("sscild")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
