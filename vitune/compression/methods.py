"""How the transforms work: one immutable record of method choices shared by a whole study.

The per-layer :class:`~vitune.compression.config.CompressionConfig` says *what* each layer
becomes (rank, precision, pruned share); :class:`CompressionMethods` says *how*: which
low-rank decomposition, which pruning criterion, how activations are calibrated, the int4
group size and the distillation recipe. It is part of the configuration record (and of its
key), so two results are only ever compared or reused when they were made the same way.

Defaults were chosen on the default digits model (``bench/techniques.py`` prints the
comparison), the refinement's solver at DeiT size (see :mod:`vitune.compression.lowrank`); reference:

=====================  =============  ==============================================================
key                    default        meaning
=====================  =============  ==============================================================
lowrank                "aa-residual"  ``svd`` (plain truncated SVD of W), ``aa`` (activation-aware:
                                      truncated SVD of W·L where L Lᵀ = XᵀX), ``aa-residual`` (``aa``
                                      principal term + compact residual term refined by layer-wise
                                      error compensation, see :mod:`vitune.compression.lowrank`)
residual_share         0.25           share of a layer's rank given to the residual term
refine_solver          "als"          how the residual term is fitted: ``als`` (alternating least
                                      squares: exact, damped solves of each factor in turn, no step
                                      size) or ``adam`` (gradient steps; the default until stop 47),
                                      see :mod:`vitune.compression.lowrank`
refine_steps           100            ALS sweeps (stopped once a sweep gains < 1e-6 of the loss) or
                                      Adam steps of the error-compensation refinement per layer
refine_lr              0.05           Adam's step size, relative to each tensor's RMS
damping                1e-3           Tikhonov damping of XᵀX, relative to its mean diagonal
calib_images           256            calibration images used (from the ``calib`` split)
prune_criterion        "magnitude"    ``magnitude`` | ``activation`` | ``taylor``
act_calibration        "percentile"   activation-scale calibration of ``w8a8``: ``minmax`` |
                                      ``percentile``
act_percentile         99.99          percentile of |x| used by ``percentile``
int4_group_size        32             input channels per int4 scale
kd_temperature         2.0            KD softening temperature T
kd_alpha               0.9            weight of the KL term (1 − alpha: cross-entropy on labels)
kd_hidden_weight       0.0            weight of token (hidden-state) distillation, MSE on the final
                                      tokens normalised by the teacher's variance; 0 = off
kd_lr                  3e-4           AdamW learning rate of KD
kd_batch_size          64             KD batch size (train split only)
kd_precision           "float32"      the student's forward and backward during KD: ``float32`` or
                                      ``bfloat16`` (CPU autocast; about 2x faster per step where the
                                      CPU has native bfloat16, see ``bench/distill_precision.py``)
=====================  =============  ==============================================================
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from vitune.errors import ConfigError
from vitune.tables import Table, check_between, check_choice, check_int, is_number, key_path

LOWRANK_METHODS = ("svd", "aa", "aa-residual")
REFINE_SOLVERS = ("adam", "als")
PRUNE_CRITERIA = ("magnitude", "activation", "taylor")
ACT_CALIBRATIONS = ("minmax", "percentile")
KD_PRECISIONS = ("float32", "bfloat16")
# Settings added after studies were first recorded, with the value that does what vitune did
# before each existed: a study recorded without the key was made that way (its default may
# change later; this may not).
BEFORE_ADDED: Mapping[str, Any] = {"refine_solver": "adam", "kd_precision": "float32"}


@dataclass(frozen=True)
class CompressionMethods:
    lowrank: str = "aa-residual"
    residual_share: float = 0.25
    refine_solver: str = "als"  # Adam before stop 47: BEFORE_ADDED keeps studies recorded without the key on it
    refine_steps: int = 100
    refine_lr: float = 0.05
    damping: float = 1e-3
    calib_images: int = 256
    prune_criterion: str = "magnitude"
    act_calibration: str = "percentile"
    act_percentile: float = 99.99
    int4_group_size: int = 32
    kd_temperature: float = 2.0
    kd_alpha: float = 0.9
    kd_hidden_weight: float = 0.0
    kd_lr: float = 3e-4
    kd_batch_size: int = 64
    kd_precision: str = "float32"

    def __post_init__(self):
        self.validate()

    def validate(self, where: str = "methods") -> "CompressionMethods":
        def at(key: str) -> str:
            return key_path(where, key)

        check_choice(self.lowrank, LOWRANK_METHODS, at("lowrank"))
        check_choice(self.refine_solver, REFINE_SOLVERS, at("refine_solver"))
        check_choice(self.prune_criterion, PRUNE_CRITERIA, at("prune_criterion"))
        check_choice(self.act_calibration, ACT_CALIBRATIONS, at("act_calibration"))
        check_choice(self.kd_precision, KD_PRECISIONS, at("kd_precision"))
        check_between(self.residual_share, 0.0, 0.5, at("residual_share"), hi_open=False)
        check_between(self.refine_lr, 0.0, 1.0, at("refine_lr"), lo_open=True, hi_open=False)
        check_between(self.damping, 0.0, 1.0, at("damping"), lo_open=True, hi_open=False)
        check_between(self.act_percentile, 50.0, 100.0, at("act_percentile"), lo_open=True, hi_open=False)
        check_between(self.kd_temperature, 0.0, math.inf, at("kd_temperature"), lo_open=True)
        check_between(self.kd_alpha, 0.0, 1.0, at("kd_alpha"), hi_open=False)
        check_between(self.kd_hidden_weight, 0.0, math.inf, at("kd_hidden_weight"))
        check_between(self.kd_lr, 0.0, 1.0, at("kd_lr"), lo_open=True, hi_open=False)
        for name, lo in (("refine_steps", 0), ("calib_images", 1), ("int4_group_size", 2), ("kd_batch_size", 1)):
            check_int(getattr(self, name), at(name), lo)
        if self.int4_group_size % 2:
            raise ConfigError(f"{at('int4_group_size')}: must be even (two int4 values per byte), got {self.int4_group_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def as_recorded(cls, recorded: Mapping[str, Any]) -> dict[str, Any]:
        """A methods table recorded by an earlier vitune (a study's metadata), with the settings
        added since filled in: each by the value that does what vitune did before the setting
        existed (:data:`BEFORE_ADDED`), else its default. Unknown keys are kept as they are."""
        defaults = cls().to_dict()
        return {**defaults, **{k: v for k, v in BEFORE_ADDED.items() if k in defaults}, **recorded}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "methods") -> "CompressionMethods":
        """Read a ``[compression]`` table (or a configuration's ``methods`` object), naming ``where``
        and the key in errors; every check of :meth:`validate` is made with that location."""
        table = Table(data, where, tuple(f.name for f in fields(cls)))
        values, defaults = {}, cls()
        for key, value in table.data.items():
            want = type(getattr(defaults, key))
            if want is float and is_number(value):
                value = float(value)
            if not isinstance(value, want) or isinstance(value, bool):
                raise table.fail(key, want.__name__)
            values[key] = value
        made = object.__new__(cls)  # set and validated once, with this location in the errors
        for f in fields(cls):
            object.__setattr__(made, f.name, values.get(f.name, f.default))
        return made.validate(where)
