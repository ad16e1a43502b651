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

from vitune.errors import ConfigError, message_line
from vitune.tables import Table, check_choice

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
    max_timing_s: float = 0.0  # fewer repeats (at least 3) and one warm-up run where the full count would take longer; 0 = no cap

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
            raise ConfigError(f"{self.source}: [tvm] target {self.tvm_target} is rejected by TVM: {message_line(err)}") from None

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
    top = Table(data, source, ("name", "description", "tvm", "runner", "protocol", "hardware", "tuning"))
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{top.at('name')}: expected a non-empty string, got {name!r}")
    description = top.str("description", "")
    tvm_t = top.table("tvm", ("target", "host", "cross_compiler"), required=True)
    target = tvm_t.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("kind"), str):
        raise ConfigError(f"{tvm_t.at('target')}: expected a table with a 'kind', e.g. {{ kind = \"llvm\" }}")
    host = tvm_t.get("host")
    if host is not None and not isinstance(host, dict):
        raise ConfigError(f"{tvm_t.at('host')}: expected a table, e.g. {{ kind = \"llvm\" }}")
    cross = tvm_t.get("cross_compiler", "")
    if not isinstance(cross, str):
        raise tvm_t.fail("cross_compiler", "a command name")
    runner = _runner_spec(top.table("runner", required=True))
    proto_t = top.table("protocol", tuple(Protocol.__dataclass_fields__))
    protocol = Protocol(
        warmup=proto_t.int("warmup", 3),
        number=proto_t.int("number", 0),
        repeat=proto_t.int("repeat", 7, minimum=1),
        min_repeat_ms=proto_t.int("min_repeat_ms", 40),
        cooldown_ms=proto_t.int("cooldown_ms", 0),
        threads=proto_t.int("threads", 0),
        statistic=proto_t.str("statistic", "median", STATISTICS),
        max_timing_s=proto_t.float("max_timing_s", 0.0, minimum=0.0),
    )
    hardware = _hardware(top.table("hardware", ("cores", "precisions", "clock_ghz", "peak_gflops", "memory_bandwidth_gbs", "memory_gb")))
    tuning_t = top.table("tuning", ("min_timeout_s", "timeout_factor", "first_timeout_s"))
    limits = CandidateLimits(
        min_timeout_s=tuning_t.float("min_timeout_s", CandidateLimits.min_timeout_s, minimum=0.1),
        timeout_factor=tuning_t.float("timeout_factor", CandidateLimits.timeout_factor, minimum=1.0),
        first_timeout_s=tuning_t.float("first_timeout_s", CandidateLimits.first_timeout_s, minimum=0.1),
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


def _hardware(hw: Table) -> Hardware:
    peaks = hw.get("peak_gflops", {})
    if not isinstance(peaks, dict):
        raise hw.fail("peak_gflops", "a table such as { fp32 = 100.0 }")
    peak_t = Table(peaks, hw.at("peak_gflops"))
    return Hardware(
        cores=hw.int("cores", 0) or (os.cpu_count() or 1),
        precisions=hw.strings("precisions", ("fp32",)),
        clock_ghz=hw.float("clock_ghz", 0.0),
        peak_gflops=tuple(sorted((k, peak_t.float(k, 0.0)) for k in peaks)),
        memory_bandwidth_gbs=hw.float("memory_bandwidth_gbs", 0.0),
        memory_gb=hw.float("memory_gb", 0.0),
    )


def _runner_spec(runner_t: Table) -> RunnerSpec:
    from vitune.targets.runner import runner_kinds

    kind = check_choice(runner_t.get("kind"), tuple(sorted(runner_kinds())), runner_t.at("kind"))
    if kind == "local":
        Table(runner_t.data, runner_t.where, ("kind",))
        return RunnerSpec("local")
    if kind != "rpc":  # a plug-in runner: its own keys, passed through
        return RunnerSpec(kind, options=tuple(sorted((k, v) for k, v in runner_t.data.items() if k != "kind")))
    runner_t = Table(runner_t.data, runner_t.where, ("kind", "tracker", "key", "host", "port", "timeout_s"))
    tracker, key, host = (runner_t.str(k, "") for k in ("tracker", "key", "host"))
    port = runner_t.int("port", 0)
    timeout = runner_t.float("timeout_s", 60.0, minimum=1.0)
    where = runner_t.where
    if tracker:
        host_part, _, port_part = tracker.rpartition(":")
        if not host_part or not port_part.isdigit():
            raise ConfigError(f"{runner_t.at('tracker')}: expected \"host:port\", got {tracker!r}")
        if not key:
            raise ConfigError(f"{runner_t.at('key')}: required with a tracker (the device key the RPC server registered)")
        if host or port:
            raise ConfigError(f"{where}: give either tracker + key or host + port, not both")
    elif not (host and port):
        raise ConfigError(f"{where}: an rpc runner needs tracker = \"host:port\" and key, or host and port of a server")
    return RunnerSpec("rpc", tracker=tracker, key=key, host=host, port=port, timeout_s=timeout)
