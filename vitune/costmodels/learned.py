"""The learned cost model: gradient-boosted trees on features of the candidate's TVM kernels.

Features (:func:`~vitune.costmodels.workloads.aggregate`): FLOPs, bytes and kernel count per
kind and dtype, summed over the kernels TVM runs for the candidate, read from the lowered
Relax/TIR of its workloads. The model is ``latency = base(features) · exp(trees(features))``:

* ``base`` — non-negative least squares on the features (time per FLOP, per byte, per kernel
  launch, of each kind), which extrapolates sensibly to shapes never seen;
* ``trees`` — XGBoost on ``log latency`` with ``log base`` as its base margin, learning what the
  linear part misses (cache effects, fast and slow kernel shapes).

The uncertainty is the out-of-fold spread of the log error (5-fold cross-validation at fit).
"""

from __future__ import annotations

import numpy as np

from vitune.costmodels.model import CostModel, register_cost_model
from vitune.costmodels.workloads import aggregate, feature_names

_PARAMS = {"objective": "reg:squarederror", "max_depth": 3, "eta": 0.05, "subsample": 0.8,
           "min_child_weight": 2, "lambda": 1.0, "seed": 0, "nthread": 1}
_ROUNDS = 300


def _base_columns() -> list[str]:
    return [n for n in feature_names() if not n.startswith("total.")]


def _matrix(rows: list[dict]) -> np.ndarray:
    names = feature_names()
    return np.array([[r[n] for n in names] for r in rows], dtype=np.float64)


@register_cost_model("learned")
class LearnedModel(CostModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.coef: list[float] = []
        self.col_scale: list[float] = []
        self.booster = None
        self.sigma_log = None

    # -- the linear base ------------------------------------------------------------------
    def _design(self, x: np.ndarray) -> np.ndarray:
        idx = [feature_names().index(n) for n in _base_columns()]
        return np.hstack([x[:, idx] / np.asarray(self.col_scale), np.ones((len(x), 1))])

    def _base(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(self._design(x) @ np.asarray(self.coef), 1e-6)

    def _fit_arrays(self, x: np.ndarray, y: np.ndarray):
        import xgboost as xgb
        from scipy.optimize import nnls

        idx = [feature_names().index(n) for n in _base_columns()]
        self.col_scale = [float(v) if v > 0 else 1.0 for v in np.abs(x[:, idx]).max(axis=0)]
        self.coef = [float(c) for c in nnls(self._design(x), y)[0]]
        data = xgb.DMatrix(x, label=np.log(y), base_margin=np.log(self._base(x)), feature_names=feature_names())
        self.booster = xgb.train(_PARAMS, data, num_boost_round=_ROUNDS)

    def _predict_arrays(self, x: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        data = xgb.DMatrix(x, base_margin=np.log(self._base(x)), feature_names=feature_names())
        return np.exp(self.booster.predict(data))

    # -- the contract ---------------------------------------------------------------------
    def fit(self, samples, context):
        cache = context.kernels
        x = _matrix([aggregate([k for w in s.workloads for k in cache.by_key(w)]) for s in samples])
        y = np.array([s.latency_ms for s in samples])
        if len(y) < 5:
            raise ValueError(f"the learned cost model needs at least 5 measured samples, got {len(y)}")
        folds = np.arange(len(y)) % 5
        errors = []
        for f in range(5):
            self._fit_arrays(x[folds != f], y[folds != f])
            errors.extend(np.log(self._predict_arrays(x[folds == f]) / y[folds == f]))
        self.sigma_log = float(np.std(errors))
        self._fit_arrays(x, y)
        self.fitted_samples = len(y)
        return self

    def _predict(self, candidate, context):
        from vitune.costmodels.workloads import model_kernels

        x = _matrix([aggregate(model_kernels(candidate, context.example, context.kernels))])
        latency = float(self._predict_arrays(x)[0])
        return latency, (latency * self.sigma_log if self.sigma_log is not None else None), "learned"

    def state(self) -> dict:
        raw = self.booster.save_raw("json").decode() if self.booster is not None else None
        return {"coef": self.coef, "col_scale": self.col_scale, "base_columns": _base_columns(),
                "sigma_log": self.sigma_log, "xgboost_model": raw, "params": _PARAMS, "rounds": _ROUNDS}

    def set_state(self, state: dict) -> None:
        import xgboost as xgb

        if state.get("base_columns") != _base_columns():
            raise ValueError("the saved linear base uses other feature columns; refit the model")
        self.coef, self.col_scale, self.sigma_log = state["coef"], state["col_scale"], state["sigma_log"]
        self.booster = None
        if state.get("xgboost_model"):
            self.booster = xgb.Booster()
            self.booster.load_model(bytearray(state["xgboost_model"].encode()))
