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


@pytest.mark.parametrize("path", sorted(BUILTIN_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_builtin_profile_parses_and_tvm_accepts_it(path):
    p = load_target(str(path))
    assert p.name == path.stem and p.description
    assert p.tvm() is not None
    assert p.hardware.cores >= 1 and "fp32" in p.hardware.precisions


def test_builtin_gpu_and_arm_profiles():
    for name, arch in (("cuda-sm80", "sm_80"), ("cuda-sm90", "sm_90")):
        p = load_target(name)
        assert p.device_kind == "cuda" and p.tvm_target["arch"] == arch and p.tvm_host == {"kind": "llvm"}
        assert p.hardware.peak("fp16") > p.hardware.peak("fp32") > 0 and p.hardware.memory_bandwidth_gbs > 0
    for name in ("arm-a72", "arm-a78"):
        p = load_target(name)
        assert p.runner == "rpc" and p.runner_spec.tracker and p.runner_spec.key
        assert p.tvm_target["mtriple"] == "aarch64-linux-gnu" and "+neon" in p.tvm_target["mattr"]
        assert p.cross_compiler == "aarch64-linux-gnu-gcc" and not p.is_native  # on this x86-64 machine


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
        (BASE + "[protocol]\nstatistic = \"mean\"\n", r"t\.toml \[protocol\] statistic: expected one of median, min, got 'mean'"),
        ('name = "x"\n[tvm]\ntarget = { kind = "llvm" }\n', r"missing table \[runner\]"),
        (BASE.replace('kind = "local"', 'kind = "ssh"'), r"\[runner\] kind: expected one of local, rpc, got 'ssh'"),
        (BASE.replace('kind = "local"', 'kind = "rpc"'), r"\[runner\]: an rpc runner needs tracker = \"host:port\" and key, or host and port"),
        (BASE.replace('kind = "local"', 'kind = "rpc"\ntracker = "127.0.0.1:9190"'), r"\[runner\] key: required with a tracker"),
        (BASE.replace('kind = "local"', 'kind = "rpc"\ntracker = "localhost"\nkey = "k"'), r"\[runner\] tracker: expected \"host:port\""),
        (BASE.replace('kind = "local"', 'kind = "rpc"\nhost = "h"\nport = 1\ntracker = "h:2"\nkey = "k"'), r"either tracker \+ key or host \+ port"),
        (BASE.replace('kind = "local"', 'kind = "local"\nkey = "k"'), r"\[runner\]: unknown key 'key'"),
        (BASE + "[hardware]\npeak_gflops = { fp32 = -1.0 }\n", r"\[hardware\] peak_gflops fp32: expected a number >= 0"),
        (BASE + "[hardware]\nmemory_gbs = 3\n", r"\[hardware\]: unknown key 'memory_gbs'"),
        (BASE.replace('[tvm]', '[tvm]\ncross_compiler = 3'), r"\[tvm\] cross_compiler: expected a command name"),
        (BASE + "colour = 1\n", r"unknown key 'colour'"),
        (BASE.replace('{ kind = "llvm" }', '{ kind = "llvm", mtriple = "nonsense-triple-xyz" }'),
         r"t\.toml \[tvm\] target mtriple: LLVM does not know the triple 'nonsense-triple-xyz'"),
        (BASE.replace('{ kind = "llvm" }', '{ kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "cortex-a999" }'),
         r"t\.toml \[tvm\] target mcpu: LLVM does not know the CPU 'cortex-a999' for aarch64-linux-gnu"),
        (BASE.replace('{ kind = "llvm" }', '{ kind = "llvm", mtriple = "aarch64-linux-gnu", mattr = ["+neon", "+frobnicate"] }'),
         r"t\.toml \[tvm\] target mattr: LLVM does not know the feature '\+frobnicate' for aarch64-linux-gnu"),
        (BASE + "[tuning]\nbuild_timeout_s = 3\n", r"t\.toml \[tuning\]: unknown key 'build_timeout_s'"),
        (BASE + "[tuning]\nmin_timeout_s = 0\n", r"t\.toml \[tuning\] min_timeout_s: expected a number >= 0.1, got 0"),
        (BASE + "[tuning]\ntimeout_factor = \"20\"\n", r"\[tuning\] timeout_factor: expected a number >= 1.0"),
        ("name = \n", r"not valid TOML"),
        (BASE.replace('{ kind = "llvm" }', '"llvm -mcpu=x"'), r"\[tvm\] target: expected a table with a 'kind'"),
    ],
)
def test_bad_profiles_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_target(_write(tmp_path, text))


def test_target_tvm_rejects_is_reported_when_loading(tmp_path):
    with pytest.raises(ConfigError, match=r"t\.toml: \[tvm\] target .*no-such-kind.* is rejected by TVM"):
        load_target(_write(tmp_path, BASE.replace('{ kind = "llvm" }', '{ kind = "no-such-kind" }')))


def test_unknown_target_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown target 'nope'.*local-cpu"):
        load_target("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_target("/no/such/file.toml")


def test_protocol_statistic(tmp_path):
    assert load_target(_write(tmp_path, BASE)).protocol.statistic == "median"
    fastest = load_target(_write(tmp_path, BASE + '[protocol]\nstatistic = "min"\n')).protocol
    assert fastest.statistic == "min"
    assert fastest.latency_ms([3.0, 1.0, 2.0, 9.0]) == 1.0
    assert load_target(_write(tmp_path, BASE)).protocol.latency_ms([3.0, 1.0, 2.0, 9.0]) == 2.5
    assert load_target("local-cpu").protocol.statistic == "min"


def test_tuning_deadlines(tmp_path):
    from vitune.targets.profile import CandidateLimits

    assert load_target(_write(tmp_path, BASE)).tuning == CandidateLimits()
    limits = load_target(_write(tmp_path, BASE + "[tuning]\nmin_timeout_s = 2\ntimeout_factor = 5\nfirst_timeout_s = 30\n")).tuning
    assert (limits.min_timeout_s, limits.timeout_factor, limits.first_timeout_s) == (2.0, 5.0, 30.0)
    assert limits.deadline([0.1] * 4) == 30.0  # not warm yet
    assert limits.deadline([0.1] * 5) == 2.0  # 5 x 0.1 s is under the floor
    assert limits.deadline([1.0, 1.0, 2.0, 3.0, 3.0]) == 10.0  # 5 x the median
