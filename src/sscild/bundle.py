"""Model bundles: a folder with ``model.safetensors``, a schema-checked ``card.json``, ``card.md`` rendered from it
and, where measured, ``validation.json`` (the stored predictions the card's metrics are computed from).

After MONAI's bundle ``metadata.json``: every card says what it is (``kind``, ``name``, ``version``), which software
wrote it (sscild, torch and MONAI versions, date), the sha256 of its weights (checked at load), its input, what it
was trained on and with which labels (``label_kind``: none / synthetic exact / expert), its metrics with their split
and whether they are in-sample, the heat-map thresholds with the patch and stride they were fitted for, and a
changelog. One :func:`load_bundle` and one :func:`save_bundle` serve S-Net, L-Net, the lesion U-Net and the deep
outcome model; :func:`save_bundle` never writes into the installed package unless asked (``allow_package``).

Examples
--------
>>> card = {"kind": "snet", "name": "S-Net", "version": "1.0"}
>>> problems = card_problems(card)
>>> "missing field 'schema_version'" in problems
True
>>> LABEL_STATEMENTS["synthetic exact"][:31]
'Trained on synthetic data whose'
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from .errors import ModelError, ModelMissingError

SCHEMA_VERSION = 2
KINDS = ("snet", "lnet", "lesions", "outcome-deep")
LABEL_KINDS = ("none", "synthetic exact", "synthetic exact + by-eye", "expert", "clinical outcome")
SPLITS = ("train", "validation", "test", "cross-validation")
WEIGHTS_FILE, CARD_FILE, CARD_MD, PREDICTIONS_FILE = "model.safetensors", "card.json", "card.md", "validation.json"
PACKAGE_DIR = Path(__file__).resolve().parent
MODELS_DIR = PACKAGE_DIR / "models"
#: what card.md says about the labels, derived from ``training.label_kind`` (never fixed text)
LABEL_STATEMENTS = {
    "none": "Trained without labels (self-supervised or label-free targets).",
    "synthetic exact": "Trained on synthetic data whose labels are exact by construction (inserted patterns, "
                       "phantoms); no patient labels were used.",
    "synthetic exact + by-eye": "Trained on synthetic data whose labels are exact by construction and on patient "
                                "scans with the developers' by-eye annotations (acceptable ranges, not expert reads; "
                                "see the training data below).",
    "expert": "Trained on expert labels of patient scans (see the training data below).",
    "clinical outcome": "Trained on recorded clinical outcomes (deaths and follow-up) of patient scans.",
}
#: field -> (type(s), required); nested fields are checked by :func:`card_problems`
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema_version": ((int,), True), "kind": ((str,), True), "name": ((str,), True), "version": ((str,), True),
    "date": ((str,), True), "software": ((dict,), True), "weights": ((dict,), True), "config": ((dict,), True),
    "input": ((dict,), True), "training": ((dict,), True), "metrics": ((list,), True),
    "heatmap": ((dict, type(None)), False), "changelog": ((list,), True), "notes": ((dict,), False),
}


# --------------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------------
def card_problems(card: Any) -> list[str]:
    """Every way ``card`` departs from the schema (empty list: valid)."""
    if not isinstance(card, dict):
        return [f"the card is a {type(card).__name__}, not a JSON object"]
    out = [f"missing field {k!r}" for k, (_, req) in _FIELDS.items() if req and k not in card]
    out += [f"field {k!r} is a {type(card[k]).__name__}, expected {' or '.join(t.__name__ for t in ts)}"
            for k, (ts, _) in _FIELDS.items() if k in card and not isinstance(card[k], ts)]
    out += [f"unknown field {k!r} (known: {', '.join(_FIELDS)})" for k in card if k not in _FIELDS]
    if out:
        return out
    if card["schema_version"] != SCHEMA_VERSION:
        out.append(f"schema_version {card['schema_version']} (this sscild reads {SCHEMA_VERSION})")
    if card["kind"] not in KINDS:
        out.append(f"kind {card['kind']!r} is not one of {KINDS}")
    out += [f"software.{k} missing" for k in ("sscild", "torch", "monai") if k not in card["software"]]
    w = card["weights"]
    if not isinstance(w.get("sha256"), str) or len(w.get("sha256", "")) != 64:
        out.append("weights.sha256 must be the 64-hex-digit sha256 of the weights file")
    if card["training"].get("label_kind") not in LABEL_KINDS:
        out.append(f"training.label_kind must be one of {LABEL_KINDS}")
    for i, m in enumerate(card["metrics"]):
        out += _metric_problems(m, i)
    hm = card.get("heatmap")
    if hm is not None:
        out += [f"heatmap.{k} missing" for k in ("thresholds", "patch_mm", "stride_mm") if k not in hm]
    out += [f"changelog[{i}] needs version, date and change" for i, c in enumerate(card["changelog"])
            if not isinstance(c, dict) or not {"version", "date", "change"} <= set(c)]
    return out


def _metric_problems(m: Any, i: int) -> list[str]:
    if not isinstance(m, dict):
        return [f"metrics[{i}] is not an object"]
    out = [f"metrics[{i}].{k} missing" for k in ("split", "in_sample", "description", "values") if k not in m]
    if m.get("split") not in SPLITS:
        out.append(f"metrics[{i}].split must be one of {SPLITS}")
    if not isinstance(m.get("in_sample"), bool):
        out.append(f"metrics[{i}].in_sample must be true or false")
    return out


def validate_card(card: Any, where: str | Path = "card") -> dict[str, Any]:
    """``card`` when it follows the schema; else ``ModelError`` listing every problem."""
    problems = card_problems(card)
    if problems:
        raise ModelError(f"{where} is not a valid sscild model card: " + "; ".join(problems))
    return card


def software_versions() -> dict[str, str]:
    """Versions of sscild, torch and MONAI (as recorded in a card)."""
    import monai
    import torch

    from . import __version__

    return {"sscild": __version__, "torch": torch.__version__, "monai": monai.__version__}


def new_card(kind: str, name: str, *, config: dict, input: dict, training: dict, metrics: list | None = None,
             version: str = "1.0.0", heatmap: dict | None = None, changelog: list | None = None,
             notes: dict | None = None) -> dict[str, Any]:
    """A card with today's date and this software's versions (the weights hash is filled by :func:`save_bundle`)."""
    today = _dt.date.today().isoformat()
    card = {"schema_version": SCHEMA_VERSION, "kind": kind, "name": name, "version": version, "date": today,
            "software": software_versions(), "weights": {"file": WEIGHTS_FILE, "sha256": ""}, "config": config,
            "input": input, "training": training, "metrics": list(metrics or []), "heatmap": heatmap,
            "changelog": list(changelog or [{"version": version, "date": today, "change": "trained"}]),
            "notes": dict(notes or {})}
    return card


def model_card(kind: str, name: str, cfg, *, input: dict, description: str, label_kind: str = "synthetic exact",
               training: dict | None = None, **kw) -> dict[str, Any]:
    """:func:`new_card` for a network whose config is the dataclass ``cfg``; ``training`` extras beside the
    description and label kind; ``kw`` (metrics, heatmap, notes, ...) as for :func:`new_card`."""
    from dataclasses import asdict

    return new_card(kind, name, config=asdict(cfg), input=input,
                    training={"description": description, "label_kind": label_kind, **(training or {})}, **kw)


def save_model(model, cfg, directory: str | Path, card: dict[str, Any], *, predictions: dict | None = None,
               allow_package: bool = False) -> Path:
    """:func:`save_bundle` with the card's config set from the dataclass ``cfg``."""
    from dataclasses import asdict

    return save_bundle(model, directory, {**card, "config": asdict(cfg)}, predictions=predictions,
                       allow_package=allow_package)


def card_config(cls, card: dict[str, Any], defaults: dict | None = None):
    """The config dataclass ``cls`` a card describes (``defaults`` for fields older cards lack); a card whose
    config does not fit ``cls`` is a ``ModelError``."""
    from .config import from_dict
    from .errors import ConfigError

    try:
        return from_dict(cls, {**(defaults or {}), **card.get("config", {})}, f"the {card.get('name')} card's config")
    except ConfigError as err:
        raise ModelError(str(err)) from None


def metric_set(split: str, values: dict, *, description: str, in_sample: bool = False, n: int | None = None,
               predictions: str | None = None, recompute: str | None = None) -> dict[str, Any]:
    """One entry of ``card["metrics"]``; ``predictions`` names the set in ``validation.json`` it was computed
    from and ``recompute`` how (``"scores"``, ``"levels"``, ``"confusion"``)."""
    return {"split": split, "in_sample": bool(in_sample), "description": description, "n": n,
            "predictions": predictions, "recompute": recompute, "values": values}


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_card(directory: str | Path, what: str = "model", train_hint: str = "sscild train ...") -> dict[str, Any]:
    """The validated card of a bundle folder; ``ModelError`` when missing, not JSON or not a valid card."""
    directory = Path(directory)
    wpath, cpath = directory / WEIGHTS_FILE, directory / CARD_FILE
    if not wpath.is_file() or not cpath.is_file():
        raise ModelMissingError(f"no {what} weights at {directory} (need {WEIGHTS_FILE} and {CARD_FILE}): train one "
                         f"with `{train_hint}` or pass --weights DIR")
    try:
        card = json.loads(cpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{cpath} is not valid JSON ({err}): restore the card from the model's source or "
                         "retrain") from None
    if isinstance(card, dict) and "schema_version" not in card:
        card = upgrade_legacy_card(card, wpath)
    return validate_card(card, cpath)


_LEGACY_KINDS = {"S-Net": "snet", "L-Net": "lnet", "lesion U-Net": "lesions"}


def upgrade_legacy_card(old: dict[str, Any], wpath: str | Path) -> dict[str, Any]:
    """A card written before the schema (sscild < 0.2: no schema_version, no weights hash) as a schema card.

    Its weights cannot be verified (the hash is taken from the file as it is now; a note says so); its figures are
    kept as a validation set whose split the old card did not record."""
    kind = _LEGACY_KINDS.get(str(old.get("name")), "outcome-deep" if "horizons_years" in old else None)
    if kind is None:
        raise ModelError(f"{Path(wpath).parent / CARD_FILE} is neither a model card of this sscild nor a known older "
                         "one: retrain the model")
    vals = old.get("validation_metrics") or old.get("metrics") or old.get("validation_dice") or {}
    metrics = [metric_set("validation", vals, description="figures of a card written before the schema; split and "
                          "in-sample status not recorded")] if vals else []
    rest = {k: v for k, v in old.items() if k not in ("name", "config", "trained_on", "validation_metrics",
                                                      "metrics", "validation_dice")}
    card = new_card(kind, str(old.get("name", kind)), config=dict(old.get("config", {})),
                    input={"description": str(old.get("input", "not recorded"))},
                    training={"description": str(old.get("trained_on", "not recorded")),
                              "label_kind": "synthetic exact"}, metrics=metrics, version="0",
                    changelog=[{"version": "0", "date": "unknown", "change": "card written before the schema"}],
                    notes={"legacy_card": "weights hash not recorded, not verified", **rest})
    card["weights"]["sha256"] = sha256_file(wpath)
    card["software"] = {"sscild": "unknown (< 0.2)", "torch": "unknown", "monai": "unknown"}
    return card


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def save_bundle(model, directory: str | Path, card: dict[str, Any], *, predictions: dict | None = None,
                allow_package: bool = False) -> Path:
    """Write ``model.safetensors``, ``card.json`` (with the weights' sha256), ``card.md`` and, when given,
    ``validation.json`` (``{"sets": predictions}``), each atomically. ``model=None`` updates the card of the
    weights already there (after checking them against the card's sha256). Refuses a folder inside the installed
    sscild package unless ``allow_package`` (the shipped models are replaced only on purpose)."""
    from safetensors.torch import save_file

    from .util import atomic_path, write_json

    directory = Path(directory)
    if _is_inside(directory, PACKAGE_DIR) and not allow_package:
        raise ModelError(f"{directory} is inside the installed sscild package: write the model elsewhere "
                         "(--out DIR), or ask for it explicitly to replace a shipped model")
    directory.mkdir(parents=True, exist_ok=True)
    if model is None and card.get("weights", {}).get("sha256"):     # a card update: never bless damaged weights
        load_state(directory, card, card.get("name", "model"))
    if model is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp))
    card = {**card, "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(directory / WEIGHTS_FILE)}}
    validate_card(card, directory / CARD_FILE)
    if predictions is not None:
        write_json(directory / PREDICTIONS_FILE, {"schema_version": SCHEMA_VERSION, "sets": predictions})
    write_json(directory / CARD_FILE, card)
    with atomic_path(directory / CARD_MD) as tmp:
        tmp.write_text(render_card_md(card))
    return directory


def read_predictions(directory: str | Path) -> dict[str, Any]:
    """The prediction sets of ``validation.json`` (``{}`` when the bundle has none)."""
    p = Path(directory) / PREDICTIONS_FILE
    if not p.exists():
        return {}
    try:
        v = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{p} is not valid JSON ({err})") from None
    return v.get("sets", {}) if isinstance(v, dict) else {}


def load_state(directory: str | Path, card: dict[str, Any], what: str) -> dict:
    """The weights of a bundle as a state dict, after checking their sha256 against the card; corrupt,
    truncated or non-finite weights are a ``ModelError`` naming the file."""
    import torch
    from safetensors.torch import load_file

    wpath = Path(directory) / card["weights"].get("file", WEIGHTS_FILE)
    if not wpath.is_file():
        raise ModelError(f"{wpath} is missing: the {what} card names it as its weights")
    digest = sha256_file(wpath)
    if digest != card["weights"]["sha256"]:
        raise ModelError(f"{wpath} does not match the sha256 in its card (file {digest[:12]}..., card "
                         f"{card['weights']['sha256'][:12]}...): the {what} weights are corrupt or were replaced; "
                         "restore them or retrain")
    try:
        state = load_file(str(wpath))
    except Exception as err:          # safetensors raises its own SafetensorError, OSError or ValueError
        raise ModelError(f"{wpath} cannot be read as safetensors ({type(err).__name__}: {err}): the file is "
                         "corrupt or truncated") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"{wpath} holds non-finite values in {len(bad)} tensor(s) (e.g. {bad[0]}): corrupt weights")
    return state


def load_into(model, state: dict, wpath: str | Path, what: str):
    """Load ``state`` into ``model`` strictly; missing, unexpected or wrongly shaped tensors are a ``ModelError``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or extra or shape:
        parts = ([f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []) + \
                ([f"{len(extra)} unexpected (e.g. {extra[0]})"] if extra else []) + \
                ([f"{len(shape)} of the wrong shape (e.g. {shape[0]})"] if shape else [])
        raise ModelError(f"the {what} weights at {wpath} do not fit the network in its card: tensors "
                         + ", ".join(parts))
    model.load_state_dict(state)
    return model


def load_bundle(directory: str | Path, kind: str, build: Callable[[dict], Any], *, what: str, train_hint: str,
                device: str = "cpu"):
    """Read and check a bundle: ``build(card)`` makes the network from the card; returns ``(model, card)``
    with the model in eval mode on ``device``."""
    directory = Path(directory)
    card = read_card(directory, what, train_hint)
    if card["kind"] != kind:
        raise ModelError(f"{directory / CARD_FILE} is a {card['kind']} card, not a {kind}: pass the {what} folder")
    model = build(card)
    state = load_state(directory, card, what)
    load_into(model, state, directory / WEIGHTS_FILE, what)
    return model.to(device).eval(), card


def resolve_weights(weights: str | Path | None, sub: str) -> tuple[Path | None, str | None]:
    """Where to load one model from when the user passed ``--weights DIR`` (``None``: the shipped model).

    ``DIR/<sub>/`` (``sub`` one of ``snet``, ``lnet``, ``lesions``) when it exists; ``DIR`` itself when it is a
    bundle of that kind; otherwise the shipped model, with a note saying so. Returns ``(directory or None, note)``.

    >>> resolve_weights(None, "snet")
    (None, None)
    """
    if weights is None:
        return None, None
    w = Path(weights)
    if not w.exists():
        raise ModelError(f"--weights {w} does not exist")
    if (w / sub).is_dir():
        return w / sub, None
    if (w / CARD_FILE).is_file():
        try:
            k = json.loads((w / CARD_FILE).read_text()).get("kind")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            k = None
        if k == sub:
            return w, None
    return None, f"--weights {w} has no {sub}/ folder: the shipped {sub} model is used"


# --------------------------------------------------------------------------------------------
# reading a card
# --------------------------------------------------------------------------------------------
def headline_metrics(card: dict[str, Any]) -> dict[str, Any] | None:
    """The metric set to show users: the first held-out test set, else the first set not in-sample."""
    ms = card.get("metrics", [])
    for cond in (lambda m: m["split"] == "test" and not m["in_sample"], lambda m: not m["in_sample"]):
        for m in ms:
            if cond(m):
                return m
    return None


def card_summary(card: dict[str, Any]) -> dict[str, Any]:
    """What ``analysis.json`` and the report say about a model: name, version, weights hash, training data and
    label kind, and the headline figures with their split (:func:`headline_metrics`)."""
    head = headline_metrics(card) or {}
    return {"name": card["name"], "kind": card["kind"], "version": card["version"],
            "sha256": card["weights"]["sha256"], "trained_on": card["training"].get("description"),
            "label_kind": card["training"]["label_kind"], "metrics": head.get("values"),
            "metrics_split": head.get("split"), "metrics_description": head.get("description")}


def heatmap_settings(card: dict[str, Any]) -> dict[str, Any] | None:
    """``{"thresholds": {TOT, GG, RET}, "patch_mm", "stride_mm", ...}`` the heat maps were fitted for, or None."""
    return card.get("heatmap")


def recompute_metrics(directory: str | Path, card: dict[str, Any] | None = None) -> list[tuple[dict, dict]]:
    """For every metric set of a card that names stored predictions, ``(stored values, recomputed values)``."""
    card = card or read_card(directory)
    sets = read_predictions(directory)
    out = []
    for m in card["metrics"]:
        if not m.get("predictions"):
            continue
        if m["predictions"] not in sets:
            raise ModelError(f"{Path(directory) / PREDICTIONS_FILE} has no set {m['predictions']!r}")
        out.append((m["values"], _RECOMPUTE[m["recompute"]](sets[m["predictions"]])))
    return out


def _scores(s: dict) -> dict:
    import numpy as np

    from .scoring.snet import evaluation_table

    return evaluation_table(np.asarray(s["pred"], float), np.asarray(s["truth"], float))


def _levels(s: dict) -> dict:
    import numpy as np

    from .scoring.lnet import level_metrics

    return level_metrics(np.asarray(s["pred"], float), np.asarray(s["truth"], float))


def _confusion(s: dict) -> dict:
    import numpy as np

    from .lesions import dice_from_confusion

    return dice_from_confusion(np.sum([np.asarray(c["confusion"]) for c in s["cases"]], axis=0))


_RECOMPUTE: dict[str, Callable[[dict], dict]] = {"scores": _scores, "levels": _levels, "confusion": _confusion}


# --------------------------------------------------------------------------------------------
# card.md
# --------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def _metrics_md(card: dict[str, Any]) -> list[str]:
    head = headline_metrics(card)
    lines = ["## Measured figures", ""]
    if not card["metrics"]:
        return lines + ["No figures were measured for this model.", ""]
    for m in card["metrics"]:
        tag = "headline, " if m is head else ""
        tag += "IN-SAMPLE: optimistic, " if m["in_sample"] else "held out, "
        lines += [f"### {m['split']} ({tag}n = {m.get('n')})", "", m["description"], "",
                  "| target | " + " | ".join(_metric_names(m)) + " |", "|---" * (1 + len(_metric_names(m))) + "|"]
        for t, vals in m["values"].items():
            lines.append(f"| {t} | " + " | ".join(_fmt(vals.get(k)) if isinstance(vals, dict) else _fmt(vals)
                                                  for k in _metric_names(m)) + " |")
        lines.append("")
    return lines


def _metric_names(m: dict) -> list[str]:
    names: list[str] = []
    for vals in m["values"].values():
        for k in (vals if isinstance(vals, dict) else {"value": vals}):
            if k not in names:
                names.append(k)
    return names


def render_card_md(card: dict[str, Any]) -> str:
    """``card.md``: the human-readable card, rendered from ``card`` alone."""
    tr, sw = card["training"], card["software"]
    lines = [f"# Model card: {card['name']} {card['version']}", "",
             f"Kind `{card['kind']}`, written {card['date']} by sscild {sw['sscild']} (torch {sw['torch']}, "
             f"MONAI {sw['monai']}). Weights `{card['weights']['file']}`, sha256 `{card['weights']['sha256']}`.", "",
             "Research software, not a medical device. " + LABEL_STATEMENTS[tr["label_kind"]], "",
             "## Input", "", *(f"- {k}: {_fmt(v)}" for k, v in card["input"].items()), "",
             "## Training data", "", str(tr.get("description", "not recorded")), "",
             *(f"- {k}: {_fmt(v)}" for k, v in tr.items() if k != "description"), "",
             *_metrics_md(card)]
    hm = card.get("heatmap")
    if hm:
        lines += ["## Heat-map thresholds", "", f"Fitted for patches of {hm['patch_mm']} mm with a stride of "
                  f"{hm['stride_mm']} mm: " + _fmt(hm["thresholds"]) + "."]
        lines += [f"- {k}: {_fmt(v)}" for k, v in hm.items() if k not in ("thresholds", "patch_mm", "stride_mm")]
        lines.append("")
    lines += ["## Network configuration", "", *(f"- {k}: {_fmt(v)}" for k, v in card["config"].items()), ""]
    if card.get("notes"):
        lines += ["## Notes", "", *(f"- {k}: {_fmt(v)}" for k, v in card["notes"].items()), ""]
    lines += ["## Changelog", "", *(f"- {c['version']} ({c['date']}): {c['change']}" for c in card["changelog"]), "",
              "## Limits", "", "Figures are measured on the data named above. " +
              ("Accuracy on real ILD scans is not established by them: " if tr["label_kind"] != "expert" else "") +
              "validate on your own annotated cohort (`sscild evaluate ...`) before drawing conclusions, and retrain "
              "with `sscild train ... --config` on your data.", ""]
    return "\n".join(lines)
