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
            assert "[data].root" in str(err) or "checkpoint" in str(err), str(err)


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
        ("[study]\nname='x'\nn_trials='many'\n", r"\[study\]\.n_trials: expected an integer >= 1, got 'many'"),
        ("[study]\nname='x'\nsampler='cmaes'\n", r"\[study\]\.sampler: expected one of tpe, evolution, nsga2, random"),
        ("[model]\nsource='default'\n", r"missing table \[study\]"),
        ("[study]\nname='x'\n[space]\nprecision=['int3']\n", r"\[space\]\.precision: unsupported precision 'int3'"),
        ("[study]\nname='x'\n[space]\nrank_fraction=[0.0]\n", r"rank fraction 0\.0 must be in \(0, 1\]"),
        ("[study]\nname='x'\n[space]\nprune_mlp=[1.0]\n", r"prune ratio 1\.0 is outside \[0, 1\)"),
        ("[study]\nname='x'\n[[space.override]]\nprecision=['fp32']\n", r"override\]\] #1\.layers: required"),
        ("[study]\nname='x'\n[data]\nsource='imagefolder'\n", r"\[data\]\.root: required"),
        ("[study]\nname='x'\n[model]\nsource='timm'\n", r"a timm model name is required"),
        ("[study]\nname='x'\nstorage='not a url'\n", r"storage 'not a url' is not a URL"),
        ("[study\nname='x'\n", r"not valid TOML"),
        ("[study]\nname='x'\n[compression]\nlowrank='tucker'\n", r"\[compression\]\.lowrank: 'tucker' is not one of svd, aa, aa-residual"),
        ("[study]\nname='x'\n[compression]\nresidual=0.1\n", r"\[compression\]: unknown key 'residual'"),
        ("[study]\nname='x'\n[compression]\nint4_group_size=7\n", r"\[compression\]\.int4_group_size: must be even"),
        ("[study]\nname='x'\n[compression]\nrefine_steps=1.5\n", r"\[compression\]\.refine_steps: expected int, got 1\.5"),
    ],
)
def test_bad_study_files_name_file_and_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_study_file(write(tmp_path, body))


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_study_file("/no/such/study.toml")
