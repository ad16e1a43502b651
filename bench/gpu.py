"""vitune's CUDA target on a real GPU: builds made here (no GPU: CUDA through NVRTC), run there by
the TVM runtime, checked against the same build for this CPU, and timed beside PyTorch on the GPU.

Two steps, because the machine with the GPU has no package registry and no TVM compiler:

``python bench/gpu.py build --out DIR [--target cuda-sm90]`` (here, with vitune installed)
    For each model (the embedded ``digits_vit_base``, ``deit_tiny_patch16_224`` and
    ``deit_base_patch16_224`` at 224 px; random init: latency does not depend on the weights) and
    each configuration (uncompressed; every linear layer at rank 0.5; every linear layer W8A8;
    and rank 0.5 with half the MLP pruned), vitune builds the structural
    candidate for the CUDA target exactly as ``apply`` would with ``tuning = "off"`` (TVM's default
    GPU schedules: MetaSchedule needs the GPU to tune) and writes its library (``model.so``), its
    parameters' shapes and dtypes, and a reference: the same Relax module built for this CPU and
    run here on seeded random parameters (the weights' values do not change the kernels, and
    random ones keep the bundle small enough to carry). It also copies the TVM *runtime* (no
    compiler) and ``tvm_ffi`` for the GPU machine's Python into ``DIR/site``.
``python bench/gpu.py run --bundle DIR --json F`` (on the GPU machine, ``TVM_USE_RUNTIME_LIB=1``)
    Loads each library with the TVM runtime on ``cuda(0)``, feeds it the same seeded parameters,
    checks its output against the CPU reference (max relative difference), and times it with the
    target profile's protocol (vitune's own timing loops); then times each uncompressed model in
    PyTorch on the same GPU (eager float32, ``torch.compile`` float32, eager bfloat16 autocast) in
    the same interleaved rounds. The speed-up reference is the fastest float32 PyTorch timing of the
    uncompressed model (the best runtime a user already has there at the same precision); the
    bfloat16 one is reported beside it, not used as the reference (another precision).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"digits_vit_base": None, "deit_tiny": "deit_tiny_patch16_224", "deit_base": "deit_base_patch16_224"}
CONFIGS = {
    "uncompressed": {},
    "rank0.5": {"rank_fraction": 0.5},
    "w8a8": {"precision": "w8a8"},
    "mixed": {"rank_fraction": 0.5, "prune_mlp": 0.5},
}
SEED = 0


def seeded_params(specs: list[dict], seed: int = SEED) -> list:
    """Parameters of the given shapes and dtypes drawn from one seeded generator, the same on
    every machine: floats ~ N(0, 0.02²), integers uniform in their int8 range."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for spec in specs:
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        if np.issubdtype(dtype, np.integer):
            out.append(rng.integers(-127, 128, size=shape).astype(dtype))
        else:
            out.append((0.02 * rng.standard_normal(shape)).astype(dtype))
    return out


# --- here: build ------------------------------------------------------------------------------

def _model(name: str):
    import torch

    torch.manual_seed(SEED)
    if MODELS[name] is None:
        from vitune.models.default import RECIPES, build_digits_vit

        recipe = RECIPES[name]
        return build_digits_vit(recipe, 10).eval(), torch.randn(1, 1, recipe.image_size, recipe.image_size)
    import timm

    return timm.create_model(MODELS[name], pretrained=False).eval(), torch.randn(1, 3, 224, 224)


def _config(space, name: str):
    from vitune.search.warmstart import uniform_assignment

    return space.to_config(uniform_assignment(space, CONFIGS[name]))


def build(args) -> None:
    import shutil

    import numpy as np

    from vitune.compression.pipeline import compress_structural
    from vitune.errors import message_line
    from vitune.models.layers import discover
    from vitune.search.space import SearchSpace
    from vitune.search.studyfile import SpaceSpec
    from vitune.targets import load_target
    from vitune.targets.compile import compile_model, export_library
    from vitune.targets.host import describe
    from vitune.targets.runner import runner_for

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu, cpu = load_target(args.target), load_target("local-cpu")
    spec = SpaceSpec(precision=("fp32", "int8", "w8a8"), rank_fraction=(1.0, 0.5), prune_heads=(0.0,), prune_mlp=(0.0, 0.5), distill_steps=(0,))
    index = {"target": args.target, "tvm_target": gpu.tvm_target, "protocol": dataclasses.asdict(gpu.protocol), "built_on": describe(), "items": []}
    for model_name in args.models.split(","):
        model, example = _model(model_name)
        space = SearchSpace.build(spec, discover(model))
        for config_name in args.configs.split(","):
            t0 = time.perf_counter()
            candidate = compress_structural(model, _config(space, config_name))
            item = f"{model_name}-{config_name}"
            folder = out / item
            folder.mkdir(exist_ok=True)
            try:
                built = compile_model(candidate, example, gpu, None)
                export_library(built, folder / "model.so", gpu)
            except Exception as err:  # noqa: BLE001 -- a configuration the target cannot build is a row with its reason
                reason = message_line(err)[:300]
                index["items"].append({"name": item, "model": model_name, "config": config_name, "build_error": reason})
                print(f"{item}: the {args.target} build failed: {reason}", flush=True)
                continue
            specs = [{"shape": list(p.shape), "dtype": str(p.dtype)} for p in built.params]
            ref_build = compile_model(candidate, example, cpu, None)  # the same Relax module for this CPU
            assert [p.shape for p in ref_build.params] == [tuple(s["shape"]) for s in specs], "CPU and GPU builds take other parameters"
            ref_build.params = seeded_params(specs)
            x = np.random.default_rng(SEED + 1).standard_normal(tuple(example.shape)).astype("float32")
            reference = runner_for(cpu).run(ref_build, x)
            np.save(folder / "input.npy", x)
            np.save(folder / "reference.npy", reference)
            (folder / "params.json").write_text(json.dumps(specs))
            params_mb = sum(p.nbytes for p in built.params) / 2**20
            index["items"].append({"name": item, "model": model_name, "config": config_name, "params_mb": params_mb,
                                   "build_s": time.perf_counter() - t0, "timm": MODELS[model_name],
                                   "input_shape": list(example.shape)})
            print(f"{item}: built for {args.target} and this CPU in {time.perf_counter() - t0:.1f} s ({params_mb:.1f} MB of parameters)", flush=True)
    (out / "index.json").write_text(json.dumps(index, indent=1, default=str))
    # the TVM runtime for the GPU machine's Python: tvm's Python package and runtime libraries
    # (not the 250 MB compiler: TVM_USE_RUNTIME_LIB=1 there), tvm_ffi from its wheel
    import tvm

    site = out / "site"
    shutil.rmtree(site, ignore_errors=True)
    skip = shutil.ignore_patterns("libtvm_compiler.so", "3rdparty", "src", "include", "web", "__pycache__", "*.pyc")
    shutil.copytree(Path(tvm.__file__).parent, site / "tvm", ignore=skip)
    if args.ffi_wheel:
        import zipfile

        zipfile.ZipFile(args.ffi_wheel).extractall(site)
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**20:.1f} MB)")


# --- there: run ------------------------------------------------------------------------------

def run(args) -> None:
    import numpy as np
    import torch
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from vitune.targets.peers import time_callable
    from vitune.targets.profile import Protocol
    from vitune.targets.runner import _timed_loop

    t_start = time.perf_counter()
    bundle = Path(args.bundle)
    index = json.loads((bundle / "index.json").read_text())
    protocol = Protocol(**{k: v for k, v in index["protocol"].items() if k in Protocol.__dataclass_fields__})
    dev = tvm.cuda(0)
    doc = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "tvm": tvm.__version__, "target": index["target"],
           "built_on": index["built_on"], "protocol": index["protocol"], "items": {}, "torch_ms": {}}
    loaded = {}
    for it in index["items"]:
        name, folder = it["name"], bundle / it["name"]
        row = dict(it)
        if "build_error" in it:
            doc["items"][name] = row
            continue
        try:
            lib = tvm.runtime.load_module(str(folder / "model.so"))
            vm = VirtualMachine(lib, dev)
            params = [tvm.runtime.tensor(p, dev) for p in seeded_params(json.loads((folder / "params.json").read_text()))]
            x = tvm.runtime.tensor(np.load(folder / "input.npy"), dev)
            got = vm["main"](x, *params)
            got = (got[0] if not hasattr(got, "numpy") else got).numpy()
            ref = np.load(folder / "reference.npy")
            row["max_rel_diff"] = float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
            row["argmax_agrees"] = bool(np.argmax(got) == np.argmax(ref))
            loaded[name] = (vm, [x, *params])
        except Exception as err:  # noqa: BLE001 -- a failing build is a row with its reason
            row["error"] = f"{type(err).__name__}: {err}"[:400]
        doc["items"][name] = row
        print(name, {k: row.get(k) for k in ("max_rel_diff", "argmax_agrees", "error")}, flush=True)
    models = {}
    for it in index["items"]:
        if it["config"] == "uncompressed" and it["model"] not in models:
            model, _ = _model(it["model"])
            models[it["model"]] = (model.to("cuda"), torch.randn(*it["input_shape"], device="cuda"))
    compiled = {}
    for m, (model, x) in models.items():
        if time.perf_counter() - t_start < args.compile_until_s:
            try:
                fn = torch.compile(model)
                with torch.inference_mode():
                    fn(x)
                compiled[m] = fn
            except Exception as err:  # noqa: BLE001
                doc.setdefault("compile_errors", {})[m] = f"{type(err).__name__}: {err}"[:300]

    def torch_fns(m):
        model, x = models[m]

        def eager(x):
            return model(x)

        def bf16(x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(x)

        fns = {"torch eager fp32": eager, "torch eager bf16 autocast": bf16}
        if m in compiled:
            fns["torch.compile fp32"] = compiled[m]
        return fns, x

    timings: dict[str, list[float]] = {}
    for r in range(args.rounds):  # interleaved: every build and peer once per round
        for name, (vm, vargs) in loaded.items():
            s = _timed_loop(vm, dev, vargs, protocol)
            timings.setdefault(name, []).append(protocol.latency_ms(s))
        with torch.inference_mode():
            for m in models:
                fns, x = torch_fns(m)
                for label, fn in fns.items():
                    s = time_callable(functools.partial(fn, x), protocol, sync=torch.cuda.synchronize)
                    timings.setdefault(f"{m}|{label}", []).append(protocol.latency_ms(s))
        print(f"round {r + 1}/{args.rounds} done at {time.perf_counter() - t_start:.0f} s", flush=True)
    for name in loaded:
        doc["items"][name]["tvm_ms"] = min(timings[name])
    for key, values in timings.items():
        if "|" in key:
            m, label = key.split("|")
            doc["torch_ms"].setdefault(m, {})[label] = min(values)
    lines = [f"{'build':<28} {'TVM ms':>9} {'best fp32 PyTorch ms':>21} {'speed-up':>9} {'bf16 eager ms':>14} {'max rel diff':>13}"]
    for name, row in doc["items"].items():
        peers = doc["torch_ms"].get(row["model"], {})
        fp32 = {k: v for k, v in peers.items() if "fp32" in k}
        best = min(fp32.values()) if fp32 else None
        row["reference"] = min(fp32, key=fp32.get) if fp32 else None
        row["speedup_vs_best_fp32_torch"] = best / row["tvm_ms"] if best and row.get("tvm_ms") else None
        lines.append(f"{name:<28} {row.get('tvm_ms', float('nan')):>9.4f} {best or float('nan'):>21.4f} "
                     f"{row['speedup_vs_best_fp32_torch'] or float('nan'):>8.2f}x {peers.get('torch eager bf16 autocast', float('nan')):>14.4f} "
                     f"{row.get('max_rel_diff', float('nan')):>13.2e}" + (f"  {row['error']}" if "error" in row else ""))
    doc["table"] = lines
    doc["wall_s"] = time.perf_counter() - t_start
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True)
    b.add_argument("--target", default="cuda-sm90")
    b.add_argument("--models", default=",".join(MODELS))
    b.add_argument("--configs", default=",".join(CONFIGS))
    b.add_argument("--ffi-wheel", default=None, help="apache-tvm-ffi's wheel for the GPU machine's Python (unpacked into the bundle)")
    r = sub.add_parser("run")
    r.add_argument("--bundle", required=True)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--compile-until-s", type=float, default=240.0, help="torch.compile the models only while the run is younger than this")
    r.add_argument("--json", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    build(args) if args.step == "build" else run(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
