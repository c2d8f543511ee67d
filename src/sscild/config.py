"""Training configs: one YAML layout for S-Net, L-Net and the lesion U-Net, read strictly.

Every trainer's YAML has the same sections::

    extends: base.yaml          # optional: another config this one changes (merged key by key)
    description: what the model is trained on (goes to the card)
    label_kind: synthetic exact # none / synthetic exact / expert (goes to the card)
    out: models/snet            # output folder
    init: other/weights         # optional: start from these weights
    config: {...}               # the network (SNetConfig / LNetConfig / UNetConfig fields)
    data: {...}                 # phantoms, dataset_csv, pairs_csv, real_backgrounds, ...
    synthetic: {...}            # patterns inserted into healthy slices
    pretrain: {steps: 500}
    train: {steps, batch_size, lr, weight_decay, warmup_steps, final_lr_fraction, seed, checkpoint_every, ...}
    validation: {...}           # like data
    cv: {folds: 5}
    calibrate: true             # S-Net only

A YAML error, an unknown key (with the keys that are known), a value of the wrong type or a missing file is a
``ConfigError``. Defaults live here only (:data:`TRAIN_DEFAULTS`). Relative paths are taken from the folder of the
config file that names them.

Examples
--------
>>> train_settings("lnet", {"steps": 10}).steps
10
>>> try:
...     train_settings("lnet", {"stpes": 10})
... except Exception as err:
...     print(str(err)[:48])
train: unknown key 'stpes'; known keys: augment, 
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .bundle import LABEL_KINDS
from .errors import ConfigError
TOP_KEYS = ("extends", "description", "label_kind", "out", "init", "config", "data", "synthetic", "pretrain",
            "train", "validation", "cv", "calibrate")


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation of one training run; the schedule is linear warm-up then cosine decay to
    ``final_lr_fraction * lr`` at ``steps`` (:func:`sscild.engine.lr_at`)."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    final_lr_fraction: float = 0.05
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 50
    loss: str = "mse"
    optimizer: str = "adam"
    balanced: bool = True
    augment: bool = True

    def __post_init__(self):
        for k in ("steps", "batch_size"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"train: {k} must be at least 1, got {getattr(self, k)}")
        if not self.lr > 0:
            raise ConfigError(f"train: lr must be positive, got {self.lr}")
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"train: optimizer must be adam or adamw, got {self.optimizer!r}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ConfigError(f"train: final_lr_fraction must be within 0..1, got {self.final_lr_fraction}")


#: the one place for the trainers' defaults (each overrides :class:`TrainSettings`)
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "snet": {"steps": 1000, "batch_size": 16, "lr": 5e-4, "weight_decay": 1e-4, "warmup_steps": 100,
             "checkpoint_every": 250, "log_every": 250, "loss": "mse"},
    "lnet": {"steps": 1000, "batch_size": 4, "lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 0,
             "checkpoint_every": 200, "log_every": 200, "loss": "mse"},
    "lesions": {"steps": 1000, "batch_size": 8, "lr": 2e-3, "weight_decay": 0.0, "warmup_steps": 0,
                "final_lr_fraction": 1.0, "checkpoint_every": 250, "log_every": 50, "loss": "dice+ce"},
}
#: keys of the data sections per trainer (validation takes the same, plus the listed extras)
DATA_KEYS = {"snet": ("phantoms", "dataset_csv", "real_backgrounds"),
             "lnet": ("phantoms", "dataset_csv"),
             "lesions": ("phantoms", "pairs_csv", "name_map", "real_backgrounds")}
VALIDATION_EXTRA = {"snet": ("synthetic_n",), "lnet": (), "lesions": ()}
PHANTOM_KEYS = ("n", "seed0", "size", "neighbours", "noise_hu", "every")
BACKGROUND_KEYS = ("path", "keep", "optional", "weight")
SYNTHETIC_KEYS = ("fraction", "n", "noise_hu", "source", "real_gg")
PATH_KEYS = ("dataset_csv", "pairs_csv", "path", "real_gg")


def check_keys(d: Any, known: tuple[str, ...] | list[str], where: str) -> dict:
    """``d`` as a dict when it is a mapping whose keys are all ``known``; else a ``ConfigError`` listing them."""
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be a mapping of {', '.join(sorted(known))}; got {type(d).__name__}")
    for k in d:
        if k not in known:
            raise ConfigError(f"{where}: unknown key {k!r}; known keys: {', '.join(sorted(known))}")
    return dict(d)


def from_dict(cls, d: Any, where: str):
    """A frozen dataclass from a mapping: unknown keys, wrong types and bad values are ``ConfigError``s.

    Lists become tuples where the field is a tuple.
    """
    d = check_keys(d, [f.name for f in dataclasses.fields(cls)], where)
    hints = typing.get_type_hints(cls)
    for k, v in list(d.items()):
        if isinstance(v, list) and "tuple" in str(hints.get(k, "")):
            d[k] = tuple(v)
    try:
        return cls(**d)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def train_settings(kind: str, d: Any, where: str = "train") -> TrainSettings:
    """The ``train:`` section of a ``kind`` trainer over :data:`TRAIN_DEFAULTS`."""
    return from_dict(TrainSettings, {**TRAIN_DEFAULTS[kind], **check_keys(d, _train_keys(), where)}, where)


def settings_for(kind: str, settings: TrainSettings | None = None, **overrides) -> TrainSettings:
    """``settings`` (default: the ``kind`` trainer's defaults) with keyword overrides, checked like a config.

    >>> settings_for("lesions", steps=5).lr
    0.002
    """
    base = settings if settings is not None else train_settings(kind, {})
    check_keys(overrides, _train_keys(), "training settings")
    return from_dict(TrainSettings, {**dataclasses.asdict(base), **overrides}, "training settings")


def _train_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainSettings)]


# --------------------------------------------------------------------------------------------
# YAML with extends and paths
# --------------------------------------------------------------------------------------------
def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping, or a ``ConfigError`` naming the file and the line of the problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist")
    try:
        c = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file") from None
    if c is None:
        return {}
    if not isinstance(c, dict):
        raise ConfigError(f"{path} must be a YAML mapping with sections {', '.join(TOP_KEYS)}")
    return c


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _absolute(section: Any, base: Path, keys: tuple[str, ...] = PATH_KEYS) -> Any:
    """Relative paths in a section resolved against ``base`` (recursively through lists and mappings)."""
    if isinstance(section, list):
        return [_absolute(v, base, keys) for v in section]
    if isinstance(section, dict):
        return {k: (str(resolve(base, v)) if k in keys and isinstance(v, (str, Path)) else _absolute(v, base, keys))
                for k, v in section.items()}
    return section


def resolve(base: Path, p: str | Path) -> Path:
    """``p`` relative to ``base`` unless it is absolute (``~`` expanded)."""
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base / q)


def load_config(path: str | Path, _seen: tuple = ()) -> dict[str, Any]:
    """Read a config with its ``extends:`` chain merged, paths made absolute against each file's own folder."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: `extends:` makes a loop ({' -> '.join(p.name for p in _seen)})")
    c = check_keys(read_yaml(path), TOP_KEYS, str(path))
    base = path.parent
    for k in ("out", "init"):
        if c.get(k) is not None:
            c[k] = str(resolve(base, c[k]))
    for k in ("data", "synthetic", "validation"):
        if k in c:
            c[k] = _absolute(c[k], base)
    parent = c.pop("extends", None)
    if parent is None:
        return c
    return _merge(load_config(resolve(base, parent), _seen + (path,)), c)


# --------------------------------------------------------------------------------------------
# the trainers' config
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainerConfig:
    """A trainer's config, checked: ``network`` is the model's config dataclass, ``train`` its settings; the data
    sections are plain mappings whose keys were checked and whose paths are absolute."""

    kind: str
    path: Path
    description: str
    label_kind: str
    out: Path
    init: Path | None
    network: Any
    train: TrainSettings
    data: dict = field(default_factory=dict)
    synthetic: dict = field(default_factory=dict)
    pretrain_steps: int = 0
    validation: dict = field(default_factory=dict)
    cv_folds: int = 0
    calibrate: bool = True


def _check_data(kind: str, d: Any, where: str, extra: tuple[str, ...] = ()) -> dict:
    d = check_keys(d, DATA_KEYS[kind] + extra, where)
    phs = d.get("phantoms") or []
    for i, ph in enumerate(phs if isinstance(phs, list) else [phs]):
        ph = check_keys(ph, PHANTOM_KEYS, f"{where}.phantoms[{i}]")
        if "n" not in ph or "seed0" not in ph:
            raise ConfigError(f"{where}.phantoms[{i}] needs n and seed0")
    for i, rb in enumerate(d.get("real_backgrounds") or []):
        if "path" not in check_keys(rb, BACKGROUND_KEYS, f"{where}.real_backgrounds[{i}]"):
            raise ConfigError(f"{where}.real_backgrounds[{i}] needs a path")
    return d


def trainer_config(kind: str, path: str | Path, network_cls, default_out: str) -> TrainerConfig:
    """Read and check the config of a ``kind`` trainer (``snet``, ``lnet``, ``lesions``)."""
    path = Path(path)
    c = load_config(path)
    where = str(path)
    label_kind = c.get("label_kind", "synthetic exact")
    if label_kind not in LABEL_KINDS:
        raise ConfigError(f"{where}: label_kind must be one of {', '.join(LABEL_KINDS)}; got {label_kind!r}")
    cv = check_keys(c.get("cv"), ("folds",), f"{where}: cv")
    pre = check_keys(c.get("pretrain"), ("steps",), f"{where}: pretrain")
    return TrainerConfig(
        kind=kind, path=path, description=str(c.get("description", "see config")), label_kind=label_kind,
        out=Path(c.get("out") or resolve(path.resolve().parent, default_out)), init=Path(c["init"]) if c.get("init") else None,
        network=from_dict(network_cls, c.get("config"), f"{where}: config"),
        train=train_settings(kind, c.get("train"), f"{where}: train"),
        data=_check_data(kind, c.get("data"), f"{where}: data"),
        synthetic=check_keys(c.get("synthetic"), SYNTHETIC_KEYS, f"{where}: synthetic"),
        pretrain_steps=int(pre.get("steps", 0)),
        validation=_check_data(kind, c.get("validation"), f"{where}: validation", VALIDATION_EXTRA[kind]),
        cv_folds=int(cv.get("folds", 0)), calibrate=bool(c.get("calibrate", True)))
