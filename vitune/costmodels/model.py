"""The cost-model seam: fit on measured samples, predict a candidate's ``latency_ms``, save, load.

Contract of a :class:`CostModel` (kinds register with :func:`register_cost_model`):

* ``fit(samples, context) → self`` — learn from :class:`~vitune.costmodels.samples.Sample`
  records measured on ``context``'s target (it may measure more, e.g. missing table entries);
* ``predict(candidate, context) → Prediction`` — the latency of ``candidate`` (a compressed model,
  i.e. a per-layer configuration applied to the original) on ``context``'s target, in
  milliseconds, with an uncertainty where the model has one. It **never raises** for a bad
  candidate (the error comes back in the record); it raises :class:`ConfigError` only when asked
  to predict for a target other than the one it was fitted on, unless
  ``allow_other_target=True``;
* ``save(path)`` / :func:`load_cost_model` — one JSON file: schema version, kind, the target
  (name and key), tuning mode, model key, the feature specification, the library versions it
  was fitted with, and the fitted state. Loading checks the schema version.

The fitted state is plain numbers (and, for the learned model, XGBoost's own JSON), so a file
moves between machines and Python versions.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitune.errors import ConfigError

SCHEMA_VERSION = 1
_KINDS: dict[str, type] = {}


def register_cost_model(kind: str):
    def wrap(cls):
        if kind in _KINDS:
            raise ValueError(f"cost model {kind!r} is already registered")
        cls.kind = kind
        _KINDS[kind] = cls
        return cls

    return wrap


def _builtin() -> dict[str, type]:
    import vitune.costmodels.analytical  # noqa: F401  (registers)
    import vitune.costmodels.learned  # noqa: F401
    import vitune.costmodels.lut  # noqa: F401

    return _KINDS


def cost_model_class(kind: str) -> Any:
    kinds = _builtin()
    if kind not in kinds:
        raise ConfigError(f"unknown cost model {kind!r} (known: {', '.join(sorted(kinds))})")
    return kinds[kind]


def cost_model_kinds() -> list[str]:
    return sorted(_builtin())


def fit_positive_line(xs, latencies) -> tuple[float, float, float]:
    """(scale, overhead, ratio) of measured latencies against a model's raw estimates ``xs`` (> 0):
    the least-squares line where it is positive over every sample, else the proportional fit
    (``ratio``, overhead 0). Noisy timings of models of about one size can tilt a free line to a
    negative slope or a negative value at the small end; a latency is never zero or less, so a
    prediction whose line reads zero or less falls back to ``ratio`` (:func:`positive`)."""
    x, y = np.asarray(xs, dtype=float), np.asarray(latencies, dtype=float)
    ratio = float(np.dot(x, y) / np.dot(x, x))
    if len(x) >= 3 and np.ptp(x) > 0:
        scale, overhead = (float(v) for v in np.polyfit(x, y, 1))
        if scale > 0 and scale * float(x.min()) + overhead > 0:
            return scale, overhead, ratio
    return ratio, 0.0, ratio


def positive(scale: float, overhead: float, ratio: float, x: float) -> float:
    """The fitted line at ``x``, or the proportional fit where the line reads zero or less."""
    line = scale * x + overhead
    return line if line > 0 else ratio * x


@dataclass(frozen=True)
class Prediction:
    latency_ms: float | None = None
    uncertainty_ms: float | None = None  # one standard deviation, where the model has one
    error: str | None = None
    label: str = ""  # e.g. "lut", "analytical (uncalibrated)"
    seconds: float = 0.0  # what predicting cost

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency_ms is not None


class CostModel:
    kind = "base"

    def __init__(self, target: str = "", target_key: str = "", tuning: str = "off", model_key: str = ""):
        self.target, self.target_key, self.tuning, self.model_key = target, target_key, tuning, model_key
        self.fitted_samples = 0
        self.meta: dict = {}

    # -- identity ------------------------------------------------------------------------
    @classmethod
    def for_context(cls, context) -> "CostModel":
        return cls(context.profile.name, context.directory.name, context.tuning, context.key)

    def check_target(self, context, allow_other_target: bool = False) -> None:
        if allow_other_target:
            return
        if self.target_key != context.directory.name:
            raise ConfigError(
                f"this {self.kind} cost model was fitted on target {self.target!r} ({self.target_key}), "
                f"not {context.profile.name!r} ({context.directory.name}: its TVM target, host or timing "
                "protocol differ); fit one for that target "
                "(vitune costmodel fit) or pass allow_other_target=True to use it anyway"
            )
        if self.tuning != context.tuning:
            raise ConfigError(
                f"this {self.kind} cost model predicts tuning = {self.tuning!r} latencies, not {context.tuning!r}"
            )

    # -- the contract --------------------------------------------------------------------
    def fit(self, samples, context) -> "CostModel":
        raise NotImplementedError

    def _predict(self, candidate, context) -> tuple[float, float | None, str]:
        raise NotImplementedError

    def label(self) -> str:
        return self.kind

    def warm(self, candidates, context) -> None:
        """Do the first-sight work of predicting ``candidates`` in one go (optional: a table
        measures its missing entries together). :meth:`predict` does it anyway when needed."""

    def predict(self, candidate, context, allow_other_target: bool = False) -> Prediction:
        self.check_target(context, allow_other_target)
        t0 = time.perf_counter()
        try:
            latency, sigma, label = self._predict(candidate, context)
        except ConfigError:
            raise
        except Exception as err:  # a prediction is a record, never an exception into the search
            return Prediction(error=f"{self.kind} prediction failed: {type(err).__name__}: {err}", label=self.label())
        return Prediction(latency, sigma, None, label, time.perf_counter() - t0)

    # -- persistence ---------------------------------------------------------------------
    def state(self) -> dict:
        raise NotImplementedError

    def set_state(self, state: dict) -> None:
        raise NotImplementedError

    def save(self, path: Path) -> Path:
        from vitune.costmodels.workloads import FEATURE_SPEC_VERSION, feature_names
        from vitune.versions import versions

        libs = versions()
        try:
            import xgboost

            libs["xgboost"] = xgboost.__version__
        except ImportError:
            pass
        doc = {
            "schema": SCHEMA_VERSION, "kind": self.kind, "target": self.target, "target_key": self.target_key,
            "tuning": self.tuning, "model_key": self.model_key, "fitted_samples": self.fitted_samples,
            "feature_spec": {"version": FEATURE_SPEC_VERSION, "features": feature_names()},
            "versions": libs, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "meta": self.meta, "state": self.state(),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(tmp, path)
        return path


def load_cost_model(path: Path) -> CostModel:
    """Load a saved cost model; a wrong schema, kind or feature version is a one-line error."""
    from vitune.costmodels.workloads import FEATURE_SPEC_VERSION

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cost model file {path} does not exist")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a cost model file ({err})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_VERSION:
        raise ConfigError(f"{path}: cost model schema {doc.get('schema') if isinstance(doc, dict) else '?'!r}, this vitune reads {SCHEMA_VERSION}")
    if doc.get("kind") not in _builtin():
        raise ConfigError(f"{path}: unknown cost model kind {doc.get('kind')!r} (known: {', '.join(cost_model_kinds())})")
    if doc.get("feature_spec", {}).get("version") != FEATURE_SPEC_VERSION:
        raise ConfigError(f"{path}: fitted with feature specification {doc.get('feature_spec', {}).get('version')!r}, this vitune uses {FEATURE_SPEC_VERSION}; refit it")
    model = _KINDS[doc["kind"]](doc["target"], doc["target_key"], doc["tuning"], doc["model_key"])
    model.fitted_samples = doc.get("fitted_samples", 0)
    model.meta = doc.get("meta", {})
    try:
        model.set_state(doc["state"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: the fitted state of this {doc['kind']} model is unreadable ({err}); refit it") from None
    return model


def default_path(context, kind: str) -> Path:
    """Where ``vitune costmodel fit`` saves (and a study looks for) a model of ``kind``."""
    return context.directory / f"{kind}-{context.tuning}-{context.key}.json"
