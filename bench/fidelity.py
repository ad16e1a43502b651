"""Ranking fidelity: does the latency the search records rank configurations the way the library
``vitune apply`` ships for them does?

For ``--configs`` random configurations of a study's space (seeded; the uncompressed model
first), each compressed once:

* **what the search records**, per latency proxy (``--proxies``), done the way a trial does it
  (one build, one timing by the target's protocol, at its own moment):

  - ``untuned``: TVM's default schedules (a study with ``tuning = "off"``);
  - ``tuned``: kernels from the target's tuning database, unseen workloads tuned first (a study
    with ``tuning = "tune"``; the build is the one shipped, timed once as the trial does, between
    two timings of the uncompressed build and corrected for the machine's drift);
  - ``tuned-fastest``: the same build corrected as vitune did before stop 38 (against the
    reference's fastest timing, no retries in a slow window); ``tuned-raw``: as timed, no
    correction (each its own timing, at its own moment);
  - ``lut``, ``learned``, ``analytical``: a cost model fitted with ``vitune costmodel fit``
    for the study's model and the tuned builds (skipped with the reason when none is fitted);

* **what ships**: the same configuration built with the tuned database (what ``vitune tune`` +
  ``vitune apply`` produce), every configuration's build timed in ``--rounds`` interleaved
  rounds at the end (a burst of load falls on all alike), the protocol's statistic over all
  rounds' repeats. The first half of the rounds against the second half is the noise floor:
  how well the shipped latencies rank themselves (``shipped_first_vs_last_rounds``).

Per proxy: Spearman's rho and Kendall's tau of its latencies against the shipped ones, MAPE
(mean of |recorded - shipped| / shipped), and whether the proxy's fastest configuration is the
shipped fastest. A scatter plot per proxy (``--plot``).

    python bench/fidelity.py [--study studies/quickstart.toml] [--configs 30] [--seed 0]
                             [--proxies untuned,tuned] [--trials-per-task 64] [--budget-s 0] [--rounds 4]
                             [--deit 8] [--fresh] [--json F] [--plot F.png]

``--deit N`` adds N configurations of a random-init ``deit_tiny_patch16_224`` at 224 px (the
quickstart's menu, the first block fp32; plain SVD for rank, random calibration images: the
latency of a configuration does not depend on the weights' values). JSON keys:
``spearman_search_vs_shipped`` and ``mape_search_vs_shipped`` (the study's own proxy: its
``[target] tuning`` mode: the worst model's Spearman, MAPE over every configuration),
``proxies`` (name → ``spearman``, ``kendall``, ``mape``, ``fastest_agrees`` across models the
same way), ``models`` (per-model rows: the same figures, the noise floor and one row per
configuration).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

PROXIES = ("untuned", "tuned", "tuned-fastest", "tuned-raw", "lut", "learned", "analytical")
# the tuned build's one timing, per rule for the machine's drift (vitune.targets.measure.DriftReference):
# "tuned" as a trial does it now, "tuned-fastest" as vitune did before stop 38 (scaled against the
# reference's fastest timing, no retries), "tuned-raw" as timed (no reference)
DRIFT_RULES = {"tuned": {}, "tuned-fastest": {"baseline": "fastest", "retries": 0}}
TIMED = (*DRIFT_RULES, "tuned-raw")


def sample_configs(space, n: int, seed: int) -> list:
    """The uncompressed configuration, then ``n - 1`` distinct random ones."""
    identity = space.to_config(space.identity_params())
    return [identity, *space.random_configs(n - 1, seed, exclude={identity.key})]


def agreement(recorded: list[float], shipped: list[float]) -> dict:
    """Spearman, Kendall, MAPE and fastest-agrees of ``recorded`` against ``shipped``."""
    from scipy.stats import kendalltau

    from vitune.costmodel_workflow import spearman

    pairs = [(r, s) for r, s in zip(recorded, shipped) if r is not None and s is not None and math.isfinite(r)]
    if len(pairs) < 3:
        return {"n": len(pairs), "spearman": None, "kendall": None, "mape": None, "fastest_agrees": None}
    rec, shp = [p[0] for p in pairs], [p[1] for p in pairs]
    return {
        "n": len(pairs),
        "spearman": spearman(rec, shp),
        "kendall": float(kendalltau(rec, shp).statistic),
        "mape": sum(abs(r - s) / s for r, s in pairs) / len(pairs),
        "fastest_agrees": min(range(len(rec)), key=rec.__getitem__) == min(range(len(shp)), key=shp.__getitem__),
    }


class Proxies:
    """The search's latency proxies for one model: ``recorded(name, model, config, shipped)``."""

    def __init__(self, names, profile, workspace, space):
        from vitune.costmodels import get_latency_source

        self.profile = profile
        self.references: dict = {}  # per drift rule: the uncompressed model's build (the first configuration)
        self.sources, self.errors = {}, {}
        for name in names:
            if name == "untuned":
                self.sources[name] = get_latency_source("measured", profile)
            elif name in ("lut", "learned", "analytical"):
                source = get_latency_source(name, profile)
                try:
                    source.bind(workspace, space, "tune")
                except Exception as err:
                    from vitune.errors import short_reason

                    self.errors[name] = short_reason(err)
                    continue
                self.sources[name] = source
            elif name not in TIMED:
                raise SystemExit(f"--proxies: unknown proxy {name!r} (known: {', '.join(PROXIES)})")
        self.names = [n for n in names if n in TIMED or n in self.sources]

    def recorded(self, name: str, model, config, example, shipped):
        from vitune.targets.measure import DriftReference, time_compiled

        if name in TIMED:  # the trial's one timing of the tuned build, corrected for drift by the rule's reference
            if name in self.references and not config.is_identity:
                return self.references[name].time(shipped, example, self.profile)
            m = time_compiled(shipped, example, self.profile)
            if config.is_identity and name in DRIFT_RULES:
                self.references[name] = DriftReference(shipped, example, self.profile, **DRIFT_RULES[name])
                self.references[name].seen(m.latency_ms)
            return m
        return self.sources[name].latency(model, config, example)


def model_row(label: str, original, workspace, example, space, configs, profile, proxy_names, trials_per_task: int, rounds: int,
              budget_s: float = 0.0, train_data=None, calibration=None) -> dict:
    from vitune.compression.pipeline import compress
    from vitune.errors import short_reason
    from vitune.targets.compile import compile_model
    from vitune.targets.peers import build_label
    from vitune.targets.measure import time_compiled
    from vitune.targets.tuning import Tuner

    proxies = Proxies(proxy_names, profile, workspace, space)
    tuner = Tuner(profile, "tune", trials_per_task, budget_s)
    rows, builds = [], []
    t_start = time.perf_counter()
    try:
        for i, config in enumerate(configs):
            row = {"config": config.summary(), "key": config.key, "recorded_ms": {}, "errors": {}}
            rows.append(row)
            t0 = time.perf_counter()
            try:
                model = compress(original, config, train_data=train_data, calibration=calibration).eval()
            except Exception as err:
                row["errors"]["compress"] = short_reason(err)
                builds.append(None)
                continue
            row["compress_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            try:
                shipped = compile_model(model, example, profile, tuner)
            except Exception as err:
                row["errors"]["shipped"] = short_reason(err)
                builds.append(None)
                continue
            row["shipped_build_s"] = time.perf_counter() - t0
            row["kernels"] = build_label(shipped)
            builds.append(shipped)
            for name in proxies.names:
                m = proxies.recorded(name, model, config, example, shipped)
                if m.ok:
                    row["recorded_ms"][name] = m.latency_ms
                    if m.drift is not None:
                        row.setdefault("drift", {})[name] = m.drift
                else:
                    row["errors"][name] = m.error
            shown = ", ".join(f"{k} {v:.4f}" for k, v in row["recorded_ms"].items())
            print(f"  {label} {i + 1}/{len(configs)} ({time.perf_counter() - t_start:.0f} s): {config.summary()}: {shown} "
                  f"[{tuner.report.line()}]", flush=True)
    finally:
        tuner.close()
    by_round: list[list[list[float]]] = [[] for _ in builds]  # per build, per round: the repeats
    for _ in range(max(1, rounds)):  # the shipped builds, interleaved
        for i, shipped in enumerate(builds):
            if shipped is None or "shipped_timing" in rows[i]["errors"]:
                continue
            m = time_compiled(shipped, example, profile)
            if m.ok:
                by_round[i].append(list(m.samples_ms))
            else:
                rows[i]["errors"]["shipped_timing"] = m.error

    def statistic(rounds_: list[list[float]]) -> float | None:
        flat = [v for r in rounds_ for v in r]
        return profile.protocol.latency_ms(flat) if flat else None

    half = max(1, rounds // 2)
    for row, r in zip(rows, by_round):
        ok = r and "shipped_timing" not in row["errors"]
        row["shipped_ms"] = statistic(r) if ok else None
        row["shipped_halves_ms"] = [statistic(r[:half]), statistic(r[half:])] if ok and len(r) > 1 else None
    shipped_ms = [r["shipped_ms"] for r in rows]
    out = {"model": label, "target": profile.name, "configs": len(configs), "rounds": rounds, "statistic": profile.protocol.statistic,
           "trials_per_task": trials_per_task, "tuning": tuner.report.line(), "seconds": time.perf_counter() - t_start,
           "proxy_errors": proxies.errors, "proxies": {}, "rows": rows,
           "partly_untuned": sum(1 for r in rows if "untuned" in r.get("kernels", ""))}
    for name in proxies.names:
        out["proxies"][name] = agreement([r["recorded_ms"].get(name) for r in rows], shipped_ms)
    if rounds > 1:  # the noise floor: the shipped builds' first rounds against their last rounds
        halves = [r["shipped_halves_ms"] or [None, None] for r in rows]
        out["shipped_first_vs_last_rounds"] = agreement([h[0] for h in halves], [h[1] for h in halves])
    return out


def default_model(study_path: Path, n: int, seed: int, proxy_names, trials_per_task: int, rounds: int, budget_s: float) -> dict:
    from vitune.compression.calibrate import Calibration
    from vitune.models.layers import discover
    from vitune.models.zoo import load_workspace
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import load_study_file
    from vitune.targets import load_target

    spec = load_study_file(study_path)
    ws = load_workspace(spec.model, spec.data, progress=False)
    space = SearchSpace.build(spec.space, discover(ws.model), spec.methods, where=str(study_path))
    configs = sample_configs(space, n, seed)
    calib = Calibration.from_dataset(ws.data.calib, spec.methods.calib_images)
    row = model_row(f"{spec.name} model ({study_path.name})", ws.model.eval(), ws, ws.example_input(1), space, configs,
                    load_target(spec.target.name), proxy_names, trials_per_task, rounds, budget_s, train_data=ws.data.train,
                    calibration=calib)
    row["study_tuning"] = spec.target.tuning
    return row


def deit_model(target: str, n: int, seed: int, proxy_names, trials_per_task: int, rounds: int, budget_s: float) -> dict:
    import timm
    import torch

    from vitune.compression.calibrate import Calibration
    from vitune.compression.methods import CompressionMethods
    from vitune.models.layers import discover
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import Override, SpaceSpec
    from vitune.targets import load_target

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    spec = SpaceSpec(precision=("fp32", "int8", "w8a8"), rank_fraction=(1.0, 0.5, 0.25, 0.125), prune_heads=(0.0, 0.34),
                     prune_mlp=(0.0, 0.25, 0.5), overrides=(Override("blocks.0.*", (("precision", ("fp32",)),)),))
    methods = CompressionMethods(lowrank="svd", calib_images=16)
    space = SearchSpace.build(spec, discover(model), methods)
    gen = torch.Generator().manual_seed(1)
    calib = Calibration(torch.randn(16, 3, 224, 224, generator=gen), torch.zeros(16, dtype=torch.long))
    example = torch.randn(1, 3, 224, 224, generator=gen)
    return model_row("deit_tiny_patch16_224 (random init, 224 px)", model, None, example, space, sample_configs(space, n, seed),
                     load_target(target), [p for p in proxy_names if p == "untuned" or p in TIMED], trials_per_task, rounds, budget_s,
                     calibration=calib)


def plot(report: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(m, name) for m in report["models"] for name in m["proxies"]]
    if not panels:
        return
    fig = Figure(figsize=(4.2 * len(panels), 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (m, name) in zip(axes, panels):
        pts = [(r["shipped_ms"], r["recorded_ms"][name]) for r in m["rows"] if r.get("shipped_ms") and name in r["recorded_ms"]]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color="#c0392b")
        lo, hi = min(min(p) for p in pts), max(max(p) for p in pts)
        if name in TIMED or name in ("lut", "learned", "analytical"):
            ax.plot([lo, hi], [lo, hi], color="#888", linewidth=0.8)
        f = m["proxies"][name]
        ax.set_title(f"{m['model'].split(' (')[0]}: {name}\nrho {f['spearman']:.3f}, MAPE {100 * f['mape']:.1f} %", fontsize=9)
        ax.set_xlabel("shipped (tuned) ms")
        ax.set_ylabel(f"recorded by the search ({name}) ms")
    fig.savefig(path, format="png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/quickstart.toml")
    parser.add_argument("--configs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proxies", default="untuned,tuned", help=f"comma-separated, of {', '.join(PROXIES)}")
    parser.add_argument("--trials-per-task", type=int, default=64, help="MetaSchedule trials per unseen workload (as vitune tune)")
    parser.add_argument("--budget-s", type=float, default=0.0, help="tuning time per model; past it, unseen workloads stay untuned "
                        "(each row's kernels say so); 0 = no limit")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the shipped builds (their first half "
                        "against their second half is the noise floor)")
    parser.add_argument("--deit", type=int, default=0, help="also N configurations of deit_tiny at 224 px")
    parser.add_argument("--fresh", action="store_true", help="tune into an empty database, without shipped schedules")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    proxy_names = [p.strip() for p in args.proxies.split(",") if p.strip()]
    if args.fresh:  # the full cost of tuning: no database, no shipped schedules (vitune.targets.seeds)
        os.environ["VITUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="vitune-fresh-")
        os.environ["VITUNE_SEEDS"] = "0"

    from vitune.search.studyfile import load_study_file
    from vitune.versions import versions

    spec = load_study_file(Path(args.study))
    report: dict = {"study": args.study, "versions": versions(), "proxies_asked": proxy_names, "models": []}
    report["models"].append(default_model(Path(args.study), args.configs, args.seed, proxy_names, args.trials_per_task, args.rounds,
                                          args.budget_s))
    if args.deit:
        report["models"].append(deit_model(spec.target.name, args.deit, args.seed, proxy_names, args.trials_per_task, args.rounds,
                                           args.budget_s))
    own = "untuned" if spec.target.tuning == "off" else "tuned"
    names = sorted({n for m in report["models"] for n in m["proxies"]}, key=PROXIES.index)
    report["proxies"] = {name: across_models(report["models"], name) for name in names}
    report["search_proxy"] = own
    report["spearman_search_vs_shipped"] = report["proxies"].get(own, {}).get("spearman")
    report["mape_search_vs_shipped"] = report["proxies"].get(own, {}).get("mape")

    print(f"\nranking fidelity: the latency the search records against the tuned build apply ships, "
          f"{profile_line(report)}")
    print(f"{'model':<46} {'proxy':<10} {'n':>3} {'spearman':>9} {'kendall':>8} {'MAPE':>8}  fastest agrees")
    for m in report["models"]:
        for name, f in m["proxies"].items():
            if f["spearman"] is None:
                print(f"{m['model']:<46} {name:<10} {f['n']:>3}  (too few)")
                continue
            print(f"{m['model']:<46} {name:<10} {f['n']:>3} {f['spearman']:>9.3f} {f['kendall']:>8.3f} {100 * f['mape']:>7.1f}%  {f['fastest_agrees']}")
        for name, err in m["proxy_errors"].items():
            print(f"{m['model']:<46} {name:<10} not run: {err}")
        floor = m.get("shipped_first_vs_last_rounds")
        if floor and floor["spearman"] is not None:
            print(f"{m['model']:<46} {'noise':<10} {floor['n']:>3} {floor['spearman']:>9.3f} {floor['kendall']:>8.3f} "
                  f"{100 * floor['mape']:>7.1f}%  {floor['fastest_agrees']}  (shipped builds: first rounds against last rounds)")
        untuned = f"; {m['partly_untuned']} shipped builds partly untuned (--budget-s)" if m["partly_untuned"] else ""
        print(f"{'':<46} tuning: {m['tuning']}; {m['seconds']:.0f} s{untuned}")
    if report["spearman_search_vs_shipped"] is not None:
        print(f"the study's own proxy ({own}, [target] tuning = {spec.target.tuning!r}): Spearman {report['spearman_search_vs_shipped']:.3f} "
              f"(the worst model's), MAPE {100 * report['mape_search_vs_shipped']:.1f} % (every configuration)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, Path(args.plot))
        print(f"wrote {args.plot}")


def across_models(models: list[dict], name: str) -> dict:
    """One proxy's figures over every model: rank agreement is a per-model question (pooled, the
    models' different scales would rank themselves), so Spearman and Kendall are the worst
    model's and fastest-agrees must hold on each; MAPE is over every configuration."""
    per = [m["proxies"][name] for m in models if name in m["proxies"] and m["proxies"][name]["spearman"] is not None]
    errors = [(r["recorded_ms"].get(name), r.get("shipped_ms")) for m in models if name in m["proxies"] for r in m["rows"]]
    errors = [(a, b) for a, b in errors if a is not None and b]
    return {
        "models": len(per),
        "n": sum(p["n"] for p in per),
        "spearman": min(p["spearman"] for p in per) if per else None,
        "kendall": min(p["kendall"] for p in per) if per else None,
        "mape": sum(abs(a - b) / b for a, b in errors) / len(errors) if errors else None,
        "fastest_agrees": all(p["fastest_agrees"] for p in per) if per else None,
    }


def profile_line(report: dict) -> str:
    m = report["models"][0]
    return f"target {m['target']}, {m['statistic']} of the repeats over {m['rounds']} interleaved rounds"


if __name__ == "__main__":
    main()
