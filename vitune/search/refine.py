"""Front refinement: each new front member's neighbours along the sensitivity order, tried next.

The warm start's sweep orders the space's options least sensitive first (each option alone, its
accuracy drop; then the most time saved: :func:`vitune.search.warmstart.latency_walk`, the order
HAQ- and Neural Compressor-style tools walk). When a complete trial joins the study's front, its
two neighbours along that order are enqueued, so they are the next trials any worker runs:

* **faster**: the least sensitive option, in that order, that saves more on its layer than the
  layer's current option (for a step of the walk, the walk's next step);
* **more accurate**: the configuration's most sensitive option (the latest in that order) given
  back: its layer returns to the option the walk held there before it, or to uncompressed (for a
  step of the walk, the walk's step before).

A neighbour the study already holds (any state) is not enqueued again, and refinement takes at
most ``limit`` trials of the study (a third of ``n_trials``; the warm start takes at most another
third, the sampler the rest). Why: on the quickstart the sampler's own trials, most of them stopped
early, added nothing at the fast end of the front, while the sensitivity-greedy baseline's dense
walk did (the two walk steps the warm start skipped held the baseline's two points the search
lacked; README, *Benchmarks*). Neighbours of the front are where its gaps are.
"""

from __future__ import annotations

from vitune.search.warmstart import option_moves, walk_order

REFINE_ORIGIN = "refine"  # the origin user attribute of refinement trials starts with it


class Refiner:
    """The sensitivity order of one sweep, and the neighbours of a configuration along it."""

    def __init__(self, space, sweep: dict):
        self.identity = space.identity_params()
        self.moves = sorted(option_moves(space, sweep), key=walk_order)
        self._rank = {(m.param, repr(m.value)): i for i, m in enumerate(self.moves)}  # option → place in the order

    def _saving(self, params: dict, name: str) -> float:
        """The estimated saving of the option ``params`` holds on ``name`` (0: none in the order)."""
        rank = self._rank.get((name, repr(params.get(name))))
        return self.moves[rank].saving_ms if rank is not None else 0.0

    def faster(self, params: dict) -> dict | None:
        """The least sensitive option that saves more on its layer than what the layer holds."""
        for m in self.moves:
            if m.param in params and m.saving_ms > self._saving(params, m.param):
                return {**params, m.param: m.value}
        return None

    def more_accurate(self, params: dict) -> dict | None:
        """The latest held option in the sensitivity order, given back: its layer returns to the
        option the walk held there before it (the most saving among the layer's options earlier
        in the order that save less), or to its uncompressed value."""
        held = [(self._rank[(n, repr(v))], n) for n, v in params.items() if (n, repr(v)) in self._rank and v != self.identity.get(n)]
        if not held:
            return None
        rank, name = max(held)
        current = self.moves[rank]
        before = [m for m in self.moves[:rank] if m.param == name and m.saving_ms < current.saving_ms]
        value = max(before, key=lambda m: m.saving_ms).value if before else self.identity[name]
        return {**params, name: value}

    def neighbours(self, params: dict) -> list[tuple[dict, str]]:
        """(configuration, which) for the faster and the more accurate neighbour, where they exist."""
        out = []
        for which, p in (("faster", self.faster(params)), ("more accurate", self.more_accurate(params))):
            if p is not None and p != params:
                out.append((p, which))
        return out


def refine_after(study, trial, refiner: Refiner, limit: int) -> int:
    """Enqueue ``trial``'s neighbours when it is a complete trial on the study's front (at most
    ``limit`` refinement trials in the study); returns how many were enqueued."""
    import optuna

    from vitune.search.front import front

    if trial.state != optuna.trial.TrialState.COMPLETE or trial.number not in {t.number for t in front(study)}:
        return 0
    trials = study.get_trials(deepcopy=False)
    used = sum(1 for t in trials if str(t.user_attrs.get("origin", "")).startswith(REFINE_ORIGIN))
    # what the study holds, in any state (an enqueued trial's parameters are its fixed_params)
    held = [t.system_attrs.get("fixed_params", t.params) for t in trials]
    added = 0
    for p, which in refiner.neighbours({**refiner.identity, **trial.params}):
        if used + added >= limit:
            break
        if p not in held:  # skip_if_exists: another worker may have enqueued it meanwhile
            study.enqueue_trial(p, user_attrs={"origin": f"{REFINE_ORIGIN}: {which} than trial {trial.number}"}, skip_if_exists=True)
            held.append(p)
            added += 1
    return added
