"""What ``vitune costmodel fit`` and ``eval`` do: sample, measure, fit, save; measure held-out, score.

``--model`` names what the cost model is about: a study file (its model, its calibration split,
its search space and tuning mode), ``default`` (the embedded digits ViT with the default
space) or a timm model name (random init; latency does not depend on the weights).
Measurements go to the target's sample store (fit) or held-out store (eval): re-running
either reuses them, and a held-out configuration is never one the models were fitted on.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

from vitune.costmodels.model import default_path, load_cost_model
from vitune.costmodels.samples import CostContext, SampleStore
from vitune.errors import ConfigError
from vitune.targets.tuning import default_tuning

FIT_KINDS = ("lut", "learned", "analytical")
HELD_OUT_SEED = 1_000_003


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """``--kinds lut,learned`` → the kinds in that order; None or empty → every kind."""
    from vitune.costmodels.model import cost_model_kinds

    if not text:
        return FIT_KINDS
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    known = cost_model_kinds()
    unknown = [k for k in kinds if k not in known]
    if unknown or not kinds:
        raise ConfigError(f"--kinds: unknown cost model kind(s) {', '.join(map(repr, unknown)) or repr(text)} (expected some of {', '.join(known)})")
    return kinds


def make_context(model: str, target: str, tuning: str | None = None, img_size: int = 0, progress: bool = True) -> CostContext:
    from pathlib import Path

    from vitune.models.layers import discover
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import ModelSpec, SpaceSpec, load_study_file
    from vitune.targets import load_target

    profile = load_target(target)
    if model.endswith(".toml") or Path(model).is_file():
        from vitune.models.zoo import load_workspace

        spec = load_study_file(model)
        ws = load_workspace(spec.model, spec.data, progress=progress)
        space = SearchSpace.build(spec.space, discover(ws.model), spec.methods, where=str(spec.path))
        return CostContext(profile, ws.model, ws.example_input(1), space, tuning or spec.target.tuning)
    from vitune.models.default import RECIPES

    if model == "default" or model in RECIPES:  # an embedded model ("default": the study files' default name)
        from vitune.data.digits import load_digits_splits
        from vitune.models.default import load_or_train_default

        recipe = RECIPES[ModelSpec.name if model == "default" else model]
        net, _ = load_or_train_default(load_digits_splits(0, recipe.image_size), recipe, progress=progress)
        example_shape = (1, 1, recipe.image_size, recipe.image_size)
    else:
        from vitune.models.zoo import _timm_model

        net = _timm_model(ModelSpec(source="timm", name=model, img_size=img_size))
        example_shape = (1, *net.pretrained_cfg.get("input_size", (3, 224, 224)))
        if img_size:
            example_shape = (1, example_shape[1], img_size, img_size)
    import torch

    example = torch.randn(example_shape, generator=torch.Generator().manual_seed(0))
    space = SearchSpace.build(SpaceSpec(), discover(net))
    return CostContext(profile, net, example, space, tuning or default_tuning(profile))


def collect(context: CostContext, store: SampleStore, n: int, seed: int, exclude=frozenset(), progress: bool = True, log=print) -> list:
    """Measure random configurations until ``store`` holds ``n`` samples; returns all ``n``."""
    from tqdm.auto import tqdm

    have = store.load()
    if store.stale:
        log(f"{store.stale} sample(s) in {store.path} were measured with kernels the tuning database has changed since "
            "(untuned then, or a shipped schedule): left out, and configurations measured again in their place")
    if len(have) >= n:
        return have[:n]
    known = set(exclude) | {s.config_key for s in have}
    configs = context.random_configs(n - len(have), seed + len(have), exclude=known)
    failed = 0
    with tqdm(total=len(configs), desc=f"measuring on {context.profile.name}", unit="config", disable=None if progress else True) as bar:
        for start in range(0, len(configs), context.batch):  # built, then timed together in interleaved rounds
            batch = configs[start:start + context.batch]
            for config, (sample, error) in zip(batch, context.measure_configs(batch, seed)):
                if sample is None:
                    failed += 1
                    log(f"config {config.key} failed: {error}")
                    continue
                store.append(sample)
                have.append(sample)
            bar.update(len(batch))
    context.kernels.save()
    if failed:
        log(f"{failed} configuration(s) failed to measure; they are left out")
    return have


def fit_models(context: CostContext, samples: list, kinds=FIT_KINDS, save: bool = True, log=print) -> dict:
    from vitune.costmodels.model import cost_model_class

    models = {}
    for kind in kinds:
        t0 = time.perf_counter()
        model = cost_model_class(kind).for_context(context)
        model.fit(samples, context)
        if save:
            path = model.save(default_path(context, kind))
            log(f"{kind}: fitted on {model.fitted_samples} samples in {time.perf_counter() - t0:.1f} s -> {path}")
        models[kind] = model
    context.kernels.save()
    return models


def load_models(context: CostContext, kinds=FIT_KINDS) -> dict:
    models = {}
    for kind in kinds:
        path = default_path(context, kind)
        if not path.is_file():
            raise ConfigError(
                f"no {kind} cost model for target {context.profile.name} (tuning {context.tuning}) and this model "
                f"at {path}; run 'vitune costmodel fit {context.profile.name} --model ...' first"
            )
        models[kind] = load_cost_model(path)
    return models


@dataclass
class EvalRow:
    kind: str
    label: str
    n: int
    mape: float
    within_10: float
    spearman: float
    predict_ms: float  # mean prediction time, the model's inputs already cached
    measure_s: float  # mean measurement time of the same configurations
    warmup_s: float = 0.0  # first-sight work done during eval (table entries measured, workloads lowered)
    predictions: list = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.measure_s * 1e3 / self.predict_ms if self.predict_ms > 0 else math.inf


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def evaluate(context: CostContext, models: dict, held_out: list, log=print) -> list[EvalRow]:
    """Score each model on measured held-out samples: MAPE, share within ±10 %, Spearman, cost."""
    from vitune.compression.config import CompressionConfig

    candidates = [context.build(CompressionConfig.from_json(s.config)) for s in held_out]
    measured = [s.latency_ms for s in held_out]
    measure_s = statistics.mean(s.measure_s for s in held_out)
    rows = []
    for kind, model in models.items():
        t0 = time.perf_counter()
        model.warm(candidates, context)
        for c in candidates:  # first sight: fills the block table / kernel cache
            model.predict(c, context)
        warm = time.perf_counter() - t0
        preds, times = [], []
        for c in candidates:
            p = model.predict(c, context)
            if not p.ok:
                raise RuntimeError(p.error)
            preds.append(p.latency_ms)
            times.append(p.seconds)
        errors = [abs(p - m) / m for p, m in zip(preds, measured)]
        rows.append(EvalRow(
            kind, model.label(), len(preds), 100 * statistics.mean(errors), 100 * sum(e <= 0.10 for e in errors) / len(errors),
            spearman(preds, measured), 1e3 * statistics.mean(times), measure_s, warm, preds,
        ))
    context.kernels.save()
    return rows


def format_rows(rows: list[EvalRow]) -> str:
    lines = [f"{'model':<28} {'n':>3} {'MAPE %':>7} {'<=10 %':>7} {'Spearman':>8} {'predict ms':>10} {'measure s':>9} {'cheaper':>9} {'first-sight s':>13}"]
    for r in rows:
        lines.append(
            f"{r.label:<28} {r.n:>3} {r.mape:>7.2f} {r.within_10:>7.1f} {r.spearman:>8.4f} {r.predict_ms:>10.3f} "
            f"{r.measure_s:>9.2f} {r.speedup:>8.0f}x {r.warmup_s:>13.1f}"
        )
    return "\n".join(lines)


def run_fit(context: CostContext, samples: int, progress: bool = True, log=print, kinds=FIT_KINDS) -> dict:
    store = context.store()
    have = collect(context, store, samples, seed=0, progress=progress, log=log)
    log(f"{len(have)} measured samples of model {context.key} on {context.profile.name} (tuning {context.tuning}) in {store.path}")
    return fit_models(context, have, kinds=kinds, log=log)


def noise_floor(context: CostContext, held_out: list, k: int) -> EvalRow:
    """Measure ``k`` held-out configurations again: how well one measurement predicts the next."""
    from vitune.compression.config import CompressionConfig

    first, again, spent = [], [], []
    checked = held_out[:k]
    for s, (sample, _) in zip(checked, context.measure_configs([CompressionConfig.from_json(s.config) for s in checked])):
        if sample is None:
            continue
        first.append(s.latency_ms)
        again.append(sample.latency_ms)
        spent.append(sample.measure_s)
    errors = [abs(a - m) / m for a, m in zip(again, first)]
    return EvalRow(
        "remeasured", "measured again (noise)", len(errors), 100 * statistics.mean(errors), 100 * sum(e <= 0.10 for e in errors) / len(errors),
        spearman(again, first), 1e3 * statistics.mean(spent), statistics.mean(spent), 0.0, again,
    )


def run_eval(context: CostContext, samples: int, progress: bool = True, log=print, recheck: int = 0, kinds=FIT_KINDS) -> tuple[list[EvalRow], list]:
    from vitune.costmodels.analytical import AnalyticalModel

    models = load_models(context, kinds)
    if "analytical" in kinds:
        models["analytical-uncalibrated"] = AnalyticalModel.for_context(context)
    fitted_on = {s.config_key for s in context.store().load()}
    store = context.store("heldout")
    held_out = [s for s in collect(context, store, samples, HELD_OUT_SEED, exclude=fitted_on, progress=progress, log=log) if s.config_key not in fitted_on]
    log(f"{len(held_out)} held-out configurations measured ({store.path}); none was used for fitting")
    rows = evaluate(context, models, held_out, log=log)
    if recheck:
        rows.append(noise_floor(context, held_out, recheck))
    return rows, held_out
