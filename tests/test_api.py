"""The public Python API: what `import sscild` offers, that it stays light, and every docstring example runs."""
from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sscild"


def _modules_with_examples() -> list[str]:
    """Modules whose docstrings hold examples (found by reading the files: nothing is imported to collect)."""
    names = []
    for f in sorted(SRC.rglob("*.py")):
        if ">>>" in f.read_text(encoding="utf-8"):
            parts = ("sscild",) + f.relative_to(SRC).with_suffix("").parts
            names.append(".".join(p for p in parts if p != "__init__"))
    return names


@pytest.mark.parametrize("module", _modules_with_examples())
def test_docstring_examples_run(module):
    """Every ``>>>`` example in the package is a doctest (numpy-style Examples sections included)."""
    import numpy as np

    m = importlib.import_module(module)
    saved = np.get_printoptions()
    np.set_printoptions(legacy="1.25")          # examples print numpy scalars as numbers (True, 0.5), not np.True_
    try:
        res = doctest.testmod(m, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    finally:
        np.set_printoptions(**saved)
    assert res.attempted > 0, f"{module}: no example found although the file holds '>>>'"
    assert res.failed == 0, f"{module}: {res.failed} of {res.attempted} examples failed (see the output above)"


def test_the_public_names_import_from_the_package():
    r = subprocess.run([sys.executable, "-c", "from sscild import load_ct, analyze, AnalysisSettings; "
                        "import sscild; print(sorted(sscild.__all__))"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names = set(eval(r.stdout))
    assert names >= {"load_ct", "save_like", "analyze", "write_outputs", "AnalysisSettings", "Analysis", "CTScan",
                     "segment_lungs", "find_levels", "density_metrics", "GohLevels", "Lungs", "DensityMetrics",
                     "LevelScores", "LesionMaps", "HeatMaps", "ModelSet", "__version__"}
    import sscild

    for n in sscild.__all__:
        assert getattr(sscild, n) is not None, n


def test_import_sscild_loads_nothing_heavy():
    """``import sscild`` defers every stage: numpy, SimpleITK, torch and matplotlib load on first use."""
    code = ("import sys, sscild; heavy = [m for m in ('numpy', 'SimpleITK', 'torch', 'matplotlib', 'scipy', "
            "'pandas') if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_package_is_typed():
    assert (SRC / "py.typed").exists()


def test_settings_are_strict_and_frozen():
    from dataclasses import FrozenInstanceError

    from sscild import AnalysisSettings
    from sscild.errors import ConfigError

    s = AnalysisSettings()
    with pytest.raises(FrozenInstanceError):
        s.heatmaps = True  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown analysis option.*stride_mm"):
        AnalysisSettings.from_mapping({"strid_mm": 5})
    with pytest.raises(ConfigError, match="patch_mm"):
        AnalysisSettings(patch_mm=-1)
    with pytest.raises(ConfigError, match="% predicted"):
        AnalysisSettings(fvc_pct=0.7)
    assert AnalysisSettings.from_mapping({"weights": "w"}).weights == Path("w")


def test_model_preload_is_what_get_returns_and_its_failure_is_raised_by_get():
    """ModelSet.preload loads in a background thread; get() hands out that very load (the loader runs once),
    raises a failed load's own error, and does not keep the failure (the next get() loads again)."""
    import threading

    from sscild.errors import ModelError
    from sscild.modelset import ModelSet

    calls = {"snet": [], "lesions": []}
    gate = threading.Event()

    def snet(directory, device="cpu"):
        calls["snet"].append(threading.current_thread().name)
        gate.wait(5)
        return "net", "cfg", {"name": "S-Net"}

    def lesions(directory, device="cpu"):
        calls["lesions"].append(threading.current_thread().name)
        if len(calls["lesions"]) == 1:
            raise ModelError("weights damaged")
        return "unet", "cfg", {"name": "lesion U-Net"}

    models = ModelSet(loaders={"snet": snet, "lesions": lesions})
    models.preload(["snet", "lesions"])
    assert len(models) == 0                         # still loading: nothing cached yet
    gate.set()
    m = models.get("snet")
    assert m.model == "net" and models.get("snet") is m
    assert len(calls["snet"]) == 1 and calls["snet"][0].startswith("sscild-preload")
    with pytest.raises(ModelError, match="weights damaged"):
        models.get("lesions")
    assert models.get("lesions").model == "unet" and len(calls["lesions"]) == 2
    models.preload(["snet"])                        # already loaded: nothing started
    assert len(calls["snet"]) == 1


def test_command_line_warnings_are_one_line_without_a_source_location(tmp_path):
    """A warning raised under `sscild` reaches the user as `warning: <message>`, not as Python's
    `<file>:<line>: <Category>: <message>` (markup in the message printed as it is)."""
    code = ("import sys, warnings, typer\n"
            "from sscild import cli\n"
            "@cli.app.command('warn-test')\n"
            "def _w():\n"
            "    warnings.warn('fine-tuning made [b]S-Net[/b] worse', UserWarning)\n"
            "sys.argv = ['sscild', 'warn-test']\n"
            "cli.main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["warning: fine-tuning made [b]S-Net[/b] worse"], r.stderr
