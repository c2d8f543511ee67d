"""sscild: automatic, explainable CT measurements of interstitial lung disease in systemic sclerosis.

Research software, not a medical device.

The public API is importable from here; each name is loaded on first use, so ``import sscild`` stays fast:

>>> import sscild
>>> from sscild import load_ct, analyze, write_outputs, AnalysisSettings
>>> sorted(sscild.__all__)[:4]
['Analysis', 'AnalysisSettings', 'CTScan', 'DensityMetrics']

One scan from the file to the output folder::

    scan = load_ct("chest_ct/")                      # DICOM folder, .nii.gz, .mha or .nrrd
    a = analyze(scan, AnalysisSettings(heatmaps=True))
    print(a.volumes_ml["total"], a.scores.goh_extent if a.scores else None)
    write_outputs(a, scan, "results/")               # lungs.nii.gz, levels.json, ..., report.html

The stages alone, on a synthetic scan with known truth:

>>> from sscild import segment_lungs, find_levels, density_metrics
>>> from sscild.phantom import make_phantom
>>> scan, truth = make_phantom(0, extent=10, shape=(60, 96, 96), spacing=(4.0, 3.6, 3.6))
>>> lungs = segment_lungs(scan)
>>> levels = find_levels(scan, lungs)
>>> abs(levels.z_mm["L2"] - truth.levels_z["L2"]) < 10
True
>>> round(density_metrics(scan, lungs).regions["whole"]["HAA_pct"]) > 0
True
"""
from __future__ import annotations

TYPE_CHECKING = False            # typing.TYPE_CHECKING without importing typing (it is most of the import time)

#: Module -> the public names it defines; each module is imported when one of its names is first used.
_MODULES = {
    "io": ("load_ct", "save_like"),
    "scan": ("CTScan",),
    "anatomy": ("segment_lungs", "Lungs"),
    "levels": ("find_levels", "GohLevels"),
    "density": ("density_metrics", "DensityMetrics"),
    "pipeline": ("analyze",),
    "outputs": ("write_outputs", "WrittenOutputs"),
    "settings": ("AnalysisSettings",),
    "modelset": ("ModelSet",),
    "results": ("Analysis", "LevelScores", "LevelScore", "LesionMaps", "HeatMaps"),
    "errors": ("SscildError",),
}
#: Public name -> its module.
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from typing import Any

    from .anatomy import Lungs, segment_lungs
    from .density import DensityMetrics, density_metrics
    from .errors import SscildError
    from .io import load_ct, save_like
    from .levels import GohLevels, find_levels
    from .modelset import ModelSet
    from .outputs import WrittenOutputs, write_outputs
    from .pipeline import analyze
    from .results import Analysis, HeatMaps, LesionMaps, LevelScore, LevelScores
    from .scan import CTScan
    from .settings import AnalysisSettings


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sscild")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0.0.0+local"


def __getattr__(name: str) -> Any:
    if name == "__version__":        # importlib.metadata costs more than the rest of `import sscild`
        globals()["__version__"] = _installed_version()
        return globals()["__version__"]
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sscild' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
