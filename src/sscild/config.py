"""Training configs: one YAML layout for S-Net, L-Net and the lesion U-Net, read strictly.

Every trainer's YAML has the same sections::

    extends: base.yaml          # optional: another config this one changes (merged key by key)
    description: what the model is trained on (goes to the card)
    label_kind: synthetic exact # none / synthetic exact / synthetic exact + by-eye / expert (goes to the card)
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
    finetune: {...}             # S-Net only: fine-tune ``init`` on new labels with replay and a guard
                                # (:class:`FinetuneSettings`; ``sscild review export`` writes such a config)

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
            "train", "validation", "cv", "calibrate", "finetune")


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
    # an S-Net config with a finetune: section: few steps at a low rate from init weights; no weight decay
    # (it pulls towards zero; L2-SP pulls towards the initial weights instead)
    "snet_finetune": {"steps": 300, "batch_size": 16, "lr": 5e-5, "weight_decay": 0.0, "warmup_steps": 20,
                      "checkpoint_every": 100, "log_every": 50, "loss": "mse"},
}


@dataclass(frozen=True)
class FinetuneSettings:
    """The ``finetune:`` section of an S-Net config: fine-tuning ``init`` weights on new labels (``data:``, e.g. a
    reader study's consensus) without forgetting what they could do.

    - ``replay``: a data section (phantoms, real_backgrounds, dataset_csv) of the original training distribution;
      its scored slices plus synthetic slices as the ``synthetic:`` section says make the replay set, and
      ``replay_share`` of every batch is drawn from it (the rest from the new labels);
    - ``l2sp``: weight of the L2-SP penalty ``l2sp / 2 * sum((w - w_init) ** 2)``; ``freeze_bn``: batch-norm
      statistics stay those of ``init`` (new labels would otherwise shift them for every input);
    - ``val_share``: share of the new labels' patients held out for validation (with the ``validation:`` section,
      the original distribution, it fits the output calibration; neither is a test set);
    - the guard: ``init`` and the fine-tuned net are scored on the ``validation:`` section; when the fine-tuned
      net's MAE on TOT, GG or RET is worse by more than ``tolerance`` points, a warning says so and
      ``on_worse: keep_init`` writes the initial weights to ``out`` (the fine-tuned ones to ``out/rejected``);
      ``keep_finetuned`` writes the fine-tuned ones with the warning in their card;
    - ``cache``: keep the prepared replay and validation slices in ``out/cache`` (reruns and resumes reuse them).
    """

    replay: dict = field(default_factory=dict)
    replay_share: float = 0.67
    l2sp: float = 0.01
    freeze_bn: bool = True
    val_share: float = 0.25
    tolerance: float = 0.5
    on_worse: str = "keep_init"
    cache: bool = True

    def __post_init__(self):
        if not 0 <= self.replay_share < 1:
            raise ConfigError(f"finetune: replay_share must be within 0..1 (below 1), got {self.replay_share}")
        if not 0 <= self.val_share < 1:
            raise ConfigError(f"finetune: val_share must be within 0..1 (below 1), got {self.val_share}")
        if self.l2sp < 0 or self.tolerance < 0:
            raise ConfigError(f"finetune: l2sp and tolerance must be >= 0, got {self.l2sp} and {self.tolerance}")
        if self.on_worse not in ("keep_init", "keep_finetuned"):
            raise ConfigError(f"finetune: on_worse must be keep_init or keep_finetuned, got {self.on_worse!r}")
        if self.replay_share > 0 and not self.replay:
            raise ConfigError("finetune: replay_share > 0 needs a replay data section (phantoms, real_backgrounds, "
                              "dataset_csv) of the original training data; or set replay_share: 0")
#: keys of the data sections per trainer (validation takes the same, plus the listed extras)
DATA_KEYS = {"snet": ("phantoms", "dataset_csv", "real_backgrounds", "real_draws"),
             "lnet": ("phantoms", "dataset_csv"),
             "lesions": ("phantoms", "pairs_csv", "name_map", "real_backgrounds", "real_draws")}
VALIDATION_EXTRA = {"snet": ("synthetic_n",), "lnet": (), "lesions": ()}
PHANTOM_KEYS = ("n", "seed0", "size", "neighbours", "noise_hu", "every")
BACKGROUND_KEYS = ("path", "keep", "optional", "weight")
#: ``real_draws``: 3D insertion + acquisition model on real scans (:mod:`sscild.realdata`); ``scans`` lists
#: ``{name, path}``, ``exclude`` names scans to leave out (leave-one-scan-out), ``weight`` the share of batches
REAL_DRAW_KEYS = ("scans", "exclude", "draws", "healthy", "n_slices", "seed", "shallow", "cache", "weight")
SYNTHETIC_KEYS = ("fraction", "n", "noise_hu", "source", "real_gg")
PATH_KEYS = ("dataset_csv", "pairs_csv", "path", "real_gg", "cache")


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
    for k in ("data", "synthetic", "validation", "finetune"):
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
    finetune: FinetuneSettings | None = None


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
    if d.get("real_draws"):
        rd = check_keys(d["real_draws"], REAL_DRAW_KEYS, f"{where}.real_draws")
        for i, sc in enumerate(rd.get("scans") or []):
            if not {"name", "path"} <= set(check_keys(sc, ("name", "path", "optional"), f"{where}.real_draws.scans[{i}]")):
                raise ConfigError(f"{where}.real_draws.scans[{i}] needs a name and a path")
    return d


def trainer_config(kind: str, path: str | Path, network_cls, default_out: str,
                   init: str | Path | None = None) -> TrainerConfig:
    """Read and check the config of a ``kind`` trainer (``snet``, ``lnet``, ``lesions``); ``init`` (weights to
    start from) replaces the config's ``init:``."""
    path = Path(path)
    c = load_config(path)
    if init:
        c = {**c, "init": str(init)}
    where = str(path)
    label_kind = c.get("label_kind", "synthetic exact")
    if label_kind not in LABEL_KINDS:
        raise ConfigError(f"{where}: label_kind must be one of {', '.join(LABEL_KINDS)}; got {label_kind!r}")
    cv = check_keys(c.get("cv"), ("folds",), f"{where}: cv")
    pre = check_keys(c.get("pretrain"), ("steps",), f"{where}: pretrain")
    ft = _finetune(kind, c, where)
    return TrainerConfig(
        kind=kind, path=path, description=str(c.get("description", "see config")), label_kind=label_kind,
        out=Path(c.get("out") or resolve(path.resolve().parent, default_out)),
        init=Path(c["init"]) if c.get("init") else None,
        network=from_dict(network_cls, c.get("config"), f"{where}: config"),
        train=train_settings(f"{kind}_finetune" if ft else kind, c.get("train"), f"{where}: train"),
        data=_check_data(kind, c.get("data"), f"{where}: data"),
        synthetic=check_keys(c.get("synthetic"), SYNTHETIC_KEYS, f"{where}: synthetic"),
        pretrain_steps=int(pre.get("steps", 0)),
        validation=_check_data(kind, c.get("validation"), f"{where}: validation", VALIDATION_EXTRA[kind]),
        cv_folds=int(cv.get("folds", 0)), calibrate=bool(c.get("calibrate", True)), finetune=ft)


def _finetune(kind: str, c: dict, where: str) -> FinetuneSettings | None:
    """The checked ``finetune:`` section (S-Net only; it needs ``init``), or None."""
    if c.get("finetune") is None:
        return None
    if kind != "snet":
        raise ConfigError(f"{where}: finetune: is for S-Net configs only")
    if not c.get("init"):
        raise ConfigError(f"{where}: finetune: needs init: (the weights to fine-tune, e.g. the shipped S-Net)")
    ft = from_dict(FinetuneSettings, c["finetune"], f"{where}: finetune")
    replay = _check_data(kind, ft.replay, f"{where}: finetune.replay") if ft.replay else {}
    return dataclasses.replace(ft, replay=replay)
