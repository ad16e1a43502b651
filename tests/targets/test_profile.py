import pytest

from vitune.errors import ConfigError
from vitune.targets import list_targets, load_target
from vitune.targets.profile import BUILTIN_DIR


def test_builtin_local_cpu_resolves_auto_values():
    p = load_target("local-cpu")
    assert p.name == "local-cpu" and p.runner == "local"
    assert p.tvm_target["kind"] == "llvm"
    assert p.tvm_target["mcpu"] != "auto" and isinstance(p.tvm_target["num-cores"], int)
    assert p.tvm().kind.name == "llvm"
    assert "local-cpu" in list_targets()


def test_every_builtin_profile_parses():
    for path in BUILTIN_DIR.glob("*.toml"):
        assert load_target(str(path)).name == path.stem


def test_user_directory_profiles_are_found_by_name(tmp_path, monkeypatch, fast_target_file):
    monkeypatch.setenv("VITUNE_TARGETS_DIR", str(tmp_path))
    (tmp_path / "my-board.toml").write_text(fast_target_file.read_text().replace('name = "test-cpu"', 'name = "my-board"'))
    assert "my-board" in list_targets()
    assert load_target("my-board").name == "my-board"


def _write(tmp_path, text):
    path = tmp_path / "t.toml"
    path.write_text(text)
    return str(path)


BASE = 'name = "x"\n[tvm]\ntarget = { kind = "llvm" }\n[runner]\nkind = "local"\n'


@pytest.mark.parametrize(
    "text,message",
    [
        (BASE + "[protocol]\nrepeats = 3\n", r"t\.toml \[protocol\]: unknown key 'repeats'"),
        (BASE + "[protocol]\nrepeat = 0\n", r"\[protocol\] repeat: expected an integer >= 1"),
        ('name = "x"\n[tvm]\ntarget = { kind = "llvm" }\n', r"missing table \[runner\]"),
        (BASE.replace('kind = "local"', 'kind = "ssh"'), r"\[runner\] kind: expected one of local, got 'ssh'"),
        (BASE + "colour = 1\n", r"unknown key 'colour'"),
        ("name = \n", r"not valid TOML"),
        (BASE.replace('{ kind = "llvm" }', '"llvm -mcpu=x"'), r"\[tvm\] target: expected a table with a 'kind'"),
    ],
)
def test_bad_profiles_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_target(_write(tmp_path, text))


def test_target_tvm_rejects_is_reported(tmp_path):
    p = load_target(_write(tmp_path, BASE.replace('{ kind = "llvm" }', '{ kind = "no-such-kind" }')))
    with pytest.raises(ConfigError, match="rejected by TVM"):
        p.tvm()


def test_unknown_target_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown target 'nope'.*local-cpu"):
        load_target("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_target("/no/such/file.toml")
