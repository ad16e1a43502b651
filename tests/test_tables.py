"""One reader of users' tables: study files, target files, [compression] and configurations say
what is wrong the same way, naming the file, the table and the key."""

from __future__ import annotations

import re

import pytest

from vitune.errors import ConfigError, message_line, short_reason
from vitune.tables import Table, check_between, check_prune_ratio, key_path


def _study_error(tmp_path, text: str) -> str:
    from vitune.search.studyfile import load_study_file

    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_study_file(path)
    return str(err.value)


def _target_error(tmp_path, text: str) -> str:
    from vitune.targets import load_target

    path = tmp_path / "t.toml"
    path.write_text('name = "t"\n[tvm]\ntarget = { kind = "llvm" }\n[runner]\nkind = "local"\n' + text)
    with pytest.raises(ConfigError) as err:
        load_target(str(path))
    return str(err.value)


@pytest.mark.parametrize(
    "reader,text,table,key,expected",
    [
        (_study_error, "[study]\nname = 'x'\nseed = 'one'\n", "study", "seed", "an integer >= 0"),
        (_study_error, "[study]\nname = 'x'\n[search]\nwarm_start = 1\n", "search", "warm_start", "true or false"),
        (_study_error, "[study]\nname = 'x'\n[compression]\nkd_alpha = 'high'\n", "compression", "kd_alpha", "float"),
        (_study_error, "[study]\nname = 'x'\n[compression]\nkd_alpha = 2.0\n", "compression", "kd_alpha", r"a number in \[0, 1\]"),
        (_target_error, "[protocol]\nrepeat = 'many'\n", "protocol", "repeat", "an integer >= 1"),
        (_target_error, "[tuning]\ntimeout_factor = 0.5\n", "tuning", "timeout_factor", "a number >= 1.0"),
        (_target_error, "[hardware]\nprecisions = 'fp32'\n", "hardware", "precisions", "a list of strings"),
    ],
)
def test_every_file_reader_names_file_table_and_key_the_same_way(tmp_path, reader, text, table, key, expected):
    message = reader(tmp_path, text)
    assert re.fullmatch(rf".*[st]\.toml \[{table}\] {key}: expected {expected}, got .+", message), message
    assert "\n" not in message


def test_locations_join_tables_and_objects():
    t = Table({"data": {"fractions": {}}, "override": [{}, {}]}, "s.toml", ("data", "override"))
    assert t.at("name") == "s.toml name"
    assert t.table("data").table("fractions").where == "s.toml [data.fractions]"
    assert [o.at("layers") for o in t.tables("override")] == ["s.toml [[override]] #1 layers", "s.toml [[override]] #2 layers"]
    assert key_path("config.linear['blocks.0.attn.qkv']", "rank") == "config.linear['blocks.0.attn.qkv'].rank"
    assert key_path("methods", "lowrank") == "methods.lowrank"
    with pytest.raises(ConfigError, match=r"^s\.toml: unknown key 'datta' \(allowed: data, override\)$"):
        Table({"datta": 1}, "s.toml", ("data", "override"))
    with pytest.raises(ConfigError, match=r"s\.toml \[space\]: missing table \[tie\]"):
        Table({}, "s.toml [space]").table("tie", required=True)


def test_value_rules():
    assert check_between(0.5, 0.0, 1.0, "x") == 0.5
    for bad in (1.0, float("nan"), True, "0.5"):
        with pytest.raises(ConfigError, match=r"^x: expected a number in \[0, 1\), got"):
            check_between(bad, 0.0, 1.0, "x")
    with pytest.raises(ConfigError, match=r"prune ratio 1\.0 is outside \[0, 1\)"):
        check_prune_ratio(1.0, "x")
    with pytest.raises(ConfigError, match=r"expected a number in \[0, 1\), got 'half'"):
        check_prune_ratio("half", "x")


def test_an_error_as_one_line_never_fails_on_an_empty_message():
    assert message_line(RuntimeError("")) == "RuntimeError"
    assert message_line(RuntimeError("first\n\n  cause: crti.o  \n")) == "cause: crti.o"
    assert message_line(RuntimeError("first\nsecond"), last=False) == "first"
    assert short_reason(OSError()) == "OSError: "
