"""Can int8 matmuls run on VNNI through MetaSchedule here? A probe for the int8 × int8 path.

OpenVINO's lead over vitune on a CPU is int8 (issue 20): its NNCF int8 build runs the digits
model 1.2x faster than its bf16 and 1.75x faster than its fp32. vitune's w8a8 matmuls are
s8 × s8 → i32 and not tensorized, so they build slower than fp32. This probe tunes, for each
``--shape K,N`` (65 tokens, the quickstart model's), three kernels with MetaSchedule on this
machine's CPU and times them (against fp32, read the tuned kernels of the same shapes in a real
build, whose weights are prepacked: ``python bench/kernels.py --study studies/quickstart.toml``):

* ``u8-nt``: the same in u8 × s8 → i32 on the ``[N, K]`` weight. MetaSchedule's VNNI rule
  tensorizes it, and gets it wrong: the 16×4 weight tile it hands to ``vpdpbusd`` is matched
  without its row stride (TVM 0.27), so the result is checked against numpy and reported;
* ``u8-packed``: the weight in the packed layout ``[N/16, K/4, 16, 4]`` VNNI reads (what TVM's
  old ``dense_vnni`` used), where each tile is contiguous: exact, and the candidate for w8a8.

TVM 0.27's own ``dot_16x4_vnni`` intrinsic calls ``llvm.x86.avx512.vpdpbusd.512`` with int32x16
operands, which the LLVM it bundles declares as ``<64 x i8>``: every VNNI candidate fails to
build. :func:`vitune.targets.int8.register_vnni` re-registers it with byte-vector operands (same
instruction). What came of this probe: :mod:`vitune.targets.int8`, the packed kernel in every
tuned build of a w8a8 layer.

    python bench/vnni.py [--shape 192,576 --shape 768,192] [--trials 64] [--json F]

CPUs with AVX-512 VNNI only (x86 ``llvm`` target of the ``local-cpu`` profile). JSON keys per
shape: ``u8_nt_us`` / ``u8_nt_exact``, ``u8_packed_us`` / ``u8_packed_exact``,
``tensorized`` (kernel → bool).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

M = 65  # tokens of the quickstart's model (64 patches and a class token)


def kernel(kind: str, k: int, n: int):
    from tvm import te

    from vitune.targets.int8 import vnni_kernel

    if kind == "u8-packed":  # the kernel every tuned build of a w8a8 layer runs
        return vnni_kernel((M,), k, n).with_attr("global_symbol", "main")
    a, w = te.placeholder((M, k), "uint8", name="A"), te.placeholder((n, k), "int8", name="W")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((M, n), lambda i, j: te.sum(a[i, r].astype("int32") * w[j, r].astype("int32"), axis=r), name="C")
    return te.create_prim_func([a, w, c]).with_attr("global_symbol", "main")


def probe(kind: str, k: int, n: int, target, trials: int) -> dict:
    import numpy as np
    import tvm
    from tvm.s_tir import meta_schedule as ms

    func = kernel(kind, k, n)
    with tempfile.TemporaryDirectory(prefix="vitune-vnni-") as work:
        db = ms.tune_tir(func, target, work, max_trials_global=trials, num_trials_per_iter=16)
        sch = ms.tir_integration.compile_tir(db, func, target)
    if sch is None:
        return {"us": None, "exact": None, "tensorized": False, "error": "no candidate built"}
    lib = tvm.compile(sch.mod, target=target).jit()
    rng = np.random.default_rng(0)
    a, w = rng.integers(0, 256, (M, k)).astype(np.uint8), rng.integers(-128, 128, (n, k)).astype(np.int8)
    given = w if kind == "u8-nt" else np.ascontiguousarray(w.reshape(n // 16, 16, k // 4, 4).transpose(0, 2, 1, 3))
    out = np.zeros((M, n), np.int32)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev) for x in (a, given, out)]
    lib["main"](*args)
    exact = bool(np.array_equal(args[2].numpy(), a.astype(np.int64) @ w.astype(np.int64).T))
    us = min(lib.time_evaluator("main", dev, number=200, repeat=10)(*args).results) * 1e6
    return {"us": us, "exact": exact, "tensorized": "dot_16x4_vnni" in str(sch.trace)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", default=[], help="K,N of a linear layer (repeatable; default 192,576 and 768,192)")
    parser.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per kernel")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import logging

    from vitune.targets import load_target
    from vitune.targets.int8 import register_vnni
    from vitune.versions import versions

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    register_vnni()
    target = load_target("local-cpu").tvm()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape] or [(192, 576), (768, 192)]
    rows, t0 = {}, time.perf_counter()
    for k, n in shapes:
        if k % 4 or n % 16:
            raise SystemExit(f"--shape {k},{n}: the packed layout needs K a multiple of 4 and N of 16")
        got = {kind: probe(kind, k, n, target, args.trials) for kind in ("u8-nt", "u8-packed")}
        rows[f"{k},{n}"] = {
            "u8_nt_us": got["u8-nt"]["us"], "u8_nt_exact": got["u8-nt"]["exact"],
            "u8_packed_us": got["u8-packed"]["us"], "u8_packed_exact": got["u8-packed"]["exact"],
            "tensorized": {kind: g["tensorized"] for kind, g in got.items()},
        }
        r = rows[f"{k},{n}"]
        print(f"{M}x{k} · {k}x{n}: u8 x s8 on the [N,K] weight {r['u8_nt_us']:.2f} us ({'exact' if r['u8_nt_exact'] else 'WRONG'}); "
              f"packed [N/16,K/4,16,4] {r['u8_packed_us']:.2f} us ({'exact' if r['u8_packed_exact'] else 'WRONG'})", flush=True)
    print(f"{time.perf_counter() - t0:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions(), "target": str(target), "tokens": M, "trials": args.trials, "shapes": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
