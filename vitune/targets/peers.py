"""Peer runtimes: the model in a runtime a user already has, timed beside vitune's build.

A speed-up vitune reports is measured against the **uncompressed model in the best runtime
available for the target**, timed side by side in the same process with the same protocol
(:func:`time_side_by_side`): on a CPU of this machine the faster of ONNX Runtime and OpenVINO
(fp32, both installed with vitune); where neither runs (a board over RPC, a GPU), the tuned
uncompressed TVM build, labelled as such (:func:`baseline_peers` returns no peer then).

Contract of a peer (:class:`PeerRuntime`; every built-in and plug-in meets it):

* ``name`` — registry key (``onnxruntime``, ``openvino``, ``onnxruntime-int8``...); ``label`` —
  what to print; ``precision`` — ``fp32`` or ``int8`` (a session may report the precision the
  runtime chose instead, see :class:`PeerSession`); ``baseline`` — whether it competes for
  the speed-up reference (the fp32 peers do; int8 peers change accuracy and are bench-only);
* ``missing()`` — ``None`` when the package is importable here, else one line saying what to
  install; cheap (imports, no model);
* ``runs_on(profile)`` — whether it can run on that target from this process;
* ``load(model, example, threads, calibration=None)`` — a :class:`PeerSession`: the model
  converted for the runtime, at batch ``example.shape[0]``, on ``threads`` threads; int8 peers
  that calibrate take ``calibration`` (a list of input arrays of the same shape). May raise.

Plug-ins register more through the ``vitune.peers`` entry-point group (the entry point is the
peer class). Registering a name twice is an error.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PEER_ENTRY_POINTS = "vitune.peers"
TVM_BASELINE = "vitune-tvm-tuned"  # the baseline's name where no peer runs on the target


class PeerSession:
    """A loaded model: ``session(x)`` → logits as numpy, ``x`` a numpy batch of the loaded shape.
    ``precision``: what the runtime computes in, where it chose (OpenVINO runs bf16 by default on
    a CPU with bf16 instructions); None: the peer's own ``precision``."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], precision: str | None = None):
        self._run = run
        self.precision = precision

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(np.ascontiguousarray(x, dtype=np.float32)))


class PeerRuntime(ABC):
    name: str = ""
    label: str = ""
    precision: str = "fp32"
    baseline: bool = False  # competes for the speed-up reference
    packages: tuple[str, ...] = ()  # importable modules it needs
    install: str = ""  # how to get them

    def missing(self) -> str | None:
        absent = [p for p in self.packages if importlib.util.find_spec(p) is None]
        return f"{self.label} needs {', '.join(absent)} ({self.install})" if absent else None

    def runs_on(self, profile) -> bool:
        """Built-in peers run on this machine's CPU only."""
        return profile.runner == "local" and profile.device_kind == "cpu" and profile.is_native

    @abstractmethod
    def load(self, model, example, threads: int, calibration: Sequence[np.ndarray] | None = None) -> PeerSession: ...


_REGISTRY: dict[str, type[PeerRuntime]] = {}


def register_peer(cls: type[PeerRuntime]) -> type[PeerRuntime]:
    if not cls.name:
        raise ValueError(f"peer class {cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a peer runtime named {cls.name!r} is already registered ({_REGISTRY[cls.name].__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def list_peers() -> dict[str, type[PeerRuntime]]:
    """Built-in peers and those installed packages register through ``vitune.peers``."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PEER_ENTRY_POINTS):
        if ep.name not in _REGISTRY:
            register_peer(ep.load())
    return dict(_REGISTRY)


def get_peer(name: str) -> PeerRuntime:
    peers = list_peers()
    if name not in peers:
        from vitune.errors import ConfigError

        raise ConfigError(f"unknown peer runtime {name!r} (known: {', '.join(sorted(peers))})")
    return peers[name]()


def export_onnx(model, example, path: Path) -> Path:
    """The model as ONNX (opset 17, TorchScript exporter: what ONNX Runtime and OpenVINO users run)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"])
    return Path(path)


_ONNX_FILES: dict[tuple, Path] = {}  # (weights hash, class, input shape) → exported file, for this process's life


@functools.cache
def _onnx_dir() -> Path:
    """A scratch folder for this process's ONNX exports, removed when it exits."""
    path = Path(tempfile.mkdtemp(prefix="vitune-peer-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def onnx_file(model, example) -> Path:
    """The model exported to ONNX once per process (every ONNX-based peer of a baseline reads the
    same file), keyed by its weights, class and input shape."""
    from vitune.models.zoo import state_dict_sha256

    key = (state_dict_sha256(model), type(model).__qualname__, tuple(example.shape))
    path = _ONNX_FILES.get(key)
    if path is None or not path.is_file():
        path = export_onnx(model, example, _onnx_dir() / f"model-{len(_ONNX_FILES)}.onnx")
        _ONNX_FILES[key] = path
    return path


def _ort_session(path: Path, threads: int) -> PeerSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return PeerSession(lambda x: session.run(None, {name: x})[0])


_OV_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # OpenVINO's element types → ours


def _ov_session(ov_model, threads: int, precision: str | None = None) -> PeerSession:
    """``precision``: force OpenVINO's inference precision (``f32``); None keeps its default,
    which the session reports (``bf16`` on CPUs with bf16 instructions)."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    chosen = compiled.get_property("INFERENCE_PRECISION_HINT")
    request = compiled.create_infer_request()
    out = compiled.output(0)
    return PeerSession(lambda x: request.infer([x])[out], _OV_PRECISIONS.get(getattr(chosen, "type_name", str(chosen)), str(chosen)))


def session_label(peer, session: PeerSession) -> tuple[str, str]:
    """(label, precision) of a loaded peer: the peer's own, or, where the runtime runs an fp32
    peer in another float precision, that precision named in the label (an int8 peer stays
    int8: its layers left in float run in whatever the runtime chose)."""
    if session.precision is None or session.precision == peer.precision or peer.precision != "fp32":
        return peer.label, peer.precision
    return f"{peer.label.replace(peer.precision, '').strip()} {session.precision} (its default on this CPU)", session.precision


@register_peer
class OnnxRuntime(PeerRuntime):
    name, label, baseline = "onnxruntime", "ONNX Runtime fp32", True
    packages, install = ("onnxruntime", "onnx"), "installed with vitune: pip install onnxruntime onnx"

    def load(self, model, example, threads, calibration=None):
        return _ort_session(onnx_file(model, example), threads)


@register_peer
class OnnxRuntimeInt8(PeerRuntime):
    """ONNX Runtime's dynamic quantization (int8 weights, activations quantized per run)."""

    name, label, precision = "onnxruntime-int8", "ONNX Runtime int8 dynamic", "int8"
    packages, install = ("onnxruntime", "onnx"), "installed with vitune: pip install onnxruntime onnx"

    def load(self, model, example, threads, calibration=None):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(prefix="vitune-peer-") as tmp:
            fp32 = onnx_file(model, example)
            int8 = Path(tmp) / "model-int8.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
            return _ort_session(int8, threads)


@register_peer
class OpenVino(PeerRuntime):
    """OpenVINO as a user gets it: its default inference precision, fp32 or, on a CPU with bf16
    instructions, bf16 (the session says which; :func:`session_label` names it)."""

    name, label, baseline = "openvino", "OpenVINO fp32", True
    packages, install = ("openvino", "onnx"), "installed with vitune: pip install openvino"

    def load(self, model, example, threads, calibration=None):
        import openvino as ov

        return _ov_session(ov.Core().read_model(str(onnx_file(model, example))), threads)


@register_peer
class OpenVinoF32(PeerRuntime):
    """OpenVINO held to fp32 (``INFERENCE_PRECISION_HINT = f32``): the fp32 comparison on a CPU
    where its default is bf16. Bench-only: the speed-up reference is OpenVINO as users run it."""

    name, label = "openvino-f32", "OpenVINO fp32 (held to f32)"
    packages, install = ("openvino", "onnx"), "installed with vitune: pip install openvino"

    def load(self, model, example, threads, calibration=None):
        import openvino as ov

        return _ov_session(ov.Core().read_model(str(onnx_file(model, example))), threads, precision="f32")


@register_peer
class OpenVinoNncfInt8(PeerRuntime):
    """OpenVINO INT8 after NNCF post-training quantization on ``calibration`` inputs."""

    name, label, precision = "openvino-nncf-int8", "OpenVINO int8 (NNCF PTQ)", "int8"
    packages, install = ("openvino", "nncf", "onnx"), "pip install -e \".[bench]\""

    def load(self, model, example, threads, calibration=None):
        import nncf
        import openvino as ov

        if not calibration:
            raise ValueError(f"{self.label} needs calibration inputs")
        ov_model = ov.Core().read_model(str(onnx_file(model, example)))
        data = nncf.Dataset([np.ascontiguousarray(c, dtype=np.float32) for c in calibration])
        quantized = nncf.quantize(ov_model, data, subset_size=len(calibration), model_type=nncf.ModelType.TRANSFORMER)
        return _ov_session(quantized, threads)


def _torch_session(module, threads: int) -> PeerSession:
    import torch

    torch.set_num_threads(threads)

    def run(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return PeerSession(run)


@register_peer
class TorchEager(PeerRuntime):
    name, label = "torch-eager", "PyTorch eager fp32"
    packages = ("torch",)

    def load(self, model, example, threads, calibration=None):
        return _torch_session(model.eval(), threads)


@register_peer
class TorchCompile(PeerRuntime):
    name, label = "torch-compile", "PyTorch torch.compile fp32"
    packages = ("torch",)

    def load(self, model, example, threads, calibration=None):
        import torch

        session = _torch_session(torch.compile(model.eval()), threads)
        session(example.numpy())  # compile now, not inside the first timing
        return session


def baseline_peers(profile) -> list[PeerRuntime]:
    """The peers that compete for the speed-up reference on ``profile`` and can run here: on a
    CPU of this machine ONNX Runtime and OpenVINO fp32; none elsewhere (the reference is then
    vitune's tuned uncompressed build, :data:`TVM_BASELINE`)."""
    out = []
    for cls in list_peers().values():
        peer = cls()
        if peer.baseline and peer.runs_on(profile) and peer.missing() is None:
            out.append(peer)
    return out


def time_callable(fn: Callable[[], object], protocol, sync: Callable[[], object] = lambda: None) -> list[float]:
    """Samples (ms per run) of ``fn`` taken the way the target's protocol times TVM builds:
    ``warmup`` runs, then ``repeat`` repeats of ``number`` runs (0: enough to last
    ``min_repeat_ms``), ``cooldown_ms`` apart. ``sync`` waits for work ``fn`` left running (a
    GPU's queue) before each clock reading, once per repeat, as TVM's time evaluator does."""
    for _ in range(protocol.warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = max((time.perf_counter() - t0) * 1e3, 1e-3)
    number = protocol.number or max(1, int(protocol.min_repeat_ms / once) + 1)
    samples = []
    for i in range(protocol.repeat):
        if i and protocol.cooldown_ms:
            time.sleep(protocol.cooldown_ms / 1e3)
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3 / number)
    return samples


@dataclass(frozen=True)
class SideBySide:
    """Latencies (ms, the protocol's statistic over every round's repeats) of things timed in
    interleaved rounds in one process; ``errors``: what could not be loaded or run, by name."""

    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    rounds: int = 0


def time_side_by_side(timers: dict[str, Callable[[], list[float]]], protocol, rounds: int = 3) -> SideBySide:
    """Run each timer (it returns ms samples) once per round, in turn, ``rounds`` times: a burst
    of load on a shared machine falls on all of them alike. A timer that raises is dropped with
    its error; the others go on."""
    from vitune.errors import short_reason

    samples: dict[str, list[float]] = {k: [] for k in timers}
    errors: dict[str, str] = {}
    for _ in range(max(1, rounds)):
        for name, timer in timers.items():
            if name in errors:
                continue
            try:
                samples[name] += list(timer())
            except Exception as err:
                errors[name] = short_reason(err)
    latencies = {k: protocol.latency_ms(v) for k, v in samples.items() if v and k not in errors}
    return SideBySide(latencies, errors, max(1, rounds))


def peer_timer(session: PeerSession, x: np.ndarray, protocol) -> Callable[[], list[float]]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return lambda: time_callable(lambda: session(x), protocol)


@dataclass(frozen=True)
class Baseline:
    """The speed-up reference of a target and a build timed beside it (ms, same rounds).

    ``runtime``: the fastest baseline peer's name, or :data:`TVM_BASELINE` where no peer runs on
    the target (the uncompressed model built by vitune with the target's tuning database);
    ``peers_ms``: every reference candidate's latency (``peer_labels``: what each ran, e.g.
    "OpenVINO bf16"); ``candidate_ms``: the build compared; ``others_ms``: more builds timed in
    the same rounds, by the names they were given."""

    runtime: str
    label: str
    latency_ms: float | None
    candidate_ms: float | None = None
    peers_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    others_ms: dict[str, float] = field(default_factory=dict)
    peer_labels: dict[str, str] = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        """How many times faster the candidate runs than the reference (None: not measured)."""
        if not self.latency_ms or not self.candidate_ms:
            return None
        return self.latency_ms / self.candidate_ms

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "label": self.label, "latency_ms": self.latency_ms, "candidate_ms": self.candidate_ms,
                "peers_ms": dict(self.peers_ms), "errors": dict(self.errors), "rounds": self.rounds,
                "others_ms": dict(self.others_ms), "peer_labels": dict(self.peer_labels)}

    def line(self) -> str:
        if self.latency_ms is None:
            return f"no baseline could be timed ({'; '.join(f'{k}: {v}' for k, v in self.errors.items()) or 'nothing to time'})"
        others = ", ".join(f"{k} {v:.4f} ms" for k, v in self.peers_ms.items() if k != self.runtime)
        speed = f"; this build {self.candidate_ms:.4f} ms = {self.speedup:.2f}x its speed" if self.speedup else ""
        return f"baseline: the uncompressed model in {self.label}, {self.latency_ms:.4f} ms" + (f" (also timed: {others})" if others else "") + speed


def build_label(compiled) -> str:
    """How a TVM build's kernels were scheduled: tuned, partly tuned or untuned (said wherever a
    build is shipped or compared)."""
    rep = compiled.tuning
    if rep is None or rep.workloads == 0 or rep.untuned == rep.workloads:
        return "vitune's TVM build (untuned)"
    if rep.untuned:
        return f"vitune's TVM build ({rep.untuned} of {rep.workloads} workloads untuned)"
    if rep.from_seed:
        return f"vitune's TVM build, tuned ({rep.from_seed} of {rep.workloads} workloads with shipped schedules{rep.seed_note})"
    return "vitune's TVM build, tuned"


OTHER = "build:"  # the timer names of measure_baseline's `others`


def measure_baseline(original, example, profile, candidate=None, rounds: int = 3, others=None) -> Baseline:
    """Time the uncompressed ``original`` in every baseline peer of ``profile`` (or, where none
    runs, vitune's build of it with the target's tuning database) and the ``candidate`` build
    (a :class:`~vitune.targets.compile.CompiledModel`, optional) side by side, in interleaved
    rounds; ``others`` (name → build) are timed in the same rounds (``Baseline.others_ms``).
    Never raises: what cannot be loaded or timed is in ``errors``."""
    from vitune.errors import short_reason
    from vitune.targets.runner import runner_for

    x = example.numpy()
    timers: dict[str, Callable[[], list[float]]] = {}
    labels: dict[str, str] = {}
    errors: dict[str, str] = {}
    runner = runner_for(profile)
    prepared = []
    for peer in baseline_peers(profile):
        try:
            session = peer.load(original, example, profile.threads)
            timers[peer.name] = peer_timer(session, x, profile.protocol)
            labels[peer.name] = session_label(peer, session)[0]
        except Exception as err:
            errors[peer.name] = short_reason(err)
    # a device over RPC serves one session at a time: there each round connects, uploads, times
    # and lets go; a local build stays prepared (LLVM code generation) across rounds
    keep = profile.runner == "local"

    def build_timer(built):
        def timer():
            if built.prepared is None:
                runner.prepare(built)
            try:
                return runner.time(built, x, profile.protocol)
            finally:
                if not keep:
                    built.prepared = None
        prepared.append(built)
        return timer

    if not timers:  # no peer runs there: vitune's own uncompressed build is the reference
        from vitune.targets.compile import compile_model
        from vitune.targets.tuning import Tuner

        try:
            built = compile_model(original, example, profile, Tuner(profile, "database"))
            timers[TVM_BASELINE] = build_timer(built)
            labels[TVM_BASELINE] = build_label(built)
        except Exception as err:
            errors[TVM_BASELINE] = short_reason(err)
    if candidate is not None:
        timers["candidate"] = build_timer(candidate)
    for name, built in (others or {}).items():
        timers[OTHER + name] = build_timer(built)
    try:
        timed = time_side_by_side(timers, profile.protocol, rounds)
    finally:
        for built in prepared:
            built.prepared = None  # give the device back (a tracker lends it to one session at a time)
    errors.update(timed.errors)
    builds = {k[len(OTHER):]: v for k, v in timed.latency_ms.items() if k.startswith(OTHER)}
    refs = {k: v for k, v in timed.latency_ms.items() if k != "candidate" and not k.startswith(OTHER)}
    if not refs:
        return Baseline("", "", None, timed.latency_ms.get("candidate"), {}, errors, timed.rounds, builds)
    best = min(refs, key=refs.get)
    return Baseline(best, labels[best], refs[best], timed.latency_ms.get("candidate"), refs, errors, timed.rounds, builds,
                    {k: labels[k] for k in refs})
