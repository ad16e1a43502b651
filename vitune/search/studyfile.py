"""Study files: a study is a TOML file, parsed and validated into a :class:`StudySpec`.

Reference (every key optional unless marked)::

    [study]
    name = "quickstart"            # required; the Optuna study name
    storage = ""                   # Optuna storage URL; default sqlite:///<file dir>/runs/<name>.db
                                   # relative sqlite paths are relative to the study file;
                                   # "journal:///path.log" selects Optuna's journal file storage
    n_trials = 40                  # total trials the study should reach (resuming runs the rest)
    timeout_s = 0                  # 0 = none; wall-clock bound of one run
    sampler = "tpe"                # tpe | evolution | nsga2 | random
    seed = 0

    [model]
    source = "default"             # default (digits ViT, trained and cached) | timm
    name = "deit_tiny_patch16_224" # timm model name (source = "timm")
    pretrained = false             # timm hub weights (needs network on first use)
    checkpoint = ""                # local checkpoint file for the timm model
    num_classes = 0                # 0 = the model's default
    img_size = 0                   # timm input resolution; 0 = the model's default

    [data]
    source = "digits"              # digits | imagefolder
    root = ""                      # ImageFolder root (class sub-folders), relative to the study file
    fractions = { train = 0.5, calib = 0.1, val = 0.2, test = 0.2 }  # imagefolder splits
    seed = 0
    val_copies = 1                 # 2..9: validation split plus shifted copies of its images

    [target]
    name = "local-cpu"             # built-in or user profile name, or a path to a .toml profile
    latency = "measured"           # measured | lut | learned | analytical (cost models: vitune costmodel fit)
    remeasure_every = 0            # predicted latency: re-measure the front every N completed trials
                                   # (0 = only at the end of a run); measurements refit the cost model
    tuning = "tune"                # tune (tune unseen workloads) | database (tuned records only) |
                                   # off (untuned kernels: a labelled fallback, not what apply ships)
    tuning_trials = 64             # MetaSchedule trials per unseen workload (tuning = "tune")
    tuning_budget_s = 0            # tuning time of one run; 0 = no limit
    seeds = "any"                  # shipped schedules: any (also those tuned on another CPU model,
                                   # used as they are) | this-cpu (workloads with only another
                                   # CPU's schedule are tuned here; "tune" only)
    budget_ms = 0                  # latency budget on this target (mode = "constrained" needs a budget)
    budget_model_mb = 0            # the model's stored size, MiB (0 = none)
    budget_peak_mb = 0             # this target's build at run time, batch 1, MiB (0 = none)

    [search]
    mode = "pareto"                # pareto: accuracy vs latency front | constrained: max accuracy
                                   # subject to every [target] budget (Optuna constraints)
    objectives = ["accuracy", "latency_ms"]  # pareto: accuracy and what to minimise beside it,
                                   # any of latency_ms, model_mb, peak_mb (MiB; per target)
    warm_start = true              # per-layer sensitivity sweep (saved, reused) → uniform,
                                   # sensitivity-guided, latency-walk and rank-allocation
                                   # configurations are the first trials
    refine_front = true            # a trial that joins the front: its neighbours along the
                                   # sweep's sensitivity order are the next trials (needs warm_start)
    min_fidelity = 0.5             # stop a candidate whose top-1 agreement with the uncompressed
                                   # model on calibration images is below this (0 = off)
    fidelity_images = 256
    accuracy_shards = 4            # read validated accuracy in parts; stop once a candidate cannot
                                   # reach the front (1 = off)
    overlap = "auto"               # read validated accuracy on a second core while the candidate
                                   # builds: "auto" (once a reading takes a second or more) | true | false

    [space]                        # the menu every layer may take
    precision = ["fp32", "fp16", "int8"]  # fp32 | fp16 | int8 | int4 | w8a8
    rank_fraction = [1.0, 0.5, 0.25]  # of the (pruned) layer's full rank; 1.0 = no low-rank
    prune_heads = [0.0, 0.25, 0.5]
    prune_mlp = [0.0, 0.25, 0.5]
    distill_steps = [0]            # KD recovery steps per candidate (one choice per trial)

    [[space.override]]             # narrow the menu of layers matching a glob (later wins)
    layers = "blocks.0.*"
    precision = ["fp32"]

    [[space.tie]]                  # layers matching the glob share one choice of these knobs
    layers = "blocks.*.mlp.fc1"
    knobs = ["rank_fraction"]      # precision | rank_fraction | prune_heads | prune_mlp

    [compression]                  # how the transforms work (vitune.compression.methods), e.g.
    lowrank = "aa-residual"        # svd | aa | aa-residual
    prune_criterion = "magnitude"  # magnitude | activation | taylor
    act_calibration = "percentile" # w8a8 activation scales: minmax | percentile
    int4_group_size = 32
"""

from __future__ import annotations

import dataclasses
import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitune.compression.config import PRECISIONS
from vitune.compression.methods import CompressionMethods
from vitune.data.splits import SHIFTS
from vitune.errors import ConfigError
from vitune.tables import Table, check_prune_ratio, check_rank_fraction, key_path
from vitune.search.objectives import COSTS
from vitune.search.objectives import DEFAULT as DEFAULT_OBJECTIVES
from vitune.targets.tuning import DEFAULT_TUNING, SEED_MODES, TUNING_MODES, default_tuning

SAMPLERS = ("tpe", "evolution", "nsga2", "random")
MODES = ("pareto", "constrained")
MODEL_SOURCES = ("default", "timm")
DATA_SOURCES = ("digits", "imagefolder")
MENU_KEYS = ("precision", "rank_fraction", "prune_heads", "prune_mlp")
# Every key a study file may hold, per table ([compression] keys: CompressionMethods' fields).
SECTION_KEYS = {
    "": ("study", "model", "data", "target", "space", "compression", "search"),
    "study": ("name", "storage", "n_trials", "timeout_s", "sampler", "seed"),
    "model": ("source", "name", "pretrained", "checkpoint", "num_classes", "img_size"),
    "data": ("source", "root", "fractions", "seed", "val_copies"),
    "data.fractions": ("train", "calib", "val", "test"),
    "target": ("name", "latency", "tuning", "tuning_trials", "tuning_budget_s", "seeds", "remeasure_every", "budget_ms", "budget_model_mb",
               "budget_peak_mb", "also"),
    "target.also": ("name", "latency", "tuning", "tuning_trials", "tuning_budget_s", "seeds", "budget_ms", "budget_model_mb", "budget_peak_mb"),
    "search": ("mode", "objectives", "warm_start", "refine_front", "min_fidelity", "fidelity_images", "accuracy_shards", "overlap"),
    "space": (*MENU_KEYS, "distill_steps", "override", "tie"),
    "space.override": ("layers", *MENU_KEYS),
    "space.tie": ("layers", "knobs"),
}


@dataclass(frozen=True)
class ModelSpec:
    source: str = "default"
    name: str = "digits_vit"
    pretrained: bool = False
    checkpoint: str = ""  # resolved absolute path or ""
    num_classes: int = 0
    img_size: int = 0  # timm models: input resolution (0 = the model's default)


@dataclass(frozen=True)
class DataSpec:
    source: str = "digits"
    root: str = ""  # resolved absolute path or ""
    fractions: tuple[tuple[str, float], ...] = (("train", 0.5), ("calib", 0.1), ("val", 0.2), ("test", 0.2))
    seed: int = 0
    val_copies: int = 1  # the validation split with shifted copies of its images (vitune.data.splits.ShiftedCopies)


@dataclass(frozen=True)
class TargetSpec:
    name: str = "local-cpu"
    latency: str = "measured"
    tuning: str = DEFAULT_TUNING
    tuning_trials: int = 64
    tuning_budget_s: float = 0.0
    seeds: str = "any"  # SEED_MODES: which shipped schedules stand in for tuning here
    remeasure_every: int = 0
    budget_ms: float = 0.0  # 0 = none
    budget_model_mb: float = 0.0  # MiB; 0 = none
    budget_peak_mb: float = 0.0  # MiB; 0 = none


@dataclass(frozen=True)
class SearchSpec:
    mode: str = "pareto"
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES  # "accuracy", then costs of vitune.search.objectives.COSTS
    warm_start: bool = True
    refine_front: bool = True
    min_fidelity: float = 0.5
    fidelity_images: int = 256
    accuracy_shards: int = 4
    overlap: bool | str = "auto"  # accuracy read beside the build: True, False or "auto" (Evaluator's rule)


@dataclass(frozen=True)
class Override:
    layers: str  # glob over unit names
    menu: tuple[tuple[str, tuple], ...]  # key → allowed values


@dataclass(frozen=True)
class Tie:
    layers: str  # glob over unit names
    knobs: tuple[str, ...]


@dataclass(frozen=True)
class SpaceSpec:
    precision: tuple[str, ...] = ("fp32", "fp16", "int8")
    rank_fraction: tuple[float, ...] = (1.0, 0.5, 0.25)
    prune_heads: tuple[float, ...] = (0.0, 0.25, 0.5)
    prune_mlp: tuple[float, ...] = (0.0, 0.25, 0.5)
    distill_steps: tuple[int, ...] = (0,)
    overrides: tuple[Override, ...] = ()
    ties: tuple[Tie, ...] = ()

    def menu_for(self, unit: str, key: str) -> tuple:
        """The values ``unit`` may take for ``key`` after applying every matching override."""
        values = getattr(self, key)
        for override in self.overrides:
            if fnmatch.fnmatchcase(unit, override.layers):
                values = dict(override.menu).get(key, values)
        return values


@dataclass(frozen=True)
class StudySpec:
    path: Path
    name: str
    storage: str
    n_trials: int
    timeout_s: float
    sampler: str
    seed: int
    model: ModelSpec
    data: DataSpec
    target: TargetSpec  # the primary target: latency_ms, export's --max-latency-ms, apply's artifact
    space: SpaceSpec
    methods: CompressionMethods = CompressionMethods()
    # the [compression] keys the file sets: the others follow vitune's defaults, or a resumed
    # study's recorded values where a default changed since it was made (search.study.resumed_methods)
    methods_set: frozenset[str] = frozenset()
    search: SearchSpec = SearchSpec()
    also: tuple[TargetSpec, ...] = ()  # [[target.also]]: more targets, one more objective (or constraint) each

    @property
    def targets(self) -> tuple[TargetSpec, ...]:
        return (self.target, *self.also)


# -- parsing helpers ------------------------------------------------------------------------
def _menu(key: str, value: Any, where: str) -> tuple:
    at = key_path(where, key)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{at}: expected a non-empty list, got {value!r}")
    out = []
    for item in value:
        if key == "precision":
            if item not in PRECISIONS:
                raise ConfigError(f"{at}: unsupported precision {item!r} (expected {', '.join(PRECISIONS)})")
        elif key == "rank_fraction":
            item = check_rank_fraction(item, at)
        elif key in ("prune_heads", "prune_mlp"):
            item = check_prune_ratio(item, at)
        elif key == "distill_steps":
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise ConfigError(f"{at}: expected non-negative integers, got {item!r}")
        if item in out:
            raise ConfigError(f"{at}: {item!r} is listed twice")
        out.append(item)
    return tuple(out)


def _resolve_path(base: Path, value: str) -> str:
    if not value:
        return ""
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def default_storage(path: Path, name: str) -> str:
    return f"sqlite:///{(path.parent / 'runs' / f'{name}.db').resolve()}"


def resolve_storage(url: str, base: Path) -> str:
    """Make relative sqlite/journal paths relative to the study file's folder."""
    for scheme in ("sqlite:///", "journal:///"):
        if url.startswith(scheme):
            rest = url[len(scheme):]
            if rest and not rest.startswith("/") and rest != ":memory:":
                return scheme + str((base / rest).resolve())
    if "://" not in url:
        raise ConfigError(f"storage {url!r} is not a URL (e.g. sqlite:///runs/study.db, postgresql://user@host/db, journal:///runs/study.log)")
    return url


def parse_study(data: dict, path: Path) -> StudySpec:
    where = str(path)
    top = Table(data, where, SECTION_KEYS[""])
    if "study" not in data:
        raise ConfigError(f"{where}: missing table [study] (it needs at least name = \"...\")")
    st = top.table("study", SECTION_KEYS["study"])
    name = st.str("name", "")
    if not name or any(c in name for c in "/\\ "):
        raise ConfigError(f"{st.at('name')}: expected a non-empty name without spaces or slashes, got {name!r}")
    storage = st.str("storage", "") or default_storage(path, name)
    storage = resolve_storage(storage, path.parent)

    md = top.table("model", SECTION_KEYS["model"])
    model = ModelSpec(
        source=md.str("source", "default", MODEL_SOURCES),
        name=md.str("name", "digits_vit"),
        pretrained=md.bool("pretrained", False),
        checkpoint=_resolve_path(path.parent, md.str("checkpoint", "")),
        num_classes=md.int("num_classes", 0),
        img_size=md.int("img_size", 0),
    )
    if model.source == "timm" and model.name == "digits_vit":
        raise ConfigError(f"{md.at('name')}: a timm model name is required when source = \"timm\"")
    if model.source == "default":
        from vitune.models.default import RECIPES

        if model.name not in RECIPES:
            raise ConfigError(f"{md.at('name')}: no embedded model {model.name!r} (known: {', '.join(RECIPES)})")
    if model.checkpoint and not Path(model.checkpoint).is_file():
        raise ConfigError(f"{md.at('checkpoint')}: file {model.checkpoint!r} does not exist")

    dt = top.table("data", SECTION_KEYS["data"])
    fractions = DataSpec.fractions
    if "fractions" in dt.data:
        fr = dt.table("fractions", SECTION_KEYS["data.fractions"])
        fractions = tuple((k, fr.float(k, 0.0)) for k in ("train", "calib", "val", "test"))
        if abs(sum(v for _, v in fractions) - 1.0) > 1e-6 or dict(fractions)["val"] <= 0 or dict(fractions)["test"] <= 0:
            raise ConfigError(f"{fr.where}: train/calib/val/test must sum to 1 with val and test > 0")
    data_spec = DataSpec(
        source=dt.str("source", "digits", DATA_SOURCES),
        root=_resolve_path(path.parent, dt.str("root", "")),
        fractions=fractions,
        seed=dt.int("seed", 0),
        val_copies=dt.int("val_copies", 1, minimum=1),
    )
    if data_spec.val_copies > len(SHIFTS):
        raise ConfigError(f"{dt.at('val_copies')}: at most {len(SHIFTS)} (the original and {len(SHIFTS) - 1} one-pixel shifts), got {data_spec.val_copies}")
    if data_spec.source == "imagefolder":
        if not data_spec.root:
            raise ConfigError(f"{dt.at('root')}: required when source = \"imagefolder\"")
        if not Path(data_spec.root).is_dir():
            raise ConfigError(f"{dt.at('root')}: folder {data_spec.root!r} does not exist")
    if model.source == "default" and data_spec.source != "digits":
        raise ConfigError(f"{md.at('source')}: the default model is trained on digits; use source = \"timm\" for {data_spec.source}")

    tg = top.table("target", SECTION_KEYS["target"])
    target = _target(tg, path, "local-cpu")
    also_t = tg.tables("also", SECTION_KEYS["target.also"])
    also = tuple(_target(t, path, "") for t in also_t)
    names = [t.name for t in (target, *also)]
    for i, (t, at) in enumerate(zip(also, also_t)):
        if not t.name:
            raise ConfigError(f"{at.at('name')}: required (a target name or a .toml profile)")
        if t.name in names[: i + 1]:  # the primary and the earlier extra targets
            raise ConfigError(f"{at.at('name')}: target {t.name!r} is listed twice")

    sp = top.table("space", SECTION_KEYS["space"])
    defaults = SpaceSpec()
    menus = {k: _menu(k, sp.data[k], sp.where) if k in sp.data else getattr(defaults, k) for k in (*MENU_KEYS, "distill_steps")}
    overrides = []
    for ov in sp.tables("override", SECTION_KEYS["space.override"]):
        glob = ov.str("layers", "")
        if not glob:
            raise ConfigError(f"{ov.at('layers')}: required (a glob such as 'blocks.0.*')")
        menu = tuple((k, _menu(k, ov.data[k], ov.where)) for k in MENU_KEYS if k in ov.data)
        overrides.append(Override(glob, menu))
    space = SpaceSpec(**menus, overrides=tuple(overrides), ties=_ties(sp))
    methods = CompressionMethods.from_dict(top.data.get("compression", {}), f"{where} [compression]")
    se = top.table("search", SECTION_KEYS["search"])
    search = SearchSpec(
        mode=se.str("mode", "pareto", MODES),
        objectives=_objectives(se),
        warm_start=se.bool("warm_start", True),
        refine_front=se.bool("refine_front", True),
        min_fidelity=se.float("min_fidelity", 0.5),
        fidelity_images=se.int("fidelity_images", 256, minimum=1),
        accuracy_shards=se.int("accuracy_shards", 4, minimum=1),
        overlap=_overlap(se),
    )
    if search.mode == "constrained" and search.objectives != DEFAULT_OBJECTIVES:
        raise ConfigError(f"{se.at('objectives')}: a constrained study maximises accuracy within its budgets; more objectives "
                          "need mode = \"pareto\" (or set budget_model_mb / budget_peak_mb on the target)")
    if "peak_mb" in search.objectives:
        for t, where in ((target, "[target]"), *((a, f"[[target.also]] #{i + 1}") for i, a in enumerate(also))):
            if t.latency != "measured":
                raise ConfigError(f"{se.at('objectives')}: peak memory is read from the build, and {where} latency = {t.latency!r} "
                                  "builds nothing: use latency = \"measured\" or leave peak_mb out")
    if search.min_fidelity > 1.0:
        raise ConfigError(f"{se.at('min_fidelity')}: expected a share in [0, 1], got {search.min_fidelity!r}")
    if search.mode == "constrained" and not any(b > 0 for t in (target, *also) for b in (t.budget_ms, t.budget_model_mb, t.budget_peak_mb)):
        raise ConfigError(f"{tg.at('budget_ms')}: mode = \"constrained\" needs a budget: latency in ms (e.g. budget_ms = 1.0), "
                          "or budget_model_mb / budget_peak_mb in MiB")

    return StudySpec(
        path=path.resolve(),
        name=name,
        storage=storage,
        n_trials=st.int("n_trials", 40, minimum=1),
        timeout_s=st.float("timeout_s", 0.0),
        sampler=st.str("sampler", "tpe", SAMPLERS),
        seed=st.int("seed", 0),
        model=model,
        data=data_spec,
        target=target,
        space=space,
        methods=methods,
        methods_set=frozenset(top.data.get("compression", {})),
        search=search,
        also=also,
    )


def _target(tg: Table, path: Path, default_name: str) -> TargetSpec:
    from vitune.costmodels import latency_sources

    target = TargetSpec(
        name=tg.str("name", default_name),
        latency=tg.str("latency", "measured", tuple(latency_sources())),
        remeasure_every=tg.int("remeasure_every", 0),
        tuning=tg.str("tuning", DEFAULT_TUNING, TUNING_MODES),
        tuning_trials=tg.int("tuning_trials", 64, minimum=1),
        tuning_budget_s=tg.float("tuning_budget_s", 0.0),
        seeds=tg.str("seeds", "any", SEED_MODES),
        budget_ms=tg.float("budget_ms", 0.0),
        budget_model_mb=tg.float("budget_model_mb", 0.0),
        budget_peak_mb=tg.float("budget_peak_mb", 0.0),
    )
    if target.budget_peak_mb and target.latency != "measured":
        raise ConfigError(f"{tg.at('budget_peak_mb')}: peak memory is read from the build, and latency = {target.latency!r} "
                          "builds nothing: use latency = \"measured\" or leave budget_peak_mb out")
    if target.name.endswith(".toml") or "/" in target.name:
        target = dataclasses.replace(target, name=_resolve_path(path.parent, target.name))
    if "tuning" not in tg:  # unset: tuned kernels wherever the target allows
        target = dataclasses.replace(target, tuning=_default_tuning(target.name))
    if target.seeds != "any" and target.tuning != "tune":
        raise ConfigError(f"{tg.at('seeds')}: seeds = {target.seeds!r} tunes the workloads another CPU's schedules would serve, "
                          f"and tuning = {target.tuning!r} tunes nothing: use tuning = \"tune\" or leave seeds out")
    return target


def _default_tuning(name: str) -> str:
    from vitune.targets import load_target

    try:
        return default_tuning(load_target(name))
    except ConfigError:  # an unknown target: the study's checks say so, naming the key
        return DEFAULT_TUNING


def _objectives(se) -> tuple[str, ...]:
    names = se.strings("objectives", DEFAULT_OBJECTIVES)
    if not names or names[0] != "accuracy":
        raise ConfigError(f"{se.at('objectives')}: the first objective is \"accuracy\", then what to minimise "
                          f"(any of {', '.join(COSTS)}), got {list(names)}")
    for name in names[1:]:
        if name not in COSTS:
            raise ConfigError(f"{se.at('objectives')}: unknown objective {name!r} (expected {', '.join(COSTS)})")
    if len(set(names)) < len(names) or len(names) < 2:
        raise ConfigError(f"{se.at('objectives')}: accuracy and at least one of {', '.join(COSTS)}, each once; got {list(names)}")
    return tuple(names)


def _overlap(se) -> bool | str:
    value = se.get("overlap", "auto")
    if not (isinstance(value, bool) or value == "auto"):
        raise se.fail("overlap", 'true, false or "auto"')
    return value


def _ties(sp: Table) -> tuple[Tie, ...]:
    ties = []
    for tt in sp.tables("tie", SECTION_KEYS["space.tie"]):
        glob = tt.str("layers", "")
        knobs = tt.data.get("knobs", [])
        if not glob:
            raise ConfigError(f"{tt.at('layers')}: required (a glob such as 'blocks.*.mlp.fc1')")
        if not isinstance(knobs, list) or not knobs or any(k not in MENU_KEYS for k in knobs):
            raise ConfigError(f"{tt.at('knobs')}: expected a non-empty list of {', '.join(MENU_KEYS)}, got {knobs!r}")
        ties.append(Tie(glob, tuple(knobs)))
    return tuple(ties)


def load_study_file(path: str | Path) -> StudySpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return parse_study(data, path)
