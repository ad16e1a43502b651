"""Lines a study prints at its start where its menu cannot deliver on a target what the menu
suggests: what the build a trial is scored on (the one ``vitune apply`` ships) really does."""

from __future__ import annotations


def study_notes(spec, layout, profile, target) -> list[str]:
    """Every note for one of the study's targets (``profile``, its ``[target]`` table ``target``)."""
    notes = (int8_size_note(spec, layout, profile, target), w8a8_speed_note(spec, layout, profile), seeds_note(profile, target))
    return [n for n in notes if n]


def int8_size_note(spec, layout, profile, target) -> str | None:
    """A line for a study that bounds or minimises the stored model's size (``budget_model_mb``,
    objective ``model_mb``) with weight-only int8 on the menu, on a target whose tuned builds hold
    those weights at fp32 (:func:`vitune.targets.tuning.prepacks`); None otherwise."""
    from vitune.targets.tuning import prepacks

    sized = bool(target.budget_model_mb) or "model_mb" in spec.search.objectives
    int8 = any("int8" in spec.space.menu_for(u.name, "precision") for u in layout.linears)
    if not (sized and int8 and prepacks(profile, target.tuning)):
        return None
    return (f"{profile.name}: note: its tuned builds hold weight-only int8 layers at fp32 (their dequantization is part of the "
            "build-time weight layout), while model_mb counts them at int8; to bound what the device holds use budget_peak_mb "
            "(latency = \"measured\"), or offer w8a8, whose weights stay int8")


def w8a8_speed_note(spec, layout, profile) -> str | None:
    """A line for a study with ``w8a8`` on its menu on an x86 CPU without VNNI, whose int8
    matmuls run TVM's generic integer code, no faster than fp32 (:func:`vitune.targets.int8.untensorized_int8`);
    None otherwise. The search still measures or predicts them as they are: the line says why
    w8a8 candidates will rarely be fast there."""
    from vitune.targets.int8 import untensorized_int8

    if not any("w8a8" in spec.space.menu_for(u.name, "precision") for u in layout.linears):
        return None
    if not untensorized_int8(profile):
        return None
    return (f"{profile.name}: note: its CPU has no VNNI, so w8a8 layers' int8 matmuls are not tensorized: at best as fast "
            "as fp32 once tuned on this CPU, slower with schedules tuned on another; w8a8 on the menu saves bytes "
            "(weights stay int8), rarely time")


def seeds_note(profile, target) -> str | None:
    """A line for a study whose tuned builds will take shipped schedules tuned on another CPU
    model (``seeds = "any"``, none of this CPU's own), which build slower kernels than tuning here
    (``bench/seeds.py``); None otherwise."""
    from vitune.targets.seeds import find_seeds

    if target.tuning == "off" or target.seeds != "any":
        return None
    fits = [(seed, seed.fit(profile)) for seed in find_seeds(profile)]
    if not fits or any(fit == "exact" for _, fit in fits):
        return None
    mcpus = "/".join(sorted({seed.meta.mcpu for seed, _ in fits}))
    return (f"{profile.name}: note: its shipped schedules were tuned on {mcpus}, not this CPU; the workloads they cover build "
            "with them, slower than tuned here (1.3x to 2.3x measured on a Zen 3); [target] seeds = \"this-cpu\" tunes them "
            "here instead, or run `vitune tune` once")

