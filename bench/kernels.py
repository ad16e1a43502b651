"""Where a build's time goes: every kernel of vitune's tuned build of a model, timed alone.

The study's model (uncompressed, and compressed with each ``--config``) is built as ``vitune
apply`` builds it for the study's target, kernels from the target's tuning database (``--tune``:
unseen workloads tuned first, else left untuned and said so). Each TIR kernel the build calls
is then compiled on its own and timed by TVM's ``time_evaluator`` (fastest of ``--repeat``
repeats of 50 runs) on zero / random inputs of its shapes; the table lists each kernel's time,
its number of calls in one inference and their product, largest first. The sum of the kernels
against the whole build's latency (through the VM, the faster of a timing before and one after
the kernels') is roughly what the VM adds: allocations, argument passing and one call per
kernel. The kernels and the build are timed at different moments: on a machine whose speed
drifts, read the shares, and the difference only when it is large.

    python bench/kernels.py [--study studies/digits_base.toml] [--config F ...] [--top 20]
                            [--tune] [--trials-per-task 64] [--json F]
    python bench/kernels.py --timm deit_tiny_patch16_224 [--target local-cpu] [--json F]

``--timm NAME`` builds that timm model instead (random init, seeded, at its default input size;
the uncompressed model only: the latency of a build does not depend on the weights' values).

Local CPU targets only (the kernels run in this process). JSON keys per build: ``kernels``
(name, ``calls``, ``ms_each``, ``ms_total``), ``kernels_ms``, ``build_ms``.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path


def kernel_calls(mod) -> collections.Counter:
    """How many times ``main`` calls each PrimFunc (``call_tir`` and direct calls)."""
    import tvm
    from tvm import relax

    counts: collections.Counter = collections.Counter()
    call_tir = {tvm.ir.Op.get("relax.call_tir"), tvm.ir.Op.get("relax.call_tir_inplace")}

    @relax.expr_functor.visitor
    class Calls(relax.PyExprVisitor):
        def visit_call_(self, call):
            if call.op in call_tir:
                counts[call.args[0].name_hint] += 1
            elif isinstance(call.op, tvm.ir.GlobalVar):
                counts[call.op.name_hint] += 1
            for arg in call.args:
                self.visit_expr(arg)

    Calls().visit_expr(mod["main"])
    return counts


def time_kernel(func, target, repeat: int) -> float:
    """Milliseconds of one run of PrimFunc ``func``, alone, on zero (integer) or random inputs."""
    import numpy as np
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target).jit()
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = []
    for p in func.params:
        shape, dtype = [int(s) for s in p.shape], str(p.dtype)
        value = np.zeros(shape, dtype) if "int" in dtype else rng.random(shape, dtype="float32").astype(dtype)  # indices stay in bounds
        args.append(tvm.runtime.tensor(value, dev))
    return min(lib.time_evaluator("main", dev, number=50, repeat=repeat)(*args).results) * 1e3


def profile_build(model, example, profile, tuner, repeat: int) -> dict:
    """Every kernel of ``model``'s build for ``profile`` timed alone, and the whole build."""
    from tvm import tirx

    from vitune.targets.compile import compile_model, export_relax, filtered_native_stderr
    from vitune.targets.graph import optimize
    from vitune.targets.runner import runner_for
    from vitune.targets.schedule import schedule_data_movement

    target = profile.tvm()
    mod, _ = export_relax(model, example)
    mod = optimize(mod, target, vnni=tuner.mode != "off")
    with filtered_native_stderr():
        mod, report = tuner.prepare(mod)
        mod = schedule_data_movement(mod, target)
    built = compile_model(model, example, profile, tuner)
    runner = runner_for(profile)
    runner.prepare(built)
    whole = [min(runner.time(built, example.numpy(), profile.protocol))]  # before and after the kernels: the faster
    calls = kernel_calls(mod)
    rows = []
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and gv.name_hint in calls:
            try:
                each = time_kernel(func, target, repeat)
            except Exception as err:  # a kernel that cannot run alone is listed with the reason
                rows.append({"name": gv.name_hint, "calls": calls[gv.name_hint], "ms_each": None, "ms_total": None, "error": str(err)[:200]})
                continue
            rows.append({"name": gv.name_hint, "calls": calls[gv.name_hint], "ms_each": each, "ms_total": each * calls[gv.name_hint]})
    rows.sort(key=lambda r: -(r["ms_total"] or 0.0))
    whole.append(min(runner.time(built, example.numpy(), profile.protocol)))
    built.prepared = None
    return {"tuning": report.line(), "kernels": rows, "kernels_ms": sum(r["ms_total"] or 0.0 for r in rows), "build_ms": min(whole),
            "kernel_calls": sum(calls.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/digits_base.toml")
    parser.add_argument("--config", action="append", default=[], help="a configuration to build (repeatable; the uncompressed model always)")
    parser.add_argument("--tune", action="store_true", help="tune workloads the database lacks (else they stay untuned)")
    parser.add_argument("--trials-per-task", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--timm", default=None, help="a timm model name: its uncompressed build instead of the study's model")
    parser.add_argument("--target", default="local-cpu", help="the target of --timm (a study names its own)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from value import study_models

    from vitune.targets import load_target
    from vitune.targets.tuning import Tuner
    from vitune.versions import versions

    t0 = time.perf_counter()
    if args.timm:
        import timm
        import torch

        torch.manual_seed(0)
        model = timm.create_model(args.timm, pretrained=False).eval()
        models = {f"{args.timm} (random init)": model}
        example = torch.randn(1, *model.default_cfg["input_size"], generator=torch.Generator().manual_seed(1))
        profile = load_target(args.target)
    else:
        ws, profile, models = study_models(Path(args.study), args.config)
        example = ws.example_input(1)
    if profile.runner != "local" or not profile.is_native:
        raise SystemExit(f"bench/kernels.py times kernels in this process: target {profile.name} runs elsewhere")
    tuner = Tuner(profile, "tune" if args.tune else "database", args.trials_per_task)
    doc: dict = {"versions": versions(), "study": None if args.timm else args.study, "timm": args.timm, "target": profile.name, "builds": {}}
    try:
        for name, model in models.items():
            row = profile_build(model, example, profile, tuner, args.repeat)
            doc["builds"][name] = row
            print(f"\n{name}: whole build {row['build_ms']:.4f} ms, {row['kernel_calls']} kernel calls timed alone {row['kernels_ms']:.4f} ms "
                  f"({row['tuning']})")
            for r in row["kernels"][: args.top]:
                if r["ms_total"] is None:
                    print(f"  {'-':>8}        {r['calls']:>3} x {'-':>7}  {r['name']}  ({r['error']})")
                else:
                    share = 100 * r["ms_total"] / row["kernels_ms"] if row["kernels_ms"] else 0.0
                    print(f"  {r['ms_total']:8.4f} ms {share:4.0f} %  {r['calls']:>3} x {r['ms_each']:.4f}  {r['name']}")
    finally:
        tuner.close()
    doc["seconds"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
