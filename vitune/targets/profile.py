"""Target profiles: what to compile for, where to run, how to time.

A profile is a TOML file (see ``vitune/targets/profiles/*.toml`` for the built-ins)::

    name = "local-cpu"
    description = "..."
    [tvm]
    target = { kind = "llvm", mcpu = "auto", num-cores = "auto" }   # TVM target, dict form
    host = { kind = "llvm" }                                          # optional host target
    [runner]
    kind = "local"                                                    # only "local" for now
    [protocol]
    warmup = 3; number = 0; repeat = 7; min_repeat_ms = 40; cooldown_ms = 0; threads = 0
    [hardware]
    cores = 0; precisions = ["fp32", "fp16", "int8"]

``load_target(x)`` accepts a built-in name, a name found in the user directory
(``$VITUNE_TARGETS_DIR`` or ``~/.config/vitune/targets``) or a path to a ``.toml`` file.
Unknown keys and wrong types are errors naming the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitune.errors import ConfigError

BUILTIN_DIR = Path(__file__).parent / "profiles"
RUNNER_KINDS = ("local",)


@dataclass(frozen=True)
class Protocol:
    """How a build is timed."""

    warmup: int = 3  # untimed runs first
    number: int = 0  # runs averaged per repeat; 0 = enough to last min_repeat_ms
    repeat: int = 7  # repeats; latency_ms is the median over repeats
    min_repeat_ms: int = 40
    cooldown_ms: int = 0
    threads: int = 0  # runtime threads; 0 = the target's core count


@dataclass(frozen=True)
class Hardware:
    cores: int = 0
    precisions: tuple[str, ...] = ("fp32",)


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    tvm_target: dict[str, Any]  # resolved: no "auto" left
    tvm_host: dict[str, Any] | None
    runner: str
    protocol: Protocol
    hardware: Hardware
    source: str = ""  # the file it came from
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
    def threads(self) -> int:
        return self.protocol.threads or int(self.tvm_target.get("num-cores", 0)) or (os.cpu_count() or 1)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "tvm_target": self.tvm_target, "runner": self.runner, "source": self.source}


def user_dir() -> Path:
    env = os.environ.get("VITUNE_TARGETS_DIR")
    return Path(env) if env else Path.home() / ".config" / "vitune" / "targets"


def list_targets() -> dict[str, Path]:
    """Name → file of every profile found: built-ins, then the user directory (user wins)."""
    found: dict[str, Path] = {}
    for folder in (BUILTIN_DIR, user_dir()):
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found[path.stem] = path
    return found


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
    _check_keys(data, {"name", "description", "tvm", "runner", "protocol", "hardware"}, source)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: 'name' must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{source}: 'description' must be a string")
    tvm_t = _table(data, "tvm", source, required=True)
    _check_keys(tvm_t, {"target", "host"}, f"{source} [tvm]")
    target = tvm_t.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("kind"), str):
        raise ConfigError(f"{source} [tvm] target: expected a table with a 'kind', e.g. {{ kind = \"llvm\" }}")
    host = tvm_t.get("host")
    if host is not None and not isinstance(host, dict):
        raise ConfigError(f"{source} [tvm] host: expected a table, e.g. {{ kind = \"llvm\" }}")
    runner_t = _table(data, "runner", source, required=True)
    _check_keys(runner_t, {"kind"}, f"{source} [runner]")
    runner = runner_t.get("kind")
    if runner not in RUNNER_KINDS:
        raise ConfigError(f"{source} [runner] kind: expected one of {', '.join(RUNNER_KINDS)}, got {runner!r}")
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
    )
    hw_t = _table(data, "hardware", source)
    where = f"{source} [hardware]"
    _check_keys(hw_t, {"cores", "precisions"}, where)
    precisions = hw_t.get("precisions", ["fp32"])
    if not isinstance(precisions, list) or not all(isinstance(p, str) for p in precisions):
        raise ConfigError(f"{where} precisions: expected a list of strings")
    cores = _int(hw_t, "cores", 0, where) or (os.cpu_count() or 1)
    return TargetProfile(
        name=name,
        description=description,
        tvm_target=resolve_auto(target),
        tvm_host=host,
        runner=runner,
        protocol=protocol,
        hardware=Hardware(cores, tuple(precisions)),
        source=source,
        raw=data,
    )
