"""A study read once into plain records for reports: trials, front, reference, baselines, recipes.

No plotting and no heavy imports here (Optuna only): :mod:`vitune.reports.figures` draws from a
:class:`StudyView`, :mod:`vitune.reports.html` writes it out, ``vitune study show`` prints it.

A trial's *recipe* is what each layer got: ``{unit: {knob: value}}`` with knobs ``precision``,
``rank_fraction`` (linear layers), ``prune_heads`` (attention units) and ``prune_mlp`` (MLP
units); tied knobs are expanded to every layer they set, fixed knobs (a one-value menu) filled in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from vitune.errors import ConfigError, message_line
from vitune.search.records import has_metrics, metrics_of
from vitune.search.budgets import budgets_text, fits
from vitune.search.front import FrontTiming, accuracy_of, budgets_ms, front, front_timing, study_budgets, latency_of, speed_reference, target_names, uncompressed_trial

KNOBS = ("precision", "rank_fraction", "prune_heads", "prune_mlp")
PRECISION_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "w8a8": 8, "int4": 4}


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # complete | fail | pruned | running | waiting
    accuracy: float | None
    latency_ms: float | None
    params: int | None
    size_bytes: int | None
    summary: str
    origin: str  # "uncompressed", "uniform rank_fraction = 0.5", "guided (...)", "latency walk (...)", "refine: ..." or "sampled"
    reason: str  # why it failed or stopped early ("" otherwise)
    latencies: dict = field(default_factory=dict, compare=False)  # target → ms, the primary first
    recipe: dict = field(default_factory=dict, compare=False)
    ranks: dict = field(default_factory=dict, compare=False)  # linear unit → kept rank (None = full)
    duration_s: float | None = None
    cached_from: int | None = None
    within_budgets: bool = True  # a constrained study: within every budget of every target
    peak_memory_bytes: int | None = None  # the primary target's build at batch 1


@dataclass(frozen=True)
class StudyView:
    name: str
    storage: str
    mode: str
    budgets_ms: tuple  # per target, the primary first (None: no budget); () in a Pareto study
    meta: dict
    targets: tuple[str, ...]
    trials: tuple[TrialRow, ...]
    front: tuple[TrialRow, ...]
    reference: TrialRow | None
    checks: tuple[dict, ...]  # predicted vs measured latency of front members (predicted studies)
    units: dict  # knob → unit names carrying it, in model order
    speed_refs: dict = field(default_factory=dict)  # target → (ms, what it is): the speed-up reference
    budgets: tuple = ()  # per target, the primary first: vitune.search.budgets.Budget; () in a Pareto study
    side: FrontTiming = field(default_factory=FrontTiming)  # the front rebuilt, timed beside the baseline

    @property
    def budget_ms(self) -> float | None:
        """The primary target's budget (None: a Pareto study, or no budget on it)."""
        return self.budgets_ms[0] if self.budgets_ms else None

    @property
    def complete(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state == "complete" and t.accuracy is not None and t.latency_ms is not None]

    @property
    def baselines(self) -> list[TrialRow]:
        return [t for t in self.complete if t.origin.startswith("uniform")]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def feasible(self, row: TrialRow) -> bool:
        """Within every target's budgets (always, in a Pareto study)."""
        return row.within_budgets

    def budgets_text(self) -> str:
        return budgets_text(self.budgets, self.targets)

    def source_of(self, target: str) -> str:
        """How latency on ``target`` was read: measured, or the cost model's name."""
        also = {t["name"]: t.get("latency", "measured") for t in self.meta.get("also", [])}
        return also.get(target, self.meta.get("latency", "measured"))

    def counts_text(self) -> str:
        words = {"pruned": "stopped early", "fail": "failed"}
        return ", ".join(f"{n} {words.get(s, s)}" for s, n in sorted(self.counts().items())) or "no trials"

    def trial(self, number: int) -> TrialRow:
        for t in self.trials:
            if t.number == number:
                return t
        raise ConfigError(f"study {self.name!r} has no trial {number} (trials 0..{len(self.trials) - 1})")

    def speed_reference(self, target: str | None = None) -> tuple[float | None, str]:
        """(ms, what it is): the uncompressed model in the best runtime the target has, timed when
        the study started (older studies: the uncompressed trial, labelled so)."""
        return self.speed_refs.get(target or (self.targets[0] if self.targets else ""), (None, ""))

    def speedup(self, row: TrialRow, target: str | None = None) -> float | None:
        """How many times faster than the speed-up reference (on the primary target, or ``target``):
        on the primary target, for a trial the end of a run timed side by side with the baseline
        (:attr:`side`), from those rounds."""
        side = self.side.speedup(row.number) if target in (None, self.targets[0] if self.targets else None) else None
        if side is not None:
            return side
        base, _ = self.speed_reference(target)
        mine = row.latencies.get(target) if target is not None else row.latency_ms
        return base / mine if base and mine else None


def _space_of(study, trial) -> tuple[list, dict]:
    space = study.user_attrs.get("space")
    if space:
        return space["choices"], {name: members for name, members in space["ties"]}
    return [[n, [v]] for n, v in trial.params.items()], {}  # studies from before vitune 0.1 stored it


def recipe_of(trial, choices: list, ties: dict) -> dict:
    values = {}
    for name, menu in choices:
        values[name] = trial.params.get(name, menu[0] if len(menu) == 1 else None)
    for name, members in ties.items():
        value = values.pop(name, None)
        values.update({m: value for m in members})
    out: dict[str, dict] = {}
    for name, value in values.items():
        if ":" in name and value is not None:
            unit, knob = name.rsplit(":", 1)
            out.setdefault(unit, {})[knob] = value
    return out


def _row(trial, origin_of_number: dict, choices, ties, targets: tuple, budgets: tuple) -> TrialRow:
    primary = targets[0]
    attrs = trial.user_attrs
    metrics = metrics_of(trial)
    state = trial.state.name.lower()
    complete = state == "complete" and has_metrics(trial)
    try:
        config = json.loads(attrs["config"]) if "config" in attrs else {}
    except json.JSONDecodeError:
        config = {}
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    latency = metrics.latency_ms
    return TrialRow(
        number=trial.number,
        state=state,
        accuracy=metrics.accuracy if complete else None,
        latency_ms=latency,
        latencies=dict(metrics.latencies_ms or ({primary: latency} if latency is not None else {})),
        params=metrics.params,
        size_bytes=metrics.size_bytes,
        summary=attrs.get("summary", ""),
        origin=attrs.get("origin") or origin_of_number.get(attrs.get("cached_from"), "sampled"),
        reason=attrs.get("error") or attrs.get("pruned") or "",
        recipe=recipe_of(trial, choices, ties),
        ranks={k: v.get("rank") for k, v in config.get("linear", {}).items()},
        duration_s=duration,
        cached_from=attrs.get("cached_from"),
        within_budgets=fits(budgets, metrics, targets),
        peak_memory_bytes=metrics.peak_memory_bytes,
    )


def load_view(spec) -> StudyView:
    """Read the study named in ``spec`` (a :class:`~vitune.search.studyfile.StudySpec`)."""
    from vitune.search.study import open_study

    study = open_study(spec, create=False)
    trials = study.get_trials(deepcopy=False)
    origins = {t.number: t.user_attrs["origin"] for t in trials if t.user_attrs.get("origin")}
    choices, ties = _space_of(study, trials[0]) if trials else ([], {})
    meta = study.user_attrs.get("vitune", {})
    names = target_names(study) if meta else (spec.target.name,)
    budgets = study_budgets(study)
    rows = {t.number: _row(t, origins, choices, ties, names, budgets) for t in trials}
    ref = uncompressed_trial(study)
    units: dict[str, list[str]] = {k: [] for k in KNOBS}
    for name, _ in choices:
        for unit in ties.get(name, [name]):
            if ":" in unit:
                u, knob = unit.rsplit(":", 1)
                if knob in units and u not in units[knob]:
                    units[knob].append(u)
    checks = [{"trial": int(n), **c} for n, c in sorted(study.user_attrs.get("latency_checks", {}).items(), key=lambda kv: int(kv[0]))]
    return StudyView(
        name=spec.name, storage=spec.storage, mode=meta.get("mode", spec.search.mode), budgets_ms=budgets_ms(study), budgets=budgets, meta=meta, targets=names, trials=tuple(rows[t.number] for t in trials),
        front=tuple(rows[t.number] for t in front(study)), reference=rows[ref.number] if ref else None,
        checks=tuple(checks), units={k: v for k, v in units.items() if v},
        speed_refs={n: speed_reference(study, n) for n in names} if meta else {},
        side=front_timing(study),
    )


# -- text -----------------------------------------------------------------------------------
_BLOCK = re.compile(r"^(.*?blocks\.(\d+))\.?(.*)$")


def _cell(row: TrialRow, unit: str) -> str:
    r = row.recipe.get(unit, {})
    parts = []
    if "precision" in r:
        parts.append(str(r["precision"]))
    if "rank_fraction" in r:
        rank = row.ranks.get(unit)
        parts.append("full" if float(r["rank_fraction"]) >= 1.0 or rank is None else f"r{rank}")
    for knob in ("prune_heads", "prune_mlp"):
        if knob in r:
            parts.append("keep all" if not r[knob] else f"-{100 * float(r[knob]):.0f}%")
    return " ".join(parts) or "-"


def recipe_table(row: TrialRow) -> tuple[list[str], list[list[str]]]:
    """The recipe as a table: one row per transformer block, one column per unit role."""
    roles: list[str] = []
    blocks: dict[str, dict[str, str]] = {}
    for unit in row.recipe:
        m = _BLOCK.match(unit)
        block, role = (m.group(2), m.group(3) or "block") if m else ("-", unit)
        if role not in roles:
            roles.append(role)
        blocks.setdefault(block, {})[role] = _cell(row, unit)
    prefix = {}
    for role in roles:
        prefix.setdefault(role.split(".")[0], len(prefix))
    seen = {r: i for i, r in enumerate(roles)}
    roles = sorted(roles, key=lambda r: (prefix[r.split(".")[0]], seen[r]))
    order = sorted(blocks, key=lambda b: (not b.isdigit(), int(b) if b.isdigit() else 0, b))
    return ["block", *roles], [[b, *(blocks[b].get(r, "") for r in roles)] for b in order]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), *(line(r) for r in rows)])


def describe(view: StudyView, row: TrialRow) -> str:
    speed = view.speedup(row)
    parts = [f"trial {row.number}", f"accuracy {row.accuracy:.4f}" if row.accuracy is not None else "accuracy -",
             f"latency {row.latency_ms:.4f} ms" if row.latency_ms is not None else "latency -"]
    if speed and row.number in view.side.shipped_ms:
        parts.append(f"{speed:.2f}x the speed of the uncompressed model in {view.side.label} (timed side by side, as shipped)")
    elif speed:
        parts.append(f"{speed:.2f}x the speed of {view.speed_reference()[1]}")
    if row.params:
        parts.append(f"{row.params:,} params")
    return ", ".join(parts) + f" ({row.origin})"


def param_importances(spec, limit: int = 15) -> tuple[dict[str, dict[str, float]], str]:
    """Which layer choices matter most, per objective (Optuna's fANOVA, seeded): the ``limit``
    most important parameters for accuracy and for latency, and a reason when it cannot be said."""
    import optuna

    from vitune.search.study import open_study

    study = open_study(spec, create=False)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and has_metrics(t)]
    if len(done) < 4:
        return {}, f"parameter importance needs at least 4 complete trials (the study has {len(done)})"
    out = {}
    for label, value in (("accuracy", accuracy_of), ("latency_ms", latency_of)):
        try:
            scores = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=value)
        except (RuntimeError, ValueError) as err:
            return {}, f"parameter importance could not be computed: {message_line(err, last=False)}"
        out[label] = dict(sorted(scores.items(), key=lambda kv: -kv[1])[:limit])
    return out, ""
