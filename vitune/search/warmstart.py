"""Warm start: a per-layer sensitivity sweep, and the first trials it suggests.

The sweep evaluates, for every free parameter of the space (a layer's knob, or a tied group),
every option alone, every other parameter left uncompressed: its validated accuracy (one
compression and one pass over the split, no build). It also evaluates each *uniform*
configuration (one option on every layer whose menu has it) with latency, through the
evaluator, so those results land in the result cache and the enqueued uniform trials are free.

A parameter's latency saving is estimated from its uniform configuration's saving, shared out
by the parameter's weight (its layers' ``in × out``; one per block for pruning knobs). The
guided configurations are greedy picks: options sorted by estimated saving per point of accuracy
lost, taken while the summed loss stays within a budget; one configuration per budget in
:data:`DROP_BUDGETS`.

The sweep is saved under ``<cache>/sweeps/`` keyed by model weights, space, methods, data split,
target and latency source, and reused by every later study with the same key. Its single-option
rows are accuracies, which no target, seed file or latency source changes: they are saved as they
are measured in a table of their own (``sweeps/options-<key>.json``, keyed by model weights,
space, methods and data split with the code that compresses and evaluates), so an interrupted
sweep resumes where it stopped, and a sweep for another target, a new seed file or a change to
how vitune builds measures only its uniform configurations again (on DeiT at 224 px the options
are 40 minutes, the uniform configurations a few builds).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from vitune.jsontable import JsonTable

DROP_BUDGETS = (0.005, 0.01, 0.02, 0.04, 0.08)
WALK_FRACTIONS = (1.0, 0.85, 0.7, 0.5, 0.3)  # shares of the walk's whole estimated saving, fastest first
# The warm start's walk points: steps back from the walk's end, one at a time near it, then
# doubling (see walked_from_end)
WALK_BACK = (0, 1, 2, 4, 8, 16, 32)
WALK_SHARES = 100  # the warm start's dense walk: this many evenly spaced shares of its saving (walked_densely)
# The warm start's rank-allocation points: shares of the menu walk's whole parameter saving, the
# most compressed first and densest there (see rank_allocated): on the quickstart the walk keeps
# 10 % of the parameters at its end and 18 % at 0.9, and the seeds' greedy allocation's front
# (search bench, Zen 3) lay between the two
ALLOC_SHARES = (1.0, 0.97, 0.94, 0.9, 0.85, 0.75, 0.6, 0.4)


def knob_levels(space) -> dict[str, list]:
    """Each free knob (precision, rank_fraction, ...) → every value some layer's menu offers."""
    levels: dict[str, list] = {}
    for name, menu in space.choices:
        if len(menu) > 1 and name != "distill_steps":
            values = levels.setdefault(name.rsplit(":", 1)[-1], [])
            values.extend(v for v in menu if v not in values)
    return levels


def uniform_assignment(space, assignment: dict) -> dict:
    """Parameters with each knob of ``assignment`` set to its value on every layer whose menu has
    it (the rest uncompressed)."""
    params = space.identity_params()
    for name, menu in space.choices:
        knob = name.rsplit(":", 1)[-1]
        if knob in assignment and assignment[knob] in menu and len(menu) > 1:
            params[name] = assignment[knob]
    return params


def uniform_params(space) -> list[tuple[str, object, dict]]:
    """(knob, value, params) for each single knob value applied to every layer that allows it."""
    out, seen = [], [space.identity_params()]
    for knob, values in sorted(knob_levels(space).items()):
        for value in sorted(values, key=str):
            params = uniform_assignment(space, {knob: value})
            if params not in seen:
                seen.append(params)
                out.append((knob, value, params))
    return out


def _weight(space, name: str) -> float:
    unit_names = dict(space.ties).get(name, (name,))
    weights = {u.name: u.in_features * u.out_features for u in space.layout.linears}
    return float(sum(weights.get(n.rsplit(":", 1)[0], 1) for n in unit_names))


def sweep_key(workspace, space, evaluator, spec) -> str:
    from vitune.search.cache import data_key, target_key

    doc = {
        "model": workspace.ref.checkpoint_sha256, "choices": [[n, list(m)] for n, m in space.choices],
        "ties": [list(t) for t in space.ties], "methods": space.methods.to_dict(),
        "data": data_key(spec.data, evaluator.split), "target": target_key(evaluator.profile, spec.target.tuning, spec.target.seeds),
        "latency": evaluator.latency_source.name,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def options_key(workspace, space, evaluator, spec) -> str:
    """The key of the sweep's single-option rows: what decides a compressed model's validated
    accuracy (weights, space, methods, data split and the code, in :func:`data_key`), not the
    target nor how latency is measured."""
    from vitune.search.cache import data_key

    doc = {
        "model": workspace.ref.checkpoint_sha256, "choices": [[n, list(m)] for n, m in space.choices],
        "ties": [list(t) for t in space.ties], "methods": space.methods.to_dict(), "data": data_key(spec.data, evaluator.split),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sweep_table(workspace, space, evaluator, spec) -> JsonTable:
    from vitune.paths import cache_dir

    return JsonTable(cache_dir() / "sweeps" / f"{sweep_key(workspace, space, evaluator, spec)}.json")


def _options_table(workspace, space, evaluator, spec) -> JsonTable:
    from vitune.paths import cache_dir

    return JsonTable(cache_dir() / "sweeps" / f"options-{options_key(workspace, space, evaluator, spec)}.json")


def cached_sweep(workspace, space, evaluator, spec) -> dict | None:
    """The sweep of this model and space where this machine's cache holds it complete, else None
    (nothing is evaluated)."""
    table = _sweep_table(workspace, space, evaluator, spec)
    return table.data if table.get("complete") else None


def option_key(name: str, value) -> str:
    """The key of one option's row in a sweep's saved progress."""
    return json.dumps([name, value], default=str)


def sweep_options(items, measure, table: JsonTable, on_row=lambda i, row, reused: None) -> list[dict]:
    """One row per (parameter, value) of ``items``: ``measure(name, value)`` → validated accuracy
    (None where it failed). Each row is saved to ``table`` (key ``progress``) as soon as it is
    measured, and rows saved there by an earlier, interrupted sweep are reused: on DeiT-B a row
    is a minute's compression and accuracy pass, and a sweep is tens of them. ``on_row(i, row,
    reused)`` is called after each (for progress)."""
    done = dict(table.get("progress") or {})
    rows = []
    for i, (name, value) in enumerate(items):
        key = option_key(name, value)
        reused = key in done
        if not reused:
            done[key] = {"param": name, "value": value, "accuracy": measure(name, value)}
            table.put("progress", done)
            table.save()
        rows.append(done[key])
        on_row(i, done[key], reused)
    return rows


def rank_groups(space) -> dict[str, tuple[tuple[str, ...], tuple[float, ...]]]:
    """The space's free rank parameters: name → (its linear layers, its menu of fractions)."""
    ties = dict(space.ties)
    return {name: (tuple(n.rsplit(":", 1)[0] for n in ties.get(name, (name,))), tuple(float(v) for v in menu))
            for name, menu in space.choices if name.endswith(":rank_fraction") and len(menu) > 1}


def allocation_rows(workspace, space) -> list[dict]:
    """The greedy rank allocation walked on the space's rank menus
    (:func:`vitune.compression.allocate.menu_rank_walk`, the seeds' hardware-blind allocation of
    arXiv 2402.06004 restricted to what the search can express): one row per step, ``params``
    (the space's parameters) and ``kept`` (share of the model's parameters kept)."""
    from vitune.compression.allocate import menu_rank_walk
    from vitune.compression.calibrate import Calibration

    groups = rank_groups(space)
    if not groups:
        return []
    calib = Calibration.from_dataset(workspace.data.calib, space.methods.calib_images)
    identity = space.identity_params()
    return [{"params": {**identity, **fractions}, "kept": kept}
            for kept, fractions in menu_rank_walk(workspace.model, space.layout, calib.x, groups, space.methods)]


def rank_allocated(sweep: dict, shares=ALLOC_SHARES) -> list[tuple[dict, float]]:
    """(configuration, share of the parameters kept) where the sweep's rank-allocation walk first
    saves each share of its whole parameter saving (distinct configurations, in the order of
    ``shares``)."""
    # before its first step the walk keeps every parameter
    return at_shares([(r["kept"], r["params"]) for r in sweep.get("allocation") or []], 1.0, shares)


def at_shares(walk: list[tuple[float, dict]], start: float, shares) -> list[tuple[dict, float]]:
    """(configuration, value) at the first step of ``walk`` — ``(value, configuration)`` pairs
    whose value falls from ``start`` to its last step's — where the value has fallen by each of
    ``shares`` of that whole fall (distinct configurations, in the order of ``shares``)."""
    if not walk:
        return []
    end = walk[-1][0]
    out: list[tuple[dict, float]] = []
    for f in shares:
        value, params = next((v, p) for v, p in walk if v <= start - f * (start - end) + 1e-12)
        if all(params != p for p, _ in out):
            out.append((params, value))
    return out


def run_sweep(workspace, space, evaluator, spec, progress: bool = True, log=print) -> dict:
    """The sensitivity sweep of this model and space (computed once, then read from the cache;
    an interrupted sweep resumes from the options it had measured). With ``progress`` and no
    terminal, one line per step instead of a bar."""
    import time

    from tqdm.auto import tqdm

    from vitune.data.splits import accuracy

    table = _sweep_table(workspace, space, evaluator, spec)
    if table.get("complete"):
        if "allocation" not in table.data:  # saved by a version without the rank allocation's walk
            table.put("allocation", allocation_rows(workspace, space))
            table.save()
        return table.data
    identity = space.identity_params()
    items = [(name, v) for name, menu in space.choices if len(menu) > 1 and name != "distill_steps"
             for v in menu if v != identity.get(name)]
    uniform = uniform_params(space)
    total = len(items) + len(uniform) + 1
    bar = tqdm(total=total, desc="sensitivity sweep", unit="eval", disable=None if progress else True)
    lines = bar.disable and progress  # not a terminal: a line per step
    t0 = time.perf_counter()
    done = 0  # counted here: a disabled bar (no terminal) counts nothing

    def step(what: str) -> None:
        nonlocal done
        done += 1
        bar.update(1)
        if lines:
            log(f"sensitivity sweep {done}/{total}: {what} ({time.perf_counter() - t0:.0f} s)")

    base = evaluator.evaluate(space.to_config(identity))
    if not base.ok:
        bar.close()
        raise RuntimeError(f"the uncompressed model could not be evaluated: {base.error or base.pruned}")
    step(f"uncompressed, accuracy {base.metrics.accuracy:.4f}")
    split = workspace.data.get(evaluator.split)

    def measure(name: str, value) -> float | None:
        try:
            return accuracy(evaluator.compress(space.to_config({**identity, name: value})), split)
        except Exception as err:  # an option that cannot be applied is left out of the guidance
            log(f"sensitivity sweep: {name} = {value!r} failed ({type(err).__name__}: {err}); left out")
            return None

    def shown(i: int, row: dict, reused: bool) -> None:
        acc = "failed" if row["accuracy"] is None else f"accuracy {row['accuracy']:.4f}"
        step(f"{row['param']} = {row['value']!r} alone, {acc}" + (" (saved by an earlier run)" if reused else ""))

    rows = _options_table(workspace, space, evaluator, spec)
    if table.get("progress") and not rows.get("progress"):  # saved by a version that kept them with the sweep
        rows.put("progress", table.get("progress"))
        rows.save()  # kept even where every row is reused below (then nothing else saves the table)
    options = sweep_options(items, measure, rows, shown)
    uniform_rows = []
    for knob, value, params in uniform:
        r = evaluator.evaluate(space.to_config(params))
        uniform_rows.append({"knob": knob, "value": value, "params": params, "accuracy": r.metrics.accuracy,
                             "latency_ms": r.metrics.latency_ms, "error": r.error or r.pruned})
        step(f"{knob} = {value!r} on every layer, " + (f"failed: {r.error or r.pruned}" if not r.ok else
                                                        f"accuracy {r.metrics.accuracy:.4f}, {r.metrics.latency_ms:.4f} ms"))
    bar.close()
    for k, v in {"identity": {"accuracy": base.metrics.accuracy, "latency_ms": base.metrics.latency_ms},
                 "options": options, "uniform": uniform_rows, "allocation": allocation_rows(workspace, space), "complete": True}.items():
        table.put(k, v)
    table.save()
    return table.data


def guided_params(space, sweep: dict, budgets=DROP_BUDGETS) -> list[dict]:
    """Sensitivity-guided configurations, one per accuracy-drop budget (distinct ones only)."""
    return [params for params, _ in guided_by_budget(space, sweep, budgets)]


@dataclass(frozen=True)
class Move:
    """One option of the sweep: ``param = value`` alone costs ``drop`` accuracy and saves an
    estimated ``saving_ms`` (its share of its uniform configuration's saving)."""

    param: str
    value: object
    drop: float
    saving_ms: float


def walk_order(m: Move) -> tuple:
    """The sensitivity order the latency walk takes options in: the least accuracy lost alone
    first, then the most time saved (then by name, for a stable order)."""
    return (m.drop, -m.saving_ms, m.param, str(m.value))


def option_moves(space, sweep: dict) -> list[Move]:
    """The sweep's options that save time, each with its accuracy drop and estimated saving."""
    base_acc, base_ms = sweep["identity"]["accuracy"], sweep["identity"]["latency_ms"]
    identity = space.identity_params()
    saving_of: dict[tuple[str, object], float] = {}
    for row in sweep["uniform"]:
        if row["latency_ms"] is None:
            continue
        changed = [n for n, v in row["params"].items() if v != identity.get(n)]
        total = sum(_weight(space, n) for n in changed) or 1.0
        for n in changed:
            saving_of[(n, row["value"])] = (base_ms - row["latency_ms"]) * _weight(space, n) / total
    moves = []
    for opt in sweep["options"]:
        saving = saving_of.get((opt["param"], opt["value"]), 0.0)
        if opt["accuracy"] is not None and saving > 0:
            moves.append(Move(opt["param"], opt["value"], max(0.0, base_acc - opt["accuracy"]), saving))
    return moves


def guided_by_budget(space, sweep: dict, budgets=DROP_BUDGETS) -> list[tuple[dict, float]]:
    """(configuration, accuracy-drop budget) for each distinct sensitivity-guided configuration."""
    identity = space.identity_params()
    moves = sorted(option_moves(space, sweep), key=lambda m: (-m.saving_ms / (m.drop + 1e-3), m.param, str(m.value)))
    out: list[tuple[dict, float]] = []
    for budget in budgets:
        params, spent = dict(identity), 0.0
        chosen: set[str] = set()
        for m in moves:
            if m.param not in chosen and spent + m.drop <= budget:
                params[m.param] = m.value
                chosen.add(m.param)
                spent += m.drop
        if params != identity and all(params != p for p, _ in out):
            out.append((params, budget))
    return out


def latency_walk(space, sweep: dict) -> list[tuple[float, dict]]:
    """(estimated latency, configuration) at each step of the least-sensitive-first walk.

    The walk takes the sweep's options in order of the accuracy each costs alone (then the most
    time saved), as HAQ- and Neural Compressor-style mixed-precision tools do; a layer's option
    replaces a lesser one taken before. The estimate is the uncompressed latency less the taken
    options' savings. Its last step has every layer at its largest saving: the fast end of the
    space, which accuracy-drop budgets never reach."""
    base_ms = sweep["identity"]["latency_ms"]
    moves = sorted(option_moves(space, sweep), key=walk_order)
    walk, params, taken, est = [], space.identity_params(), {}, base_ms
    for m in moves:
        if m.saving_ms > taken.get(m.param, 0.0):
            est -= m.saving_ms - taken.get(m.param, 0.0)
            taken[m.param] = m.saving_ms
            params = {**params, m.param: m.value}
            walk.append((est, params))
    return walk


def walked_by_latency(space, sweep: dict, fractions=WALK_FRACTIONS) -> list[tuple[dict, float]]:
    """(configuration, estimated latency) where the walk first saves each share of its whole
    estimated saving (distinct configurations, in the order of ``fractions``)."""
    return at_shares(latency_walk(space, sweep), sweep["identity"]["latency_ms"], fractions)


def walked_from_end(space, sweep: dict, back=WALK_BACK) -> list[tuple[dict, float]]:
    """(configuration, estimated latency) ``back`` steps before the walk's last one (distinct,
    fastest first).

    Steps, not shares of the estimated saving: the estimate adds the options' savings, and at
    the fast end they stop adding up. On the quickstart model the walk's last step (its every
    layer at its largest saving, estimated at -0.51 ms) measured 0.259 ms at 90.3 % accuracy,
    slower than the two steps before it (0.175 ms at 94.8 %, 0.177 ms at 97.8 %), which the
    85 % share stepped over (it stopped three steps back, at 0.186 ms)."""
    walk = latency_walk(space, sweep)
    out: list[tuple[dict, float]] = []
    for k in back:
        if k < len(walk):
            est, params = walk[len(walk) - 1 - k]
            if all(params != p for p, _ in out):
                out.append((params, est))
    return out


def walked_densely(space, sweep: dict, shares: int = WALK_SHARES) -> list[tuple[dict, float]]:
    """(configuration, estimated latency) where the walk first saves each of ``shares`` evenly
    spaced shares of its whole estimated saving (distinct configurations: the points of the
    sensitivity-greedy baseline, ``bench/search.py``), fastest first: the walk's slow end saves
    little and is left for last (a configuration slower than the best runtime on the target
    adds nothing to the front a user can ship)."""
    return walked_by_latency(space, sweep, [1 - i / shares for i in range(shares)])


def first_trials(space, sweep: dict | None, limit: int, kinds: int | None = None) -> list[tuple[dict, str]]:
    """What to enqueue (at most ``limit``), each with its origin (shown in reports): the
    uncompressed model, then in turn the sensitivity-guided configurations (accuracy-drop
    budgets), the uniform ones (the same option on every layer, the report's baselines), the
    latency walk's (from its fast end, step by step, then further apart: :func:`walked_from_end`)
    and the greedy rank allocation's on the space's menu (the most compressed first:
    :func:`rank_allocated`), so a budget of five or more gets every kind; these take at most
    ``kinds`` (``limit`` when not given), and what ``limit`` leaves then goes to the walk's evenly
    spaced points (:func:`walked_densely`), fastest first.

    Why the rank allocation: in the 100 × 3 bench on a Zen 3 CPU (no VNNI: low rank is the lever
    there), the seeds' greedy allocation led every method; its front took ranks 9 to 15 of 192,
    below the quickstart menu's smallest (0.125: 24), which the menu now offers (0.0625), and the
    allocation itself is the activation-aware error's order, which the sweep (one layer at a time,
    by accuracy) does not see.

    Why the last: in the 100 × 3 search bench on the quickstart (its fronts timed side by side),
    the sensitivity-greedy baseline's evenly spaced walk points held 0.9851 at 1.87× the best
    runtime's speed, nine points from the walk's fast end, between the step walk's points; the
    search never found it (its median hypervolume 1.3 % below the baseline's), while its warm
    start had used 20 of its 33 trials.

    Why ``kinds`` below ``limit`` (the study gives the kinds a third of its budget and the walk's
    points up to half): in the next 100 × 3 run (stop 58, Zen 3) the kinds took 27 of the 33
    trials, six of the walk's 26 points were among them, and the six trials left went to the next
    fastest; the baseline's front was four of its points, and the one at 0.9833 (2.09× ONNX
    Runtime's speed) was the walk's 13th from its fast end: two seeds of three never found it nor
    anything dominating it, and the search's median hypervolume ended 0.1 % below the baseline's.
    With every point of the walk enqueued (14 more trials of 100 here: 47 in all), the
    sensitivity-greedy baseline's front is inside the warm start: the search can only add to it
    (stop 59's 100 × 3 run: above the walk in every seed, +0.07 % at the median)."""
    guided = [(p, f"guided (accuracy drop <= {b:g})") for p, b in guided_by_budget(space, sweep)] if sweep else []
    walked = [(p, f"latency walk (estimated {ms:.3g} ms)") for p, ms in walked_from_end(space, sweep)] if sweep else []
    dense = [(p, f"latency walk, evenly spaced (estimated {ms:.3g} ms)") for p, ms in walked_densely(space, sweep)] if sweep else []
    allocated = [(p, f"rank allocation (greedy, {kept:.0%} of the parameters)") for p, kept in rank_allocated(sweep)] if sweep else []
    uniform = [(p, f"uniform {k} = {v}") for k, v, p in uniform_params(space)]
    out = [(space.identity_params(), "uncompressed")]
    cap = max(1, limit if kinds is None else min(kinds, limit))
    for group, most in ((itertools.chain.from_iterable(itertools.zip_longest(guided, uniform, walked, allocated)), cap), (dense, limit)):
        for pair in group:
            if len(out) >= most:
                break
            if pair is not None and all(pair[0] != seen for seen, _ in out):
                out.append(pair)
    return out  # at most max(1, limit): the uncompressed model, then each group stopped at its cap
