"""The Python API: vitune embedded in a script, one function per thing a user does.

Everything the command line does goes through these (the CLI is a thin layer over the same
library calls), and they take the same inputs: a study file, a target name or ``.toml`` path,
an export record. Errors a user can fix raise :class:`vitune.errors.VituneError` with a one-line
message; a candidate that fails inside a study is recorded as failed, not raised.

=======================  ==========================================================================
``load_study(path)``     parse and validate a study file → ``StudySpec`` (frozen dataclass)
``run(spec, ...)``       run or resume the study → ``RunSummary`` (counts, seconds)
``view(spec)``           read the study → ``StudyView`` (``trials``, ``front``, ``reference``)
``export(spec, ...)``    write a configuration (``best`` | ``knee`` | ``pareto``) as JSON → record
``apply(record, out)``   rebuild it, score it on the test split, write model + TVM library → metrics
``report(spec, out)``    write the HTML report and its figures → ``Report``
``target(name)``         load a target profile → ``TargetProfile``
``check_target(name)``   build and run a probe model on a target → ``CheckReport``
=======================  ==========================================================================
"""

from __future__ import annotations

from pathlib import Path


def load_study(path: str | Path):
    from vitune.search.studyfile import load_study_file

    return load_study_file(path)


def run(spec, n_trials: int | None = None, timeout_s: float | None = None, progress: bool = True, log=print):
    """Run ``spec``'s study until it holds its ``n_trials`` (or ``n_trials`` more, when given)."""
    from vitune.search.study import run_study

    return run_study(spec, n_trials=n_trials, timeout_s=timeout_s, progress=progress, log=log)


def view(spec):
    from vitune.reports.view import load_view

    return load_view(spec)


def export(spec, pick: str = "best", out: str | Path = "best.json", max_latency_ms: float | None = None, max_drop: float = 0.01,
           trial: int | None = None, max_model_mb: float | None = None, max_peak_mb: float | None = None) -> dict:
    """``pick``: best, knee, pareto, fastest (within ``max_drop`` of the uncompressed validation
    accuracy) or trial (``trial``, by number); ``max_model_mb`` / ``max_peak_mb`` (MiB): pick from
    the front of the trials within them."""
    from vitune.search.export import export as _export

    return _export(spec, pick, Path(out), max_latency_ms, max_drop, trial, max_model_mb, max_peak_mb)


def apply(record: dict | str | Path, out: str | Path, member: int | None = None, distill_steps: int | None = None, progress: bool = False) -> dict:
    """``record``: an export record (dict) or the path of a file ``export`` wrote."""
    from vitune.apply import apply_record
    from vitune.search.export import load_record

    where = "export"
    if not isinstance(record, dict):
        where, record = str(record), load_record(Path(record), member)
    return apply_record(record, Path(out), distill_steps, progress=progress, where=where)


def report(spec, out: str | Path):
    from vitune.reports import build_report

    return build_report(spec, Path(out))


def target(name: str | Path):
    from vitune.targets import load_target

    return load_target(name)


def check_target(name: str | Path):
    from vitune.targets.check import check_target as _check

    return _check(target(name))


__all__ = ["load_study", "run", "view", "export", "apply", "report", "target", "check_target"]
