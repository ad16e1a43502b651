"""The transforms on the real default model: what the search scores is what TVM deploys."""

import numpy as np

from vitune.compression.calibrate import Calibration, capture_inputs
from vitune.compression.config import CompressionConfig, LinearConfig
from vitune.compression.lowrank import factorize, factorize_aa, output_error
from vitune.compression.pipeline import compress
from vitune.models.layers import discover


def _mixed_config(layout):
    linear = {}
    for u in layout.linears:
        precision = ("w8a8", "int4", "int8", "fp16")[u.block]
        rank = max(1, min(u.in_features, u.out_features) // 2) if u.block == 2 else None
        linear[u.name] = LinearConfig(precision, rank)
    return CompressionConfig.make(linear, prune_heads={"blocks.3.attn": 0.25}, prune_mlp={"blocks.3.mlp": 0.25})


def test_tvm_agrees_with_pytorch_on_the_validation_split(default_workspace, fast_target):
    from vitune.targets.compile import compile_model
    from vitune.targets.measure import agreement

    ws = default_workspace
    model = compress(ws.model, _mixed_config(discover(ws.model)), ws.data.train, Calibration.from_dataset(ws.data.calib, 256))
    compiled = compile_model(model, ws.example_input(1), fast_target)
    top1, worst, n = agreement(model, compiled, fast_target, ws.data.val)
    assert n == len(ws.data.val)
    assert top1 >= 0.995, f"top-1 agreement {top1:.4f} over {n} images, max logit diff {worst:.2e}"
    assert worst < 1e-2


def test_activation_aware_output_error_is_lower_on_every_layer(default_workspace):
    ws = default_workspace
    model = ws.model
    calib = Calibration.from_dataset(ws.data.calib, 256)
    layers = [u.name for u in discover(model).linears]
    inputs = capture_inputs(model, layers, calib.x)
    ratios = []
    for name in layers:
        layer = model.get_submodule(name)
        rank = max(1, min(layer.in_features, layer.out_features) // 8)
        plain = output_error(layer, factorize(layer, rank), inputs[name])
        aware = output_error(layer, factorize_aa(layer, rank, inputs[name]), inputs[name])
        assert aware <= plain * 1.001, name
        ratios.append(aware / plain)
    assert float(np.mean(ratios)) <= 0.7
