"""Model weights on disk: ``model.safetensors`` + ``card.json`` in one folder, shared by L-Net, S-Net and the
lesion U-Net."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelError


def save_weights(model, directory: str | Path, card: dict[str, Any]) -> Path:
    """Write the model's state (CPU tensors) and its card, atomically."""
    from safetensors.torch import save_file

    from ..util import atomic_path, write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(directory / "card.json", card)
    return directory


def read_card(directory: str | Path, what: str, train_hint: str) -> dict[str, Any]:
    directory = Path(directory)
    wpath, cpath = directory / "model.safetensors", directory / "card.json"
    if not wpath.exists() or not cpath.exists():
        raise ModelError(f"no {what} weights at {directory} (need model.safetensors and card.json): train one "
                         f"with `{train_hint}` or pass --weights DIR")
    return json.loads(cpath.read_text())


def load_into(model, directory: str | Path, what: str):
    """Load ``model.safetensors`` into ``model``; a clear error when it does not fit."""
    from safetensors.torch import load_file

    wpath = Path(directory) / "model.safetensors"
    try:
        model.load_state_dict(load_file(str(wpath)))
    except (RuntimeError, KeyError) as err:
        raise ModelError(f"the {what} weights at {wpath} do not fit the network in its card: {err}") from None
    return model
