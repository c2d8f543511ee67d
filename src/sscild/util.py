"""Small helpers shared by every stage: atomic writes, JSON, progress bars, device choice."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the final suffix(es) (e.g. ``.nii.gz``) so writers that choose the
    format from the name work. On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); outputs are ordinary files, readable like any other
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        v = float(obj)
        return None if not np.isfinite(v) else v
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically. NaN/inf become null."""
    text = json.dumps(_clean_nan(data), indent=2, default=_json_default, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def _clean_nan(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_nan(v) for v in obj]
    return obj


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def progress(iterable: Iterable, description: str = "", total: int | None = None,
             quiet: bool = False) -> Iterable:
    """Wrap ``iterable`` in a tqdm progress bar unless ``quiet`` (or SSCILD_QUIET=1)."""
    if quiet or os.environ.get("SSCILD_QUIET") == "1":
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, total=total, leave=False)


def pick_device(device: str = "cpu") -> str:
    """Return a torch device string; ``"auto"`` picks cuda when available."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device


def draw_contour(ax, mask, spacing_yx: tuple[float, float] = (1.0, 1.0), **kwargs) -> None:
    """Draw the outline of a 2D mask on an axis showing the image with ``extent=(0, W*sx, H*sy, 0)``.

    Pixel centres are passed explicitly, so the outline sits on the image whatever the axis direction.
    """
    m = np.asarray(mask, float)
    if not m.any() or m.all():
        return
    sy, sx = spacing_yx
    ys = (np.arange(m.shape[0]) + 0.5) * sy
    xs = (np.arange(m.shape[1]) + 0.5) * sx
    ax.contour(xs, ys, m, levels=[0.5], **kwargs)


def finite_float(v: Any) -> float | None:
    """``v`` as a float when it is a finite number, else None (blank cells, text, NaN, inf).

    >>> finite_float("3.5"), finite_float(""), finite_float(float("nan"))
    (3.5, None, None)
    """
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None
