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
    write_card_md(directory)
    return directory


def write_card_md(directory: str | Path) -> Path:
    """Render ``card.md`` (the human-readable model card) from ``card.json``."""
    from ..util import atomic_path

    directory = Path(directory)
    card = json.loads((directory / "card.json").read_text())
    lines = [f"# Model card: {card.get('name', directory.name)}", "",
             "Research software, not a medical device. Trained by the sscild developers on this project's own "
             "synthetic data (and real scans only as healthy backgrounds); no patient labels were used.", "",
             "## Trained on", "", str(card.get("trained_on", "not recorded")), ""]
    keys = [k for k in card if k not in ("name", "trained_on")]
    lines += ["## Details and measured figures", ""]
    for k in keys:
        v = card[k]
        if isinstance(v, dict):
            lines.append(f"- **{k}**:")
            for kk, vv in v.items():
                lines.append(f"  - {kk}: {json.dumps(vv) if not isinstance(vv, str) else vv}")
        else:
            lines.append(f"- **{k}**: {json.dumps(v) if not isinstance(v, str) else v}")
    lines += ["", "## Limits", "",
              "Trained on synthetic chest CT (sscild.phantom) and synthetic lesions inserted into healthy slices; "
              "figures above are measured on held-out synthetic data. Accuracy on real ILD scans is not established: "
              "validate on your own annotated cohort (`sscild evaluate ...`) before drawing conclusions, and retrain "
              "with `sscild train ... --config` on your data.", ""]
    with atomic_path(directory / "card.md") as tmp:
        Path(tmp).write_text("\n".join(lines))
    return directory / "card.md"


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
