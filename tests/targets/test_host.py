"""The host record results carry: this machine's CPU as results should name it."""

from vitune.targets import host


def test_describe_names_the_cpu_and_the_instruction_sets_that_change_results():
    record = host.describe()
    assert set(record) == {"cpu", "mcpu", "cores", "machine", "avx512", "vnni", "bf16"}
    assert record["cpu"] and record["machine"] and record["cores"] >= 1
    assert record["mcpu"]  # LLVM's name for this CPU (TVM is installed with vitune)
    flags = host.cpu_flags()
    assert record["avx512"] == ("avx512f" in flags) and record["bf16"] == ("avx512_bf16" in flags)
    assert host.cpu_clock_ghz() > 0
