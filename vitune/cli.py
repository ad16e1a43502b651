"""The ``vitune`` command line. Commands are thin: they parse, call the library, print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitune.errors import VituneError
from vitune.targets.tuning import DEFAULT_TUNING, TUNING_MODES


def _summary_line(summary) -> str:
    return (
        f"ran {summary.new_complete + summary.new_failed + summary.new_pruned} trials ({summary.new_complete} complete, "
        f"{summary.new_pruned} stopped early, {summary.new_failed} failed) in "
        f"{summary.seconds:.1f} s; {summary.total_complete} complete in the study" + (" (stopped on request)" if summary.interrupted else "")
    )


def _study_run(args) -> int:
    from vitune.search.study import format_front, open_study, run_study
    from vitune.search.studyfile import load_study_file
    from vitune.search.workers import check_shareable, spawn_workers

    spec = load_study_file(args.study)
    helpers: list = []
    if args.workers > 1 and args.n_trials is not None:
        raise VituneError("--workers counts the study's trials together: use the study file's n_trials, not --n-trials")
    if args.workers > 1:
        check_shareable(spec.storage)
    try:
        summary = run_study(spec, n_trials=args.n_trials, timeout_s=args.timeout, progress=not args.quiet, worker=args.workers > 1,
                            on_ready=lambda: helpers.extend(spawn_workers(spec, args.workers - 1, args.timeout)))
    finally:
        for proc in helpers:
            proc.wait()
    print(_summary_line(summary) + (f"; {len(helpers)} more worker(s) ran beside it" if helpers else ""))
    study = open_study(spec, create=False)
    print("best within the budget:" if spec.search.mode == "constrained" else "Pareto front (validated accuracy vs TVM-measured latency):")
    print(format_front(study))
    return 0


def _study_worker(args) -> int:
    from vitune.search.study import run_study
    from vitune.search.studyfile import load_study_file

    spec = load_study_file(args.study)
    print(_summary_line(run_study(spec, timeout_s=args.timeout, progress=not args.quiet, worker=True)))
    return 0


def _study_status(args) -> int:
    from vitune.search.study import status_text
    from vitune.search.studyfile import load_study_file

    print(status_text(load_study_file(args.study)))
    return 0


def _study_show(args) -> int:
    from vitune.reports import show_text
    from vitune.search.studyfile import load_study_file

    print(show_text(load_study_file(args.study), args.trial))
    return 0


def _report(args) -> int:
    from vitune.reports import build_report
    from vitune.search.studyfile import load_study_file

    report = build_report(load_study_file(args.study), Path(args.out))
    for fig in report.figures:
        print(f"  {fig.name:<20} {fig.width}x{fig.height} px  {fig.title}")
    for name, why in report.notes.items():
        print(f"  (no {name}.png: {why})")
    print(f"wrote {report.html} (self-contained: open it in any browser, no network needed)")
    return 0


def _study_export(args) -> int:
    from vitune.search.export import export
    from vitune.search.studyfile import load_study_file

    pick = "trial" if args.trial is not None else args.pick
    if args.trial is not None and args.pick != "best":
        raise VituneError("--trial N exports trial N: leave --pick out")
    doc = export(load_study_file(args.study), pick, Path(args.out), args.max_latency_ms, args.max_drop, args.trial,
                 args.max_model_mb, args.max_peak_mb)
    members = doc.get("members", [doc])
    for rec in members:
        m = rec["metrics"]
        base = rec.get("baseline")
        speed = f" = {m['speedup_vs_baseline']:.2f}x the uncompressed model in {base['label']}" if m.get("speedup_vs_baseline") else ""
        print(f"trial {rec['study']['trial']}: accuracy {m['accuracy']:.4f}, latency {m['latency_ms']:.4f} ms{speed}, {rec['summary']}")
    print(f"wrote {len(members)} configuration(s) to {args.out}")
    return 0


def _apply(args) -> int:
    from vitune.apply import apply_record
    from vitune.search.export import load_record

    record = load_record(Path(args.export), args.member)
    metrics = apply_record(record, Path(args.out), args.distill_steps, progress=not args.quiet, where=args.export)
    agree, seen = metrics["tvm_vs_torch"], metrics["exported_metrics"]
    seen_ms = f"{seen['latency_ms']:.4f} ms" if seen.get("latency_ms") is not None else "not measured"
    lat = f"{metrics['latency_ms']:.4f} ms" if metrics["latency_ms"] is not None else "not measured"
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} (validation {metrics['val_accuracy']:.4f}, "
        f"search saw {seen['accuracy']:.4f}); latency {lat} on {metrics['target']['name']} (search saw {seen_ms})"
    )
    if metrics["untuned_workloads"] != 0:
        print(f"WARNING: the library ships untuned kernels ({metrics['kernels']}): its latency is not what tuning gives; "
              f"run 'vitune tune --study STUDY.toml' for {metrics['target']['name']}, then apply again")
    if metrics["baseline"] is not None:
        from vitune.targets.peers import Baseline

        print(Baseline(**metrics["baseline"]).line())
    if metrics["measurement_error"]:
        print(f"not measured: {metrics['measurement_error']} (the artifact is written all the same)")
    else:
        print(f"TVM vs PyTorch on {agree['images']} validation images: max |logit diff| {agree['max_abs_logit_diff']:.2e}, "
              f"top-1 agreement {agree['top1_agreement']:.4f}")
    for name, other in metrics.get("also_targets", {}).items():
        timed = f"{other['latency_ms']:.4f} ms" if other["latency_ms"] is not None else f"not measured ({other['measurement_error']})"
        print(f"also on {name}: {timed}; wrote {other['artifact']['library']}")
    print(f"wrote {args.out}/model.pt, {args.out}/model.pt2, {args.out}/metrics.json, {metrics['artifact']['library']}")
    return 0


def _compress(args) -> int:
    from vitune.baseline import build_baseline, write_record
    from vitune.search.studyfile import load_study_file

    spec = load_study_file(args.study)
    record = build_baseline(spec, args.strategy, args.params_budget, args.measure, progress=not args.quiet)
    m, base = record["metrics"], record["metrics"]["uncompressed"]
    ranks = {k: v["rank"] for k, v in record["config"]["linear"].items()}
    print(f"{args.strategy} at params budget {args.params_budget}: {m['params']:,} params ({m['params_ratio']:.3f} of {base['params']:,})")
    print(f"  accuracy  val {m['accuracy']:.4f} (uncompressed {base['accuracy']:.4f})  test {m['test_accuracy']:.4f} (uncompressed {base['test_accuracy']:.4f})")
    if args.measure:
        if m["latency_ms"] is None:
            print(f"  latency   failed: {m['latency_error']}")
        else:
            from vitune.targets.peers import Baseline

            kernels = "untuned kernels: tuning = \"off\"" if m["tuning"] == "off" else f"kernels of the tuning database, tuning = \"{m['tuning']}\""
            print(f"  latency   {m['latency_ms']:.4f} ms on {record['target']['name']} ({kernels})")
            print(f"  {Baseline(**m['baseline']).line()}")
    print("  ranks     " + ", ".join(f"{k}={v}" for k, v in ranks.items()))
    if args.out:
        write_record(record, Path(args.out))
        print(f"wrote {args.out} (ship it with: vitune apply {args.out} --out DIR)")
    return 0


def _tune(args) -> int:
    from vitune.search.studyfile import load_study_file
    from vitune.targets.profile import load_target
    from vitune.tune import tune_study_models

    profile = load_target(args.target)
    if args.merge_seed and not args.export_seed:
        raise VituneError("--merge-seed needs --export-seed FILE (the seed file to write)")
    if args.export_seed:
        from vitune.targets.seeds import export_seed
        from vitune.targets.tuning import database_dir

        n = export_seed(database_dir(profile), Path(args.export_seed), profile, note=args.note,
                        merge=Path(args.merge_seed) if args.merge_seed else None)
        merged = f" and the seed {args.merge_seed}" if args.merge_seed else ""
        print(f"wrote {args.export_seed}: the best schedule of each of {n} workloads of {profile.name}'s tuning database "
              f"{database_dir(profile)}{merged} (copy it to $VITUNE_SEEDS_DIR or ~/.config/vitune/seeds on machines with this target)")
        return 0
    if args.race_seeds:
        return _race_seeds(profile)
    if args.study:
        spec = load_study_file(args.study)
    else:  # the embedded default model with the default space (installed packages have no studies/ folder)
        from vitune.search.studyfile import parse_study

        spec = parse_study({"study": {"name": "default-model"}}, Path.cwd() / "default-model.toml")
    trials = args.trials_per_task
    if trials is None:  # the study's [target] (or [[target.also]]) entry for this target, else its default
        same = [t for t in spec.targets if t.name == profile.name or t.name == args.target]
        trials = (same or [spec.target])[0].tuning_trials
    run = tune_study_models(spec, profile, trials, args.configs, args.budget_s, cover=args.cover,
                            log=lambda line: print(line, flush=True))  # one line per model, also when piped to a file
    if run.untuned_ms and run.tuned_ms:
        print(f"uncompressed model on {profile.name}: untuned {run.untuned_ms:.4f} ms, tuned {run.tuned_ms:.4f} ms "
              f"({run.untuned_ms / run.tuned_ms:.2f}x); database {run.database}")
    return 0


def _race_seeds(profile) -> int:
    import statistics

    from vitune.targets.race import race_seeds
    from vitune.targets.tuning import Tuner, database_dir

    tuner = Tuner(profile, "tune")
    try:
        if not tuner.seeds:
            print(f"nothing to race: no seed fits {profile.name} (vitune/targets/seeds.py)")
            return 0
        races = race_seeds(tuner, log=lambda line: print(line, flush=True))
    finally:
        tuner.close()
    timed = [r for r in races if not r.error]
    adopted = [r for r in timed if r.adopted]
    kept = [r for r in timed if not r.adopted]
    line = f"raced {len(races)} workloads of {database_dir(profile)} ({len(races) - len(timed)} not timed): "
    line += f"{len(adopted)} took the seed's schedule"
    if adopted:
        line += f" (seed/own {statistics.median(r.seed_over_own for r in adopted):.2f} median)"
    if kept:
        line += f", {len(kept)} kept their own (seed/own {statistics.median(r.seed_over_own for r in kept):.2f} median)"
    print(line)
    return 0


def _costmodel_context(args):
    from vitune.costmodel_workflow import make_context

    return make_context(args.model, args.target, args.tuning, args.img_size, progress=not args.quiet)


def _costmodel_fit(args) -> int:
    from vitune.costmodel_workflow import parse_kinds, run_fit

    kinds = parse_kinds(args.kinds)  # (before the context: a typo fails in a second, not after loading the model)
    run_fit(_costmodel_context(args), args.samples, progress=not args.quiet, kinds=kinds)
    return 0


def _costmodel_eval(args) -> int:
    from vitune.costmodel_workflow import format_rows, parse_kinds, run_eval

    kinds = parse_kinds(args.kinds)
    context = _costmodel_context(args)
    rows, held_out = run_eval(context, args.samples, progress=not args.quiet, recheck=args.recheck, kinds=kinds)
    print(f"cost models on {context.profile.name} (tuning {context.tuning}), {len(held_out)} held-out random configurations of model {context.key}:")
    print(format_rows(rows))
    import statistics

    noise = statistics.median(s.spread_ms / s.latency_ms for s in held_out) if held_out else float("nan")
    print(f"measurement noise: median interquartile range of the repeats = {100 * noise:.1f} % of the latency")
    if args.json:
        doc = {"target": context.profile.name, "tuning": context.tuning, "model": args.model, "model_key": context.key,
               "measured_ms": [s.latency_ms for s in held_out], "spread_ms": [s.spread_ms for s in held_out], "noise_iqr_rel": noise, "configs": [s.config_key for s in held_out],
               "rows": [{k: v for k, v in r.__dict__.items()} | {"speedup": r.speedup} for r in rows]}
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0


def _targets_list(args) -> int:
    from vitune.targets.profile import list_targets, load_target

    for name in list_targets():
        try:
            desc = load_target(name).description
        except VituneError as err:
            desc = f"INVALID: {err}"
        print(f"{name:<20} {desc}")
    return 0


def _targets_show(args) -> int:
    from vitune.targets.profile import load_target

    p = load_target(args.name)
    print(json.dumps({"name": p.name, "description": p.description, "source": p.source, "tvm_target": p.tvm_target,
                      "tvm_host": p.tvm_host, "cross_compiler": p.cross_compiler, "runner": p.runner_spec.__dict__,
                      "protocol": p.protocol.__dict__, "hardware": {**p.hardware.__dict__, "peak_gflops": dict(p.hardware.peak_gflops)}},
                     indent=2, default=list))
    return 0


def _targets_check(args) -> int:
    from vitune.targets.check import check_contained
    from vitune.targets.profile import load_target

    load_target(args.name)  # a bad file is a one-line error here, before the child starts
    report = check_contained(args.name)
    for step, ok, detail in report.steps:
        print(f"{'ok  ' if ok else 'FAIL'} {step:<7} {detail}")
    if report.ok:
        print(f"target {report.target} is ready: probe latency {report.latency_ms:.4f} ms")
        return 0
    print(f"target {report.target} is not usable from here: {report.steps[-1][2]}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitune", description="Hardware-aware per-layer compression search for ViTs")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    study = sub.add_parser("study", help="run, inspect and export search studies").add_subparsers(dest="study_command", required=True)
    run = study.add_parser("run", help="run or resume a study")
    run.add_argument("study", help="study file (TOML)")
    run.add_argument("--n-trials", type=int, default=None, help="run this many more trials (default: up to the file's n_trials)")
    run.add_argument("--timeout", type=float, default=None, help="stop starting new trials after SECONDS")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--workers", type=int, default=1, help="processes on this machine sharing the study (default 1)")
    run.set_defaults(func=_study_run)
    wk = study.add_parser("worker", help="join a study as one more worker (any machine that reaches its storage)")
    wk.add_argument("study", help="study file (TOML); its storage must be shared (PostgreSQL, journal file, SQLite on one machine)")
    wk.add_argument("--timeout", type=float, default=None, help="stop starting new trials after SECONDS")
    wk.add_argument("--quiet", action="store_true", help="no progress bars")
    wk.set_defaults(func=_study_worker)
    status = study.add_parser("status", help="trials done/failed/running and the current front")
    status.add_argument("study")
    status.set_defaults(func=_study_status)
    show = study.add_parser("show", help="the front, the uncompressed reference and one trial's per-layer recipe")
    show.add_argument("study")
    show.add_argument("--trial", type=int, default=None, help="whose recipe to print (default: the knee of the front)")
    show.set_defaults(func=_study_show)
    exp = study.add_parser("export", help="write chosen configuration(s) as JSON")
    exp.add_argument("study")
    exp.add_argument("--pick", choices=("best", "knee", "pareto", "fastest"), default="best",
                     help="best: most accurate; knee: the front's knee; pareto: every member; fastest: the fastest "
                          "within --max-drop of the uncompressed accuracy")
    exp.add_argument("--max-latency-ms", type=float, default=None)
    exp.add_argument("--max-drop", type=float, default=0.01, help="with --pick fastest: accuracy drop allowed (0.01 = one point)")
    exp.add_argument("--max-model-mb", type=float, default=None, help="pick among trials whose model (stored bytes) is at most this many MiB")
    exp.add_argument("--max-peak-mb", type=float, default=None, help="pick among trials whose build needs at most this many MiB at run time "
                     "(the primary target's, batch 1)")
    exp.add_argument("--trial", type=int, default=None, help="export this trial (complete, on the front or not)")
    exp.add_argument("--out", required=True)
    exp.set_defaults(func=_study_export)

    rp = sub.add_parser("report", help="write an HTML report with figures (front, recipes, history, importance)")
    rp.add_argument("study", help="study file (TOML)")
    rp.add_argument("--out", required=True, help="output folder (index.html and the PNG figures)")
    rp.set_defaults(func=_report)

    ap = sub.add_parser("apply", help="rebuild an exported configuration, write model, metrics and TVM library")
    ap.add_argument("export", help="JSON written by 'vitune study export'")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--member", type=int, default=None, help="index of the member of a --pick pareto export")
    ap.add_argument("--distill-steps", type=int, default=None, help="override the knowledge-distillation steps")
    ap.add_argument("--quiet", action="store_true")
    ap.set_defaults(func=_apply)

    cp = sub.add_parser("compress", help="a hardware-blind baseline: rank allocation under a parameter budget")
    cp.add_argument("study", help="study file (TOML): model, data, target and [compression] methods")
    cp.add_argument("--strategy", choices=("greedy-rank", "uniform-rank"), default="greedy-rank")
    cp.add_argument("--params-budget", type=float, required=True, help="share of the original parameters to keep, e.g. 0.4")
    cp.add_argument("--measure", action="store_true", help="also measure TVM latency on the study's target")
    cp.add_argument("--out", default=None, help="write the configuration as an export record (JSON)")
    cp.add_argument("--quiet", action="store_true")
    cp.set_defaults(func=_compress)

    tu = sub.add_parser("tune", help="warm a target's tuning database (MetaSchedule) ahead of a study")
    tu.add_argument("target", help="target name or path to a .toml profile")
    tu.add_argument("--study", default=None, help="study file whose model (and search space) to tune (default: the embedded default model and space)")
    tu.add_argument("--trials-per-task", type=int, default=None,
                    help="MetaSchedule trials per unseen workload (default: the study's [target] tuning_trials, 64 unless it says)")
    tu.add_argument("--cover", action="store_true",
                    help="also tune configurations of the study's space that together build every kernel a candidate can build "
                         "(each attention and MLP unit in every combination of its menus), so the study's trials tune nothing")
    tu.add_argument("--configs", type=int, default=0, help="also tune this many random configurations of the study's space "
                                                             "(after --cover: a check that they find every kernel in the database)")
    tu.add_argument("--budget-s", type=float, default=0.0, help="stop tuning new workloads after SECONDS (0 = no limit)")
    tu.add_argument("--export-seed", default=None, metavar="FILE",
                    help="tune nothing: write the best schedule of each workload of the target's database to FILE (.json.gz), "
                         "for other machines with this target (vitune/targets/seeds.py)")
    tu.add_argument("--note", default="", help="with --export-seed: how the database was tuned (kept in the file)")
    tu.add_argument("--merge-seed", default=None, metavar="SEED",
                    help="with --export-seed: keep SEED's workloads too (a seed made for this target on this CPU model; the "
                         "faster record where both have one), e.g. to grow a shipped seed by what this machine tuned beside it")
    tu.add_argument("--race-seeds", action="store_true",
                    help="tune nothing: time each workload's schedule in the target's database against a fitting seed's for the "
                         "same workload, here, in alternation, and keep the faster (vitune/targets/race.py)")
    tu.set_defaults(func=_tune)

    cm = sub.add_parser("costmodel", help="latency cost models: fit on measured samples, evaluate on held-out ones").add_subparsers(dest="costmodel_command", required=True)
    for name, func, default_n, text in (
        ("fit", _costmodel_fit, 100, "measure random configurations (reusing stored ones) and fit every cost model"),
        ("eval", _costmodel_eval, 50, "measure held-out random configurations and score every fitted cost model"),
    ):
        c = cm.add_parser(name, help=text)
        c.add_argument("target", help="target name or path to a .toml profile")
        c.add_argument("--model", default="default", help="a study file, 'default' (the embedded default model), an embedded model (digits_vit, digits_vit_base) or a timm model name (random init)")
        c.add_argument("--samples", type=int, default=default_n, help=f"configurations to measure in all (default {default_n})")
        c.add_argument("--tuning", choices=TUNING_MODES, default=None, help="kernels to measure with (default: the study's, else " + DEFAULT_TUNING + " where vitune tunes, database elsewhere)")
        c.add_argument("--img-size", type=int, default=0, help="timm models: input resolution (0 = the model's default)")
        c.add_argument("--kinds", default=None, help="comma-separated cost model kinds to " + name + " (default: lut,learned,analytical; the block table's first fit measures every distinct block of the samples)")
        c.add_argument("--quiet", action="store_true")
        if name == "eval":
            c.add_argument("--json", default=None, help="write every figure printed (and each prediction) to PATH")
            c.add_argument("--recheck", type=int, default=0, help="measure the first N held-out configurations again: the noise floor row")
        c.set_defaults(func=func)

    targets = sub.add_parser("targets", help="hardware target profiles").add_subparsers(dest="targets_command", required=True)
    tl = targets.add_parser("list", help="list known targets")
    tl.set_defaults(func=_targets_list)
    ts = targets.add_parser("show", help="print a target profile")
    ts.add_argument("name")
    ts.set_defaults(func=_targets_show)
    tc = targets.add_parser("check", help="build a probe model for a target, run it, or say what is missing")
    tc.add_argument("name", help="target name or path to a .toml profile")
    tc.set_defaults(func=_targets_check)
    return parser


def _version() -> str:
    from vitune import __version__

    return f"vitune {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file as they happen
    try:
        return args.func(args)
    except VituneError as err:
        print(f"vitune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitune: interrupted; completed trials are kept in the study's storage", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
