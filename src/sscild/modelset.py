"""The learned models an analysis uses, loaded on first use and kept by their owner.

A :class:`ModelSet` replaces a process-wide cache: whoever runs analyses owns one (a script, one per batch worker)
and passes it to :func:`sscild.analyze`; when it goes away, so do the models. Nothing is shared behind the caller's
back and a changed weights folder is read again by a new ``ModelSet``.

Examples
--------
>>> from sscild.modelset import ModelSet
>>> models = ModelSet()
>>> len(models), sorted(MODEL_NAMES)
(0, ['lesions', 'lnet', 'snet'])
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ModelError

#: The shipped models' folder (``snet/``, ``lnet/``, ``lesions/``).
DEFAULT_MODELS = Path(__file__).resolve().parent / "models"
#: Model name -> (module, loader function, name shown to users).
MODEL_NAMES: dict[str, tuple[str, str, str]] = {
    "lnet": ("sscild.scoring.lnet", "load_lnet", "L-Net"),
    "snet": ("sscild.scoring.snet", "load_snet", "S-Net"),
    "lesions": ("sscild.lesions", "load_unet", "lesion U-Net"),
}


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A network ready for inference, its config and its card; ``note`` says where it came from when that is
    not what was asked (a fallback to the shipped weights)."""

    name: str
    model: Any
    config: Any
    card: dict[str, Any]
    note: str = ""

    def summary(self) -> dict[str, Any]:
        """What ``analysis.json`` and the report say about the model (:func:`sscild.bundle.card_summary`: name,
        version, weights hash, training data, the held-out figures with their split), plus ``weights_sha256``
        and the card's ``training`` block (for the provenance and the DICOM SR)."""
        from .bundle import card_summary

        try:
            d = card_summary(self.card)
        except (KeyError, TypeError, AttributeError):      # a card without the schema (e.g. a test double)
            d = {"name": self.card.get("name", MODEL_NAMES[self.name][2])}
        sha = (self.card.get("weights") or {}).get("sha256") if isinstance(self.card.get("weights"), dict) else None
        d.update({"weights_sha256": sha, "training": self.card.get("training")})
        if self.note:
            d["note"] = self.note
        return d


class ModelSet:
    """Models loaded once per (name, weights folder, device) for the lifetime of this object.

    ``get(name, weights, device)`` loads ``name`` (``lnet``, ``snet``, ``lesions``) from ``weights/name`` when a
    weights folder is given and holds that subfolder (or is itself such a bundle), else the shipped model (with a
    note when a folder was given without it). Missing, corrupt or unfit weights raise
    :class:`~sscild.errors.ModelError`, every time they are asked for (a failure is not cached).
    """

    def __init__(self, loaders: dict[str, Callable[..., tuple]] | None = None) -> None:
        self._loaders = dict(loaders or {})
        self._cache: dict[tuple[str, str, str], LoadedModel] = {}
        self._pending: dict[tuple[str, str, str], Future] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def _loader(self, name: str) -> Callable[..., tuple]:
        if name in self._loaders:
            return self._loaders[name]
        if name not in MODEL_NAMES:
            raise ModelError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
        import importlib

        mod, fn, _ = MODEL_NAMES[name]
        return getattr(importlib.import_module(mod), fn)

    def get(self, name: str, weights: str | Path | None = None, device: str = "cpu") -> LoadedModel:
        """The model ``name``, loaded on first use (from :func:`sscild.bundle.resolve_weights`' folder), or
        when :meth:`preload` started it, once that load is done (its error, if any, is raised here)."""
        key, directory, note = self._key(name, weights, device)
        if key not in self._cache:
            pending = self._pending.pop(key, None)
            model, cfg, card = pending.result() if pending is not None else \
                self._loader(name)(directory, device=device)
            self._cache[key] = LoadedModel(name, model, cfg, dict(card or {}), note or "")
        return self._cache[key]

    @staticmethod
    def _key(name: str, weights: str | Path | None, device: str) -> tuple[tuple[str, str, str], Path, str | None]:
        """(cache key, weights folder, note) of a request (:func:`sscild.bundle.resolve_weights`)."""
        from .bundle import resolve_weights

        directory, note = resolve_weights(weights, name)
        return (name, str(directory), device), directory, note

    def preload(self, names: Iterable[str], weights: str | Path | None = None, device: str = "cpu") -> None:
        """Start loading ``names`` in one background thread, so that importing torch and MONAI (seconds, much
        of it outside the GIL) overlaps the caller's model-free work; :meth:`get` waits for the load. Names
        whose weights cannot be resolved are left for :meth:`get` to report."""
        todo = []
        for name in names:
            try:
                key, directory, _ = self._key(name, weights, device)
            except Exception:       # noqa: BLE001 - get() raises the same problem with its message
                continue
            if key not in self._cache and key not in self._pending:
                todo.append((key, name, directory))
        if not todo:
            return
        futures = [Future() for _ in todo]
        self._pending.update({key: f for (key, _, _), f in zip(todo, futures)})

        def load() -> None:
            for (_, name, directory), f in zip(todo, futures):
                f.set_running_or_notify_cancel()
                try:
                    f.set_result(self._loader(name)(directory, device=device))
                except BaseException as err:        # noqa: BLE001 - handed to get()
                    f.set_exception(err)
        # a daemon: when the caller fails (e.g. an unreadable scan) the process exits without waiting for torch
        threading.Thread(target=load, name="sscild-preload", daemon=True).start()

    def clear(self) -> None:
        """Forget every loaded model (waiting for loads still running)."""
        for f in self._pending.values():
            f.exception()
        self._pending.clear()
        self._cache.clear()
