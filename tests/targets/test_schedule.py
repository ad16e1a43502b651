"""The default schedule of data-movement kernels: parallel and vectorised, values unchanged."""

import numpy as np
import torch

from vitune.targets.compile import compile_model, export_relax
from vitune.targets.runner import runner_for


class Shuffle(torch.nn.Module):
    """Pure data movement and one reduction (the sum, which the rule must leave alone)."""

    def forward(self, x):
        heads = x.reshape(2, 7, 3, 16).permute(0, 2, 1, 3)  # a head split
        y = torch.cat([heads * 0.5, heads.flip(-1)], dim=1)
        return y.transpose(1, 2).reshape(2, 7, 96) + y.sum()


def _kernels(model, x, target):
    import tvm
    from tvm import relax

    from vitune.targets.schedule import schedule_data_movement

    mod, _ = export_relax(model, x)
    with target:
        mod = relax.get_pipeline("zero")(mod)
    out = schedule_data_movement(mod, target)
    assert not any(f.attrs and f.attrs.get("tirx.is_scheduled") for f in mod.functions.values())  # input untouched
    return {gv.name_hint: f for gv, f in out.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_injective_kernels_run_in_parallel_and_vectorised(fast_target):
    kernels = _kernels(Shuffle(), torch.randn(2, 7, 48), fast_target.tvm())
    scheduled = {k: f for k, f in kernels.items() if f.attrs and f.attrs.get("tirx.is_scheduled")}
    assert scheduled, sorted(kernels)
    for name, f in scheduled.items():
        assert "T.parallel" in f.script(), name
    assert any("T.vectorized" in f.script() for f in scheduled.values())
    reductions = [k for k in kernels if "sum" in k]
    assert reductions and not any(k in scheduled for k in reductions)  # a reduction keeps TVM's default


def test_scheduled_data_movement_computes_what_torch_computes(fast_target):
    x = torch.randn(2, 7, 48)
    got = runner_for(fast_target).run(compile_model(Shuffle(), x, fast_target), x.numpy())
    np.testing.assert_allclose(got, Shuffle()(x).numpy(), rtol=1e-5, atol=1e-5)  # the sum: float32 order


def test_gpu_targets_are_left_to_their_own_pipeline():
    import tvm

    from vitune.targets.schedule import schedule_data_movement

    mod = tvm.IRModule()
    assert schedule_data_movement(mod, tvm.target.Target({"kind": "cuda", "arch": "sm_80"})) is mod
