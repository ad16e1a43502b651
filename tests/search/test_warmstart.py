"""The warm start's configurations from a sweep: accuracy-drop budgets, the latency walk, uniform."""

import pytest

from vitune.models.default import build_digits_vit
from vitune.models.layers import discover
from vitune.search import warmstart
from vitune.search.space import SearchSpace
from vitune.search.studyfile import SpaceSpec


@pytest.fixture(scope="module")
def space():
    spec = SpaceSpec(precision=("fp32", "int8"), rank_fraction=(1.0, 0.5, 0.25), prune_heads=(0.0,), prune_mlp=(0.0,), distill_steps=(0,))
    return SearchSpace.build(spec, discover(build_digits_vit()))


def synthetic_sweep(space):
    """A sensitivity sweep: int8 everywhere saves 0.4 ms, rank 0.5 0.3 ms, rank 0.25 0.5 ms; each
    option alone costs its own made-up accuracy drop, larger for later layers."""
    identity = space.identity_params()
    saving = {("precision", "int8"): 0.4, ("rank_fraction", 0.5): 0.3, ("rank_fraction", 0.25): 0.5}
    uniform = [{"knob": k, "value": v, "params": p, "accuracy": 0.9, "latency_ms": 1.0 - saving[(k, v)], "error": None}
               for k, v, p in warmstart.uniform_params(space)]
    options = []
    for i, (name, menu) in enumerate((n, m) for n, m in space.choices if len(m) > 1):
        for v in menu:
            if v != identity[name]:
                options.append({"param": name, "value": v, "accuracy": 0.98 - 0.001 * i - (0.01 if v == 0.25 else 0.0)})
    return {"identity": {"accuracy": 0.98, "latency_ms": 1.0}, "options": options, "uniform": uniform, "complete": True}


def test_the_latency_walk_ends_with_every_layer_at_its_largest_saving(space):
    sweep = synthetic_sweep(space)
    walk = warmstart.latency_walk(space, sweep)
    estimates = [e for e, _ in walk]
    assert estimates == sorted(estimates, reverse=True)  # each step saves more
    assert estimates[-1] == pytest.approx(1.0 - 0.4 - 0.5)  # int8 and rank 0.25 everywhere
    last = walk[-1][1]
    assert all(v == "int8" for n, v in last.items() if n.endswith("precision"))
    assert all(v == 0.25 for n, v in last.items() if n.endswith("rank_fraction"))
    picks = warmstart.walked_by_latency(space, sweep)
    assert picks[0][0] == last and len(picks) == len(warmstart.WALK_FRACTIONS)
    assert [ms for _, ms in picks] == sorted(ms for _, ms in picks)  # fastest first
    back = warmstart.walked_from_end(space, sweep)
    assert [p for p, _ in back[:3]] == [walk[-1][1], walk[-2][1], walk[-3][1]]  # the fast end step by step
    assert [p for p, _ in back[3:5]] == [walk[-5][1], walk[-9][1]]  # then further apart
    assert len(back) == sum(1 for k in warmstart.WALK_BACK if k < len(walk))


def test_first_trials_interleave_guided_walked_and_uniform(space):
    sweep = synthetic_sweep(space)
    first = warmstart.first_trials(space, sweep, 4)
    assert [origin.split(" ")[0] for _, origin in first] == ["uncompressed", "guided", "uniform", "latency"]
    assert first[3][0] == warmstart.latency_walk(space, sweep)[-1][1]  # the walk's fast end comes first
    assert len({str(sorted(p.items())) for p, _ in warmstart.first_trials(space, sweep, 100)}) == len(warmstart.first_trials(space, sweep, 100))


def test_the_warm_start_takes_the_rank_allocation_s_walk_most_compressed_first(space):
    groups = warmstart.rank_groups(space)
    assert set(groups) == {n for n, m in space.choices if n.endswith(":rank_fraction")}
    assert all(layers == (name.rsplit(":", 1)[0],) and menu == (1.0, 0.5, 0.25) for name, (layers, menu) in groups.items())
    identity, names = space.identity_params(), sorted(groups)
    # a walk of 2 × len(groups) steps: each group to 0.5 in turn, then each to 0.25; 40 % kept at its end
    states, fractions = [], {}
    for f in (0.5, 0.25):
        for n in names:
            fractions = {**fractions, n: f}
            states.append(fractions)
    rows = [{"params": {**identity, **st}, "kept": 1.0 - 0.6 * (i + 1) / len(states)} for i, st in enumerate(states)]
    sweep = {**synthetic_sweep(space), "allocation": rows}
    picks = warmstart.rank_allocated(sweep)
    assert picks[0] == (rows[-1]["params"], rows[-1]["kept"])  # the walk's end first
    assert [k for _, k in picks] == sorted(k for _, k in picks)  # then less and less compressed
    firsts = [next(i for i, r in enumerate(rows) if 1.0 - r["kept"] >= share * 0.6 - 1e-9) for share in warmstart.ALLOC_SHARES]
    assert [k for _, k in picks] == [rows[i]["kept"] for i in sorted(set(firsts), reverse=True)]  # each the first step saving its share
    assert warmstart.rank_allocated(synthetic_sweep(space)) == []  # a sweep saved without the walk
    first = warmstart.first_trials(space, sweep, 5)
    assert [origin.split(" ")[0] for _, origin in first] == ["uncompressed", "guided", "uniform", "latency", "rank"]
    assert first[4][0] == rows[-1]["params"]
    every = [p for p, _ in warmstart.first_trials(space, sweep, 1000)]
    assert all(any(p == q for q in every) for p, _ in picks)


def test_tied_rank_knobs_allocate_as_one_group():
    from vitune.search.studyfile import Tie

    spec = SpaceSpec(precision=("fp32",), rank_fraction=(1.0, 0.5, 0.25), prune_heads=(0.0,), prune_mlp=(0.0,), distill_steps=(0,),
                     ties=(Tie("blocks.*.mlp.fc1", ("rank_fraction",)),))
    layout = discover(build_digits_vit())
    groups = warmstart.rank_groups(SearchSpace.build(spec, layout))
    fc1 = tuple(u.name for u in layout.linears if u.name.endswith("mlp.fc1"))
    assert groups["blocks.*.mlp.fc1:rank_fraction"] == (fc1, (1.0, 0.5, 0.25))
    assert len(groups) == len(layout.linears) - len(fc1) + 1


def test_the_warm_start_s_unused_budget_goes_to_the_walk_s_evenly_spaced_points(space):
    sweep = synthetic_sweep(space)
    picks, walk = warmstart.walked_densely(space, sweep), [q for _, q in warmstart.latency_walk(space, sweep)]
    dense = [p for p, _ in picks]
    assert len(dense) > 10
    assert all(any(p == q for q in walk) for p in dense)  # every one a step of the walk
    assert [ms for _, ms in picks] == sorted(ms for _, ms in picks)  # fastest first
    assert dense[0] == walk[-1]
    small = warmstart.first_trials(space, sweep, 4)
    assert not any("evenly spaced" in origin for _, origin in small)  # a small budget: the kinds first
    everything = warmstart.first_trials(space, sweep, 1000)
    assert all(any(p == q for q, _ in everything) for p in dense)  # a large one: the whole dense walk
    kinds = [origin for _, origin in everything]
    first_dense = next(i for i, o in enumerate(kinds) if "evenly spaced" in o)
    assert all("evenly spaced" in o for o in kinds[first_dense:])  # after every other kind
    some = warmstart.first_trials(space, sweep, first_dense + 3)
    assert [p for p, o in some if "evenly spaced" in o] == [p for p in dense if all(p != q for q, _ in everything[:first_dense])][:3]
    # the kinds capped below the whole budget (a study: a third and a half of its trials): the walk fills the rest
    capped = warmstart.first_trials(space, sweep, first_dense + 3, kinds=first_dense - 2)
    assert len(capped) == first_dense + 3 and capped[: first_dense - 2] == everything[: first_dense - 2]
    assert all("evenly spaced" in o for _, o in capped[first_dense - 2 :])
    assert [p for p, _ in capped[first_dense - 2 :]] == [p for p in dense if all(p != q for q, _ in everything[: first_dense - 2])][:5]


def test_an_interrupted_sweep_resumes_from_the_options_it_had_measured(tmp_path):
    from vitune.jsontable import JsonTable

    items = [("blocks.0.attn.qkv:precision", "int8"), ("blocks.0.attn.qkv:rank_fraction", 0.5),
             ("blocks.0.mlp:prune_mlp", 0.25), ("blocks.1.mlp.fc1:rank_fraction", 0.25)]
    calls: list = []

    def measure(name, value):
        calls.append((name, value))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops the study during the third option
        return 0.9 if value != 0.5 else None  # None: the option failed, and that is saved too

    path = tmp_path / "sweep.json"
    with pytest.raises(KeyboardInterrupt):
        warmstart.sweep_options(items, measure, JsonTable(path))
    assert len(calls) == 3
    seen: list = []
    rows = warmstart.sweep_options(items, measure, JsonTable(path), lambda i, row, reused: seen.append((i, reused)))
    assert calls[3:] == items[2:]  # only the options without a saved row are measured again
    assert seen == [(0, True), (1, True), (2, False), (3, False)]
    assert [(r["param"], r["value"]) for r in rows] == items
    assert [r["accuracy"] for r in rows] == [0.9, None, 0.9, 0.9]
