"""One flat dataclass holding every knob of a ``samtrain fit`` run (saved as ``config.json``).

Defaults follow the SAM-MIL paper and its reference command where those are known; the few choices
the paper leaves open (area unit, consistency-loss scale, validation split) are documented in
``docs/trainer.md`` and next to the field.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from clam2sam.errors import UsageError
from trainer.models.registry import DEFAULT_BACKBONE, DEFAULT_MODEL

MASK_MODES = ("none", "random", "non-group", "sam")          # paper Table 3
RATIO_FNS = ("constant", "linear", "sigmoid")                 # paper Table 4
AREA_UNITS = ("relative-size", "patch-fraction", "sam-pixels")
GROUP_BY = ("segment", "sam-area")
CON_FORMS = ("within-share", "variance", "reference-l2")
ATTN_INITS = ("xavier", "uniform")
MONITORS = ("auc", "loss")
SCHEDULERS = ("cosine", "none")

# Default sigmoid slope per area unit (paper eq. 7: R = sigmoid(a * A + b)). Both give R(0) = sigmoid(-2.5)
# = 0.076: "patch-fraction" centres the curve at 1 % of the slide's patches; "sam-pixels" is the
# reference code's k = 5e-4, A0 = 5000 (b = -k * A0).
DEFAULT_SIGMOID_A = {"relative-size": 2.0, "patch-fraction": 250.0, "sam-pixels": 5e-4}
DEFAULT_SIGMOID_B = -2.5
# b per unit when --sigmoid-b is not given: relative-size is centred on the slide's average segment
DEFAULT_SIGMOID_B_BY_UNIT = {"relative-size": -2.0, "patch-fraction": -2.5, "sam-pixels": -2.5}
DEFAULT_MIN_EPOCHS = 3

# Fields that may change between an interrupted run and its resumption without invalidating it.
RESUME_FREE_FIELDS = ("num_workers", "threads", "cache", "device", "quiet", "resume", "overwrite", "out", "store")


@dataclass
class TrainConfig:
    """Everything that defines a run. ``None`` fields are resolved by :meth:`resolve`."""

    store: str = ""
    out: str = ""
    labels: str | None = None            # CSV slide_id,label[,case_id]; default: store slide attrs
    classes: list[str] | None = None     # class order (binary: second = positive); default sorted labels
    # model
    model: str = DEFAULT_MODEL
    backbone: str = DEFAULT_BACKBONE     # used by a model that wraps another (SAM-MIL): the MIL network it trains
    group_features: bool | None = None   # append segment group-feature tokens; default: the model's
                                         # ``uses_group_features_by_default`` (on for SAM-MIL only)
    hidden_dim: int = 512
    attn_dim: int = 128
    dropout: float = 0.25
    standardize: bool = True             # per-dimension feature standardisation fitted on each training part
    max_instance_weight: float = 0.5     # auxiliary max-instance CE (attention models with instance logits)
    attn_init: str = "xavier"            # "xavier": random start (reference); "uniform": starts as mean pooling
    # SG2M (instance level)
    mask: str = "sam"
    ratio_fn: str = "sigmoid"
    mask_ratio: float = 0.9              # MR_target
    area_unit: str = "relative-size"
    sigmoid_a: float | None = None       # default per unit (DEFAULT_SIGMOID_A)
    sigmoid_b: float | None = None       # default per unit (DEFAULT_SIGMOID_B_BY_UNIT)
    group_by: str = "segment"            # "sam-area": the reference's grouping by equal relative_area
    mask_warmup: int = 0                 # epochs over which MR_target ramps up from 0
    # bag level
    pseudo_bags: int = 5                 # m
    alpha: float = 0.5                   # pseudo-bag CE weight
    beta: float = 0.0                    # consistency weight; 0 chosen by nested validation (docs/trainer.md)
    con_form: str = "within-share"       # size-invariant share of within-segment log-attention variance
    con_unassigned: bool = False         # also make unassigned patches' attention uniform
    # protocol
    folds: int = 5
    repeats: int = 1
    val_frac: float = 0.2                # of each training part
    splits_dir: str | None = None
    seed: int = 2021
    # optimisation
    lr: float = 2e-4
    weight_decay: float = 1e-5
    scheduler: str = "cosine"
    max_epochs: int = 200
    batch_size: int = 1                  # bags per optimiser step (gradient accumulation)
    patience: int = 20
    min_epochs: int | None = None        # epochs before this are never selected and never count for patience;
                                         # default min(DEFAULT_MIN_EPOCHS, max_epochs - 1)
    monitor: str = "auc"
    # nested selection (trainer/search.py): settings tried on each outer training part
    search: dict = field(default_factory=dict)   # {"beta": [0.0, 0.1], ...}
    inits: int = 1                       # initialisations per setting, the best kept on validation
    reinit_below: float = 0.0            # another initialisation while validation AUC stays below this (0: off)
    max_inits: int = 3                   # at most this many initialisations per setting with reinit_below
    # runtime
    num_workers: int = 0
    threads: int = 0                     # torch intra-op threads; 0 = torch default
    cache: bool = False
    device: str = "auto"
    quiet: bool = False
    resume: bool = True
    overwrite: bool = False
    skip_damaged: bool = False           # train without slides whose metadata is damaged (else: an error)
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ resolution / validation
    def resolve(self) -> "TrainConfig":
        """Return a copy with model-dependent defaults filled in, after validation."""
        c = dataclasses.replace(self)
        if c.group_features is None:
            from trainer.models import list_models, model_class

            c.group_features = (model_class(c.model).uses_group_features_by_default
                                if c.model in list_models() else False)   # unknown: validate() says so
        if c.min_epochs is None:
            c.min_epochs = max(0, min(DEFAULT_MIN_EPOCHS, c.max_epochs - 1))
        if c.sigmoid_a is None:
            c.sigmoid_a = DEFAULT_SIGMOID_A[c.area_unit] if c.area_unit in DEFAULT_SIGMOID_A else 1.0
        if c.sigmoid_b is None:
            c.sigmoid_b = DEFAULT_SIGMOID_B_BY_UNIT.get(c.area_unit, DEFAULT_SIGMOID_B)
        c.validate()
        return c

    def validate(self) -> None:
        """Raise UsageError (exit code 2) for impossible values."""
        def bad(msg, fix=None):
            raise UsageError(msg, fix=fix)

        for name, allowed in (("mask", MASK_MODES), ("ratio_fn", RATIO_FNS), ("area_unit", AREA_UNITS),
                              ("group_by", GROUP_BY), ("con_form", CON_FORMS), ("monitor", MONITORS), ("attn_init", ATTN_INITS),
                              ("scheduler", SCHEDULERS)):
            if getattr(self, name) not in allowed:
                bad(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        from trainer.models.registry import BACKBONE_PARAM, list_models, model_class, model_params

        for name in (self.model, self.backbone):
            if name not in list_models():
                bad(f"unknown model {name!r}", fix=f"choose one of: {', '.join(list_models())}")
        if BACKBONE_PARAM in model_params(model_class(self.backbone)):     # a wrapping model wraps a plain one
            bad(f"--backbone cannot be {self.backbone}", fix=f"use a plain MIL model such as {DEFAULT_BACKBONE}")
        if not 0.0 <= self.mask_ratio < 1.0:
            bad(f"--mask-ratio {self.mask_ratio} must be in [0, 1)")
        if self.mask_warmup < 0:
            bad(f"--mask-warmup {self.mask_warmup} must be >= 0")
        if self.pseudo_bags < 1:
            bad("--pseudo-bags must be >= 1")
        if self.alpha < 0 or self.beta < 0 or self.max_instance_weight < 0:
            bad("--alpha, --beta and --max-instance-weight must be >= 0")
        if self.splits_dir is None and self.folds < 2:
            bad("--folds must be >= 2")
        if self.repeats < 1 or self.max_epochs < 1 or self.batch_size < 1 or self.patience < 1:
            bad("--repeats, --max-epochs, --batch-size and --patience must be >= 1")
        if not 0.0 < self.val_frac < 1.0:
            bad(f"--val-frac {self.val_frac} must be in (0, 1): the protocol needs a validation split",
                fix="model selection and the threshold are taken on validation, never on test")
        if not 0.0 <= self.dropout < 1.0:
            bad("--dropout must be in [0, 1)")
        if self.threads < 0 or self.num_workers < 0:
            bad("--threads and --num-workers must be >= 0")
        if self.min_epochs < 0 or self.min_epochs >= self.max_epochs:
            bad(f"--min-epochs {self.min_epochs} must be in [0, --max-epochs {self.max_epochs})",
                fix="lower --min-epochs or raise --max-epochs")
        if self.inits < 1:
            bad("--inits must be >= 1")
        if self.max_inits < 1:
            bad("--max-inits must be >= 1")
        if not 0.0 <= self.reinit_below <= 1.0:
            bad(f"--reinit-below {self.reinit_below} must be in [0, 1] (0 turns it off)")
        if self.lr <= 0:
            bad("--lr must be > 0")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def differences(self, other: "TrainConfig") -> list[str]:
        """Fields (outside RESUME_FREE_FIELDS) whose values differ."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUME_FREE_FIELDS and a[k] != b.get(k)]
