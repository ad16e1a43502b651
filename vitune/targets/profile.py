"""Target profiles: what to compile for, where to run, how to time.

A profile is a TOML file (see ``vitune/targets/profiles/*.toml`` for the built-ins)::

    name = "local-cpu"
    description = "..."
    [tvm]
    target = { kind = "llvm", mcpu = "auto", num-cores = "auto" }   # TVM target, dict form
    host = { kind = "llvm" }                # optional host target (GPU targets)
    cross_compiler = ""                     # linker for the shared library, e.g. "aarch64-linux-gnu-gcc"
    [runner]
    kind = "local"                          # local | rpc | a kind registered by a plug-in
    # rpc: either a tracker and a device key ...
    tracker = "127.0.0.1:9190"
    key = "rpi4"
    # ... or a server directly
    host = "192.168.1.20"
    port = 9090
    timeout_s = 60                          # connect + upload + one timing; longer is a failure
    [protocol]
    warmup = 3; number = 0; repeat = 7; min_repeat_ms = 40; cooldown_ms = 0; threads = 0
    statistic = "median"                    # median | min of the repeats
    [hardware]                              # facts analytical cost models use
    cores = 0                               # 0 = detected (local targets)
    clock_ghz = 0.0
    peak_gflops = { fp32 = 0.0, fp16 = 0.0, int8 = 0.0 }
    memory_bandwidth_gbs = 0.0
    memory_gb = 0.0
    precisions = ["fp32", "fp16", "int8"]   # run natively
    [tuning]                                # deadlines of one tuning candidate's build or timing run
    min_timeout_s = 10.0                    # at least this ...
    timeout_factor = 20.0                   # ... or this many times the median so far
    first_timeout_s = 60.0                  # until 5 were timed

``load_target(x)`` accepts a built-in name, a name found in the user directory
(``$VITUNE_TARGETS_DIR`` or ``~/.config/vitune/targets``), a name registered by an installed
package through the ``vitune.targets`` entry-point group (the entry point is a path to a TOML
file or a callable returning one, or returning the profile as a dict), or a path to a ``.toml``
file. Unknown keys, wrong types, missing runner settings and a TVM target TVM rejects are errors
naming the file and the key.
"""

from __future__ import annotations

import os
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitune.errors import ConfigError

BUILTIN_DIR = Path(__file__).parent / "profiles"
TARGET_ENTRY_POINTS = "vitune.targets"
STATISTICS = ("median", "min")
# How vitune runs kernels, as far as it changes a latency: 1 = TVM's default CPU thread pool
# (half the logical CPUs on x86, one core on a 2-core VM); 2 = the profile's thread count; 3 = data
# movement run in parallel and vectorised (``vitune.targets.schedule``), residual adds fused; 4 =
# attention fused into one kernel (``vitune.targets.attention``), patch embedding as a matmul,
# each tuning workload given its own trials. Part of every key under which latencies or tuning
# records are kept, so none timed before a change is reused after it.
TIMING_RUNTIME = 4


@dataclass(frozen=True)
class Protocol:
    """How a build is timed."""

    warmup: int = 3  # untimed runs first
    number: int = 0  # runs averaged per repeat; 0 = enough to last min_repeat_ms
    repeat: int = 7  # repeats; latency_ms is their `statistic`
    min_repeat_ms: int = 40
    cooldown_ms: int = 0
    threads: int = 0  # runtime threads; 0 = the target's core count
    statistic: str = "median"  # median | min: how the repeats make one latency

    def latency_ms(self, samples) -> float:
        """One latency from the repeats' means: their median, or their minimum (on a shared
        machine, neighbours only ever add time: the fastest repeat is the build's own cost)."""
        return min(samples) if self.statistic == "min" else statistics.median(samples)


@dataclass(frozen=True)
class CandidateLimits:
    """Deadlines of one tuning candidate's build and of its timing run, in seconds (``[tuning]``
    in a target file). A candidate past its deadline is stopped and fails with the reason; see
    :mod:`vitune.targets.msworker`.

    The deadline is ``timeout_factor`` × the median time of that kind of step so far, at least
    ``min_timeout_s``; until ``warm`` steps were timed it is ``first_timeout_s`` (a new worker's
    first builds load LLVM's code generators and are slower than the rest)."""

    min_timeout_s: float = 10.0
    timeout_factor: float = 20.0
    first_timeout_s: float = 60.0
    warm: int = 5
    start_s: float = 120.0  # a new worker has this long to import TVM and say it is ready

    def deadline(self, times: list[float]) -> float:
        if len(times) < self.warm:
            return self.first_timeout_s
        return max(self.min_timeout_s, self.timeout_factor * statistics.median(times[-200:]))


@dataclass(frozen=True)
class Hardware:
    cores: int = 0
    precisions: tuple[str, ...] = ("fp32",)
    clock_ghz: float = 0.0
    peak_gflops: tuple[tuple[str, float], ...] = ()  # dtype → peak GFLOP/s (or GOP/s for int8)
    memory_bandwidth_gbs: float = 0.0
    memory_gb: float = 0.0

    def peak(self, dtype: str) -> float:
        return dict(self.peak_gflops).get(dtype, 0.0)


@dataclass(frozen=True)
class RunnerSpec:
    """Where builds run: ``local`` (this process) or ``rpc`` (a TVM RPC server, maybe via a tracker)."""

    kind: str = "local"
    tracker: str = ""  # "host:port" of a TVM RPC tracker
    key: str = ""  # device key at the tracker (or the key a direct server expects)
    host: str = ""  # direct server
    port: int = 0
    timeout_s: float = 60.0
    options: tuple[tuple[str, Any], ...] = ()  # extra keys for plug-in runners

    def describe(self) -> str:
        if self.kind != "rpc":
            return self.kind
        return f"rpc via tracker {self.tracker} key {self.key!r}" if self.tracker else f"rpc server {self.host}:{self.port}"


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    tvm_target: dict[str, Any]  # resolved: no "auto" left
    tvm_host: dict[str, Any] | None
    runner_spec: RunnerSpec
    protocol: Protocol
    hardware: Hardware
    source: str = ""  # the file it came from
    cross_compiler: str = ""  # linker for exported libraries ("" = the host's default)
    tuning: CandidateLimits = CandidateLimits()  # deadlines of tuning candidates
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def tvm(self):
        """The ``tvm.target.Target`` (imports TVM)."""
        import tvm

        try:
            if self.tvm_host:
                return tvm.target.Target(self.tvm_target, host=self.tvm_host)
            return tvm.target.Target(self.tvm_target)
        except Exception as err:  # TVM raises its own error types
            raise ConfigError(f"{self.source}: [tvm] target {self.tvm_target} is rejected by TVM: {str(err).splitlines()[-1]}") from None

    @property
    def runner(self) -> str:
        return self.runner_spec.kind

    @property
    def device_kind(self) -> str:
        """The TVM device the code runs on: ``cpu`` or the GPU API (``cuda``, ``rocm``, ``vulkan``...)."""
        kind = self.tvm_target.get("kind", "llvm")
        return "cpu" if kind in ("llvm", "c") else kind

    @property
    def is_native(self) -> bool:
        """True when code built for this target runs on this machine's CPU architecture (or GPU)."""
        if self.device_kind != "cpu":
            return True  # a local GPU: whether one is present is checked when running
        triple = str(self.tvm_target.get("mtriple", ""))
        import platform

        return not triple or triple.split("-")[0] == platform.machine()

    @property
    def threads(self) -> int:
        return self.protocol.threads or int(self.tvm_target.get("num-cores", 0)) or (os.cpu_count() or 1)

    def timing_key(self) -> dict[str, Any]:
        """What a latency measured on this target depends on besides the model: the TVM target
        and host, the CPU threads kernels run on, the timing protocol and :data:`TIMING_RUNTIME`.
        Caches of latencies, tuning records and cost-model samples are keyed by (parts of) it."""
        from dataclasses import asdict

        return {"target": self.tvm_target, "host": self.tvm_host, "threads": self.threads, "runtime": TIMING_RUNTIME,
                "protocol": asdict(self.protocol)}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "tvm_target": self.tvm_target, "runner": self.runner_spec.describe(), "source": self.source}


def user_dir() -> Path:
    env = os.environ.get("VITUNE_TARGETS_DIR")
    return Path(env) if env else Path.home() / ".config" / "vitune" / "targets"


def _entry_point_targets() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=TARGET_ENTRY_POINTS)}


def list_targets() -> dict[str, Any]:
    """Name → source of every profile found: built-ins, plug-in packages, then the user
    directory (later wins). A source is a TOML path or an entry point."""
    found: dict[str, Any] = {}
    if BUILTIN_DIR.is_dir():
        for path in sorted(BUILTIN_DIR.glob("*.toml")):
            found[path.stem] = path
    found.update(_entry_point_targets())
    folder = user_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.toml")):
            found[path.stem] = path
    return found


def _from_entry_point(name: str, ep) -> TargetProfile:
    where = f"entry point {ep.value!r} ({TARGET_ENTRY_POINTS}:{name})"
    try:
        obj = ep.load()
        value = obj() if callable(obj) else obj
    except Exception as err:
        raise ConfigError(f"target {name!r}: {where} failed to load: {type(err).__name__}: {err}") from None
    if isinstance(value, dict):
        return parse_target(value, where)
    if isinstance(value, (str, os.PathLike)) and Path(value).is_file():
        return load_target(Path(value))
    raise ConfigError(f"target {name!r}: {where} must give a TOML file path or a profile dict, got {value!r}")


def load_target(ref: str | os.PathLike) -> TargetProfile:
    """Load a profile by name or path; see the module docstring."""
    text = str(ref)
    path = Path(text)
    if text.endswith(".toml") or os.sep in text:
        if not path.is_file():
            raise ConfigError(f"target file {text!r} does not exist")
    else:
        known = list_targets()
        if text not in known:
            raise ConfigError(f"unknown target {text!r}: known targets are {', '.join(sorted(known)) or 'none'} (or give a path to a .toml file)")
        if not isinstance(known[text], Path):
            return _from_entry_point(text, known[text])
        path = known[text]
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return parse_target(data, str(path))


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _int(table: dict, key: str, default: int, where: str, minimum: int = 0) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} {key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _choice(table: dict, key: str, default: str, allowed: tuple[str, ...], where: str) -> str:
    value = table.get(key, default)
    if value not in allowed:
        raise ConfigError(f"{where} {key}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _table(data: dict, key: str, where: str, required: bool = False) -> dict:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}: missing table [{key}]")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table, got {type(value).__name__}")
    return value


def resolve_auto(target: dict[str, Any]) -> dict[str, Any]:
    """Replace ``"auto"`` values: ``mcpu`` → LLVM's host CPU, ``num-cores`` → CPU count."""
    out = dict(target)
    if out.get("mcpu") == "auto":
        from tvm.target import codegen

        out["mcpu"] = str(codegen.llvm_get_system_cpu())
    if out.get("num-cores") == "auto":
        out["num-cores"] = os.cpu_count() or 1
    return out


def parse_target(data: dict[str, Any], source: str) -> TargetProfile:
    _check_keys(data, {"name", "description", "tvm", "runner", "protocol", "hardware", "tuning"}, source)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: 'name' must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{source}: 'description' must be a string")
    tvm_t = _table(data, "tvm", source, required=True)
    _check_keys(tvm_t, {"target", "host", "cross_compiler"}, f"{source} [tvm]")
    target = tvm_t.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("kind"), str):
        raise ConfigError(f"{source} [tvm] target: expected a table with a 'kind', e.g. {{ kind = \"llvm\" }}")
    host = tvm_t.get("host")
    if host is not None and not isinstance(host, dict):
        raise ConfigError(f"{source} [tvm] host: expected a table, e.g. {{ kind = \"llvm\" }}")
    cross = tvm_t.get("cross_compiler", "")
    if not isinstance(cross, str):
        raise ConfigError(f"{source} [tvm] cross_compiler: expected a command name, got {cross!r}")
    runner = _runner_spec(_table(data, "runner", source, required=True), f"{source} [runner]")
    proto_t = _table(data, "protocol", source)
    where = f"{source} [protocol]"
    _check_keys(proto_t, set(Protocol.__dataclass_fields__), where)
    protocol = Protocol(
        warmup=_int(proto_t, "warmup", 3, where),
        number=_int(proto_t, "number", 0, where),
        repeat=_int(proto_t, "repeat", 7, where, minimum=1),
        min_repeat_ms=_int(proto_t, "min_repeat_ms", 40, where),
        cooldown_ms=_int(proto_t, "cooldown_ms", 0, where),
        threads=_int(proto_t, "threads", 0, where),
        statistic=_choice(proto_t, "statistic", "median", STATISTICS, where),
    )
    hardware = _hardware(_table(data, "hardware", source), f"{source} [hardware]")
    tuning_t = _table(data, "tuning", source)
    where = f"{source} [tuning]"
    _check_keys(tuning_t, {"min_timeout_s", "timeout_factor", "first_timeout_s"}, where)
    limits = CandidateLimits(
        min_timeout_s=_float(tuning_t, "min_timeout_s", where, minimum=0.1, default=CandidateLimits.min_timeout_s),
        timeout_factor=_float(tuning_t, "timeout_factor", where, minimum=1.0, default=CandidateLimits.timeout_factor),
        first_timeout_s=_float(tuning_t, "first_timeout_s", where, minimum=0.1, default=CandidateLimits.first_timeout_s),
    )
    profile = TargetProfile(
        name=name,
        description=description,
        tvm_target=resolve_auto(target),
        tvm_host=host,
        runner_spec=runner,
        protocol=protocol,
        hardware=hardware,
        source=source,
        cross_compiler=cross,
        tuning=limits,
        raw=data,
    )
    profile.tvm()  # a target TVM rejects fails here, naming the file
    for key, table in (("target", profile.tvm_target), ("host", profile.tvm_host)):
        if table and table.get("kind") == "llvm":
            check_llvm_target(table, f"{source} [tvm] {key}")
    return profile


def check_llvm_target(target: dict[str, Any], where: str) -> None:
    """Refuse what LLVM does not know (it would log a warning and fall back to generic code, or
    for an unknown triple crash the interpreter in code generation): the ``mtriple``, the
    ``mcpu`` for that triple and every ``+feature`` of ``mattr``."""
    import tvm
    from tvm.target import codegen

    from vitune.targets.native import captured_native_stderr

    triple = str(target.get("mtriple") or codegen.llvm_get_system_triple())
    with captured_native_stderr():  # LLVM's own complaints: the check says it in one line
        if not codegen.llvm_is_valid_cpu("generic", triple):
            arches = ", ".join(a for a in codegen.llvm_get_targets() if a in ("x86_64", "aarch64", "arm", "riscv64", "i386"))
            raise ConfigError(f"{where} mtriple: LLVM does not know the triple {triple!r} (e.g. x86_64-linux-gnu, aarch64-linux-gnu; "
                              f"architectures: {arches}, ...)")
        cpu = target.get("mcpu")
        if cpu and not codegen.llvm_is_valid_cpu(str(cpu), triple):
            raise ConfigError(f"{where} mcpu: LLVM does not know the CPU {cpu!r} for {triple} (e.g. cortex-a72 for aarch64, znver4 for x86_64)")
        attrs = target.get("mattr") or []
        for attr in attrs if isinstance(attrs, list) else [attrs]:
            name = str(attr).lstrip("+-")
            probe = {k: v for k, v in target.items() if k in ("kind", "mtriple", "mcpu")} | {"mattr": [f"+{name}"]}
            if name not in {str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(probe))}:
                raise ConfigError(f"{where} mattr: LLVM does not know the feature {attr!r} for {triple}")


def _float(table: dict, key: str, where: str, minimum: float = 0.0, default: float = 0.0) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"{where} {key}: expected a number >= {minimum}, got {value!r}")
    return float(value)


def _hardware(hw_t: dict, where: str) -> Hardware:
    _check_keys(hw_t, {"cores", "precisions", "clock_ghz", "peak_gflops", "memory_bandwidth_gbs", "memory_gb"}, where)
    precisions = hw_t.get("precisions", ["fp32"])
    if not isinstance(precisions, list) or not all(isinstance(p, str) for p in precisions):
        raise ConfigError(f"{where} precisions: expected a list of strings")
    peaks = hw_t.get("peak_gflops", {})
    if not isinstance(peaks, dict):
        raise ConfigError(f"{where} peak_gflops: expected a table such as {{ fp32 = 100.0 }}")
    return Hardware(
        cores=_int(hw_t, "cores", 0, where) or (os.cpu_count() or 1),
        precisions=tuple(precisions),
        clock_ghz=_float(hw_t, "clock_ghz", where),
        peak_gflops=tuple(sorted((k, _float(peaks, k, f"{where} peak_gflops")) for k in peaks)),
        memory_bandwidth_gbs=_float(hw_t, "memory_bandwidth_gbs", where),
        memory_gb=_float(hw_t, "memory_gb", where),
    )


def _runner_spec(runner_t: dict, where: str) -> RunnerSpec:
    from vitune.targets.runner import runner_kinds

    kind = runner_t.get("kind")
    kinds = runner_kinds()
    if kind not in kinds:
        raise ConfigError(f"{where} kind: expected one of {', '.join(sorted(kinds))}, got {kind!r}")
    if kind == "local":
        _check_keys(runner_t, {"kind"}, where)
        return RunnerSpec("local")
    if kind != "rpc":  # a plug-in runner: its own keys, passed through
        return RunnerSpec(kind, options=tuple(sorted((k, v) for k, v in runner_t.items() if k != "kind")))
    _check_keys(runner_t, {"kind", "tracker", "key", "host", "port", "timeout_s"}, where)
    tracker, key, host = (runner_t.get(k, "") for k in ("tracker", "key", "host"))
    for name, value in (("tracker", tracker), ("key", key), ("host", host)):
        if not isinstance(value, str):
            raise ConfigError(f"{where} {name}: expected a string, got {value!r}")
    port = _int(runner_t, "port", 0, where)
    timeout = _float(runner_t, "timeout_s", where, minimum=1.0, default=60.0)
    if tracker:
        host_part, _, port_part = tracker.rpartition(":")
        if not host_part or not port_part.isdigit():
            raise ConfigError(f"{where} tracker: expected \"host:port\", got {tracker!r}")
        if not key:
            raise ConfigError(f"{where} key: required with a tracker (the device key the RPC server registered)")
        if host or port:
            raise ConfigError(f"{where}: give either tracker + key or host + port, not both")
    elif not (host and port):
        raise ConfigError(f"{where}: an rpc runner needs tracker = \"host:port\" and key, or host and port of a server")
    return RunnerSpec("rpc", tracker=tracker, key=key, host=host, port=port, timeout_s=timeout)
