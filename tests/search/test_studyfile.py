from pathlib import Path

import pytest

from vitune.errors import ConfigError
from vitune.search.studyfile import load_study_file

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_parses_with_defaults():
    spec = load_study_file(ROOT / "studies" / "quickstart.toml")
    assert spec.name == "quickstart" and spec.sampler == "tpe"
    assert spec.storage == f"sqlite:///{ROOT / 'studies' / 'runs' / 'quickstart.db'}"
    assert spec.model.source == "default" and spec.data.source == "digits"
    assert spec.target.name == "local-cpu" and spec.target.latency == "measured"
    assert 0.125 in spec.space.rank_fraction


def test_every_shipped_study_file_parses_or_names_its_missing_data():
    for path in sorted((ROOT / "studies").glob("*.toml")):
        try:
            load_study_file(path)
        except ConfigError as err:  # example files may point at data a user must provide
            assert "[data] root" in str(err) or "checkpoint" in str(err), str(err)


def write(tmp_path, body):
    path = tmp_path / "s.toml"
    path.write_text(body)
    return path


def test_overrides_and_relative_storage(tmp_path):
    spec = load_study_file(
        write(
            tmp_path,
            """
[study]
name = "x"
storage = "sqlite:///db/x.db"
[space]
precision = ["fp32", "int8"]
[[space.override]]
layers = "blocks.0.*"
precision = ["fp32"]
[[space.override]]
layers = "*.fc1"
rank_fraction = [1.0]
""",
        )
    )
    assert spec.storage == f"sqlite:///{tmp_path / 'db' / 'x.db'}"
    assert spec.space.menu_for("blocks.0.attn.qkv", "precision") == ("fp32",)
    assert spec.space.menu_for("blocks.1.attn.qkv", "precision") == ("fp32", "int8")
    assert spec.space.menu_for("blocks.2.mlp.fc1", "rank_fraction") == (1.0,)


def test_compression_methods_table(tmp_path):
    spec = load_study_file(write(tmp_path, "[study]\nname='x'\n[compression]\nlowrank='aa'\nprune_criterion='taylor'\nact_percentile=99\n"))
    assert spec.methods.lowrank == "aa" and spec.methods.prune_criterion == "taylor" and spec.methods.act_percentile == 99.0
    assert load_study_file(write(tmp_path, "[study]\nname='y'\n")).methods.lowrank == "aa-residual"


@pytest.mark.parametrize(
    "body,message",
    [
        ("[study]\nname='x'\ntrials=3\n", r"s\.toml \[study\]: unknown key 'trials'"),
        ("[study]\nname='x'\nn_trials='many'\n", r"\[study\] n_trials: expected an integer >= 1, got 'many'"),
        ("[study]\nname='x'\nsampler='cmaes'\n", r"\[study\] sampler: expected one of tpe, evolution, nsga2, random"),
        ("[model]\nsource='default'\n", r"missing table \[study\]"),
        ("[study]\nname='x'\n[space]\nprecision=['int3']\n", r"\[space\] precision: unsupported precision 'int3'"),
        ("[study]\nname='x'\n[space]\nrank_fraction=[0.0]\n", r"rank fraction 0\.0 must be in \(0, 1\]"),
        ("[study]\nname='x'\n[space]\nprune_mlp=[1.0]\n", r"prune ratio 1\.0 is outside \[0, 1\)"),
        ("[study]\nname='x'\n[[space.override]]\nprecision=['fp32']\n", r"override\]\] #1 layers: required"),
        ("[study]\nname='x'\n[data]\nsource='imagefolder'\n", r"\[data\] root: required"),
        ("[study]\nname='x'\n[data]\nval_copies=10\n", r"s\.toml \[data\] val_copies: at most 9"),
        ("[study]\nname='x'\n[data]\nval_copies=0\n", r"\[data\] val_copies: expected an integer >= 1"),
        ("[study]\nname='x'\n[model]\nsource='timm'\n", r"a timm model name is required"),
        ("[study]\nname='x'\n[model]\nname='digits_vit_huge'\n", r"\[model\] name: no embedded model 'digits_vit_huge' \(known: digits_vit, "),
        ("[study]\nname='x'\nstorage='not a url'\n", r"storage 'not a url' is not a URL"),
        ("[study\nname='x'\n", r"not valid TOML"),
        ("[study]\nname='x'\n[compression]\nlowrank='tucker'\n", r"\[compression\] lowrank: expected one of svd, aa, aa-residual, got 'tucker'"),
        ("[study]\nname='x'\n[compression]\nresidual=0.1\n", r"\[compression\]: unknown key 'residual'"),
        ("[study]\nname='x'\n[compression]\nint4_group_size=7\n", r"\[compression\] int4_group_size: must be even"),
        ("[study]\nname='x'\n[compression]\nrefine_steps=1.5\n", r"\[compression\] refine_steps: expected int, got 1\.5"),
        ("[study]\nname='x'\n[compression]\nrefine_solver='lbfgs'\n", r"\[compression\] refine_solver: expected one of adam, als, got 'lbfgs'"),
        ("[study]\nname='x'\n[search]\noverlap=1\n", r"s\.toml \[search\] overlap: expected true, false or \"auto\", got 1"),
        ("[study]\nname='x'\n[search]\noverlap='always'\n", r"\[search\] overlap: expected true, false or \"auto\", got 'always'"),
    ],
)
def test_bad_study_files_name_file_and_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_study_file(write(tmp_path, body))


@pytest.mark.parametrize(("written", "expected"), [("", "auto"), ("overlap = false\n", False), ("overlap = true\n", True),
                                                 ('overlap = "auto"\n', "auto")])
def test_the_search_table_says_whether_accuracy_is_read_beside_the_build(tmp_path, written, expected):
    assert load_study_file(write(tmp_path, f"[study]\nname='x'\n[search]\n{written}")).search.overlap == expected


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_study_file("/no/such/study.toml")


@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_storage_paths_resolve_as_sqlalchemy_urls_do(tmp_path, scheme):
    """Three slashes then a path: relative to the study file's folder; four: absolute."""
    ext = "db" if scheme == "sqlite" else "log"
    elsewhere = tmp_path / "elsewhere"
    body = '[study]\nname = "x"\nstorage = "{url}"\n'
    rel = load_study_file(write(tmp_path, body.format(url=f"{scheme}:///runs/x.{ext}")))
    assert rel.storage == f"{scheme}:///{tmp_path / 'runs' / f'x.{ext}'}"
    absolute = load_study_file(write(tmp_path, body.format(url=f"{scheme}:///{elsewhere}/x.{ext}")))  # "////" + path
    assert absolute.storage == f"{scheme}:///{elsewhere / f'x.{ext}'}"
    assert not str(absolute.storage).startswith(f"{scheme}:///{tmp_path}/{tmp_path}")


def test_read_only_commands_create_no_storage_file(tmp_path, capsys):
    from vitune.cli import main

    path = write(tmp_path, '[study]\nname = "never-run"\nstorage = "sqlite:///runs/never.db"\n')
    for argv in (["study", "export", str(path), "--out", str(tmp_path / "e.json")], ["study", "status", str(path)], ["study", "show", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no study 'never-run'" in err and "does not exist" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "runs").exists() and not (tmp_path / "e.json").exists()


@pytest.mark.parametrize(
    "body,message",
    [
        ('[study]\nname = "x"\n[target]\nname = "no-such-board"\n', r"s\.toml \[target\] name: unknown target 'no-such-board'"),
        ('[study]\nname = "x"\n[target]\nname = "local-cpu"\n[[target.also]]\nname = "nope"\n', r"s\.toml \[\[target\.also\]\] #1 name: unknown target 'nope'"),
        ('[study]\nname = "x"\nstorage = "nosuchdb+driver://u@127.0.0.1/x"\n', r"s\.toml \[study\] storage: storage 'nosuchdb\+driver://u@127\.0\.0\.1/x' cannot be opened"),
    ],
)
def test_an_unknown_target_or_storage_names_file_and_key(tmp_path, capsys, body, message):
    import re

    from vitune.cli import main

    assert main(["study", "run", str(write(tmp_path, body))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(message, err), err


@pytest.mark.parametrize(
    ("target", "written", "expected"),
    [
        ("local-cpu", "", "tune"),  # unset: the kernels `vitune apply` ships, tuned here
        ("arm-a72", "", "database"),  # a board over RPC: the records `vitune tune` made there
        ("local-cpu", 'tuning = "off"\n', "off"),  # the untuned fallback only when asked for
        ("arm-a72", 'tuning = "database"\n', "database"),
    ],
)
def test_a_study_measures_tuned_kernels_unless_it_says_otherwise(tmp_path, target, written, expected):
    other = "arm-a78" if target == "local-cpu" else "local-cpu"
    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nname = "x"\n[target]\nname = "{target}"\n{written}[[target.also]]\nname = "{other}"\nlatency = "analytical"\n')
    spec = load_study_file(path)
    assert spec.target.tuning == expected
    assert spec.also[0].tuning == ("database" if other == "arm-a78" else "tune")


@pytest.mark.parametrize(("written", "seeds", "message"), [
    ("", "any", None),  # the default: shipped schedules of any CPU model stand in for tuning
    ('seeds = "this-cpu"\n', "this-cpu", None),
    ('seeds = "this-cpu"\ntuning = "database"\n', None, r"\[target\] seeds: seeds = 'this-cpu' tunes .* tuning = 'database' tunes nothing"),
    ('seeds = "never"\n', None, r"\[target\] seeds: expected one of any, this-cpu, got 'never'"),
])
def test_a_study_chooses_whether_another_cpus_schedules_stand_in_for_tuning(tmp_path, written, seeds, message):
    from vitune.search.cache import target_key
    from vitune.search.study import latency_source_for
    from vitune.targets import load_target

    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nname = "x"\n[target]\nname = "local-cpu"\n{written}')
    if message is not None:
        with pytest.raises(ConfigError, match=message):
            load_study_file(path)
        return
    spec = load_study_file(path)
    assert spec.target.seeds == seeds
    _, _, tuner = latency_source_for(spec, spec.target, "[target]")
    assert tuner is not None and tuner.other_cpu_seeds == (seeds == "any")
    # measured results of one build are not served to the other
    profile = load_target("local-cpu")
    assert (target_key(profile, "tune", seeds) == target_key(profile, "tune")) == (seeds == "any")
