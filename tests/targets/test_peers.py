"""Peer runtimes (the runtimes a user already has): every registered peer loads a small ViT and
computes what PyTorch computes; timing side by side; which peers compete for the baseline."""

import dataclasses

import numpy as np
import pytest
import torch

from vitune.targets.peers import (
    PeerRuntime,
    baseline_peers,
    get_peer,
    list_peers,
    peer_timer,
    register_peer,
    session_label,
    time_side_by_side,
)
from vitune.targets.profile import Protocol, RunnerSpec

SLOW_PEERS = {"torch-compile"}  # compiling with Inductor takes a minute on 2 cores


@pytest.fixture(scope="module")
def tiny_vit():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5).eval()
    return model, torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_PEERS else n for n in sorted(list_peers())]
)
def test_every_peer_loads_and_agrees_with_pytorch(name, tiny_vit, fast_target):
    model, x = tiny_vit
    peer = get_peer(name)
    assert peer.label and peer.precision in ("fp32", "int8")
    if peer.missing() is not None:  # a bench-only peer without the bench extra says how to get it
        assert "pip install" in peer.missing()
        return
    calibration = [torch.randn(1, 3, 32, 32).numpy() for _ in range(8)]
    session = peer.load(model, x, threads=1, calibration=calibration)
    got = session(x.numpy())
    want = model(x).detach().numpy()
    assert got.shape == want.shape
    label, precision = session_label(peer, session)
    assert precision in ("fp32", "bf16", "fp16", "int8") and (precision == peer.precision or precision in label)
    if name == "openvino-f32":
        assert precision == "fp32"  # held to f32 whatever the CPU
    scale = float(np.abs(want).max())
    tol = {"fp32": 1e-3, "bf16": 0.05 * scale, "fp16": 0.01 * scale}.get(precision, 0.5 * scale)  # int8 is close, not exact
    np.testing.assert_allclose(got, want, atol=tol)
    samples = peer_timer(session, x.numpy(), fast_target.protocol)()
    assert len(samples) == fast_target.protocol.repeat and min(samples) > 0


def test_side_by_side_timing_keeps_going_past_a_failing_peer():
    protocol = Protocol(warmup=0, number=1, repeat=2, statistic="min")
    calls = []

    def broken():
        raise RuntimeError("the runtime crashed\nSegmentation fault in libfoo")

    out = time_side_by_side({"a": lambda: calls.append("a") or [2.0, 1.0], "broken": broken, "b": lambda: calls.append("b") or [3.0]}, protocol, rounds=3)
    assert calls == ["a", "b"] * 3  # interleaved rounds
    assert out.latency_ms == {"a": 1.0, "b": 3.0} and out.rounds == 3
    assert out.errors == {"broken": "RuntimeError: Segmentation fault in libfoo"}


def test_baseline_peers_are_the_fp32_runtimes_of_a_local_cpu_and_none_elsewhere(fast_target):
    names = [p.name for p in baseline_peers(fast_target)]
    assert names == ["onnxruntime", "openvino"]  # both install with vitune
    remote = dataclasses.replace(fast_target, runner_spec=RunnerSpec("rpc", host="127.0.0.1", port=9090))
    assert baseline_peers(remote) == []
    cuda = dataclasses.replace(fast_target, tvm_target={"kind": "cuda", "arch": "sm_80"})
    assert baseline_peers(cuda) == []


def test_a_peer_name_is_registered_once():
    class Again(PeerRuntime):
        name = "onnxruntime"

        def load(self, model, example, threads, calibration=None):
            raise NotImplementedError

    with pytest.raises(ValueError, match="already registered"):
        register_peer(Again)


def test_a_session_that_runs_another_precision_than_its_peer_names_says_so():
    from vitune.targets.peers import PeerSession

    peer = get_peer("openvino")
    assert session_label(peer, PeerSession(lambda x: x)) == ("OpenVINO fp32", "fp32")
    assert session_label(peer, PeerSession(lambda x: x, "fp32")) == ("OpenVINO fp32", "fp32")
    assert session_label(peer, PeerSession(lambda x: x, "bf16")) == ("OpenVINO bf16 (its default on this CPU)", "bf16")
    int8 = get_peer("openvino-nncf-int8")
    assert session_label(int8, PeerSession(lambda x: x, "bf16")) == (int8.label, "int8")
