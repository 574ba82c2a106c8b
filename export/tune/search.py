"""The search: greedy per switch from the default profile, within the budget, then the default checked again.

Per tuned file (float32 TFLite from the ``xnnpack`` profile, the ONNX file from its ``--optimize-for``
target's profile), starting from the default profile: each switch in catalogue order is flipped on the
current best (the incumbent), the challenger is built, checked exact, and timed against the incumbent in
interleaved rounds on the device (``measure.py``); it replaces the incumbent only if it wins every round.
The portable profile only tries switching its rewrites *off*: the ones it has off break some ONNX consumer.
A switch that leaves this model's graph as it is (``FastPlan.fingerprint``) is recorded and not built.
Then, per block in order, each switch the planner reads per block (``BLOCK_SWITCHES``) is flipped in that
block alone on the winner, where the flip gives a graph not yet built: a rewrite that loses over the whole
graph may still pay in the blocks whose shapes suit it (``--no-tune-blocks`` skips this phase).
When the budget is spent the remaining candidates are recorded as not tried (the first challenger is always
measured, however small the budget). Finally the winner is timed
against the default once more and shipped only if it still wins every round; otherwise the default is
shipped. A failed or inexact candidate is recorded with its reason and skipped.

The TFLite int8, float16 and dynamic files are built from the same fast graph as float32 and so follow its
tuning; OpenVINO, ncnn and MNN are converted from the portable ONNX file and are not tuned.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from micronet import interrupts
from micronet.errors import MicronetError

from . import record as rec
from .candidates import (block_flips, build_candidate, changed, chosen_profile, plan_fingerprint,
                         switches, tuning_runtime, with_block_switch, with_switch)
from .measure import Timing, beats, time_on_device
from .request import TuneRequest

Say = Callable[[str], None]


@dataclass
class Tuning:
    """What ``prepare_tuning`` resolved before the export prepared anything: the device, and per tuned format
    its key and, when a record is reused, that record."""

    request: TuneRequest
    target: Any  # devices.target.DeviceSpec
    families: dict[str, str]  # format ("tflite", "onnx") → fast-graph profile name
    exports: dict[str, dict[str, Any]]  # format → the record's ``export`` key
    devices: dict[str, dict[str, Any]]  # format → device fingerprint (runtime-specific)
    toolchain: dict[str, Any]
    reused: dict[str, dict[str, Any]] = field(default_factory=dict)  # format → a record to reuse

    def key(self, fmt: str) -> str:
        return rec.record_key(self.exports[fmt], self.devices[fmt]["id"], self.toolchain)


def families(request) -> dict[str, str]:
    """The files ``--tune`` tunes for this export request: format → fast-graph profile."""
    from ..onnx_targets import ONNX_TARGETS

    if request.graph != "fast":
        raise MicronetError("--tune tunes the fast graph; it does not combine with --graph reference")
    out = {}
    if any(kind.format == "tflite" for kind in request.kinds):
        out["tflite"] = "xnnpack"
    if ("onnx", "float32") in request.kinds:
        out["onnx"] = ONNX_TARGETS[request.optimize_for].profile
    if not out:
        raise MicronetError("--tune tunes the TFLite and ONNX files; add --format tflite or --format onnx")
    return out


def prepare_tuning(request, variant: str, say: Say) -> Tuning:
    """Resolve and reach the device, fingerprint it, and load (and check) the record to reuse: every refusal
    before the export builds or writes anything."""
    from micronet.devices.api import make_device, resolve

    tune: TuneRequest = request.tune
    tune.check()
    fams = families(request)
    target = resolve(tune.device, tune.inventory)
    if target.kind not in ("local", "ssh", "adb"):
        raise MicronetError(f"--tune measures on this machine (local), an SSH board or an adb phone, not on "
                            f"{target.kind} device {target.name}")
    runtimes = {fmt: tuning_runtime(fmt, target.kind) for fmt in fams}
    if tune.benchmark_binary is not None:  # the phone's check and every timing use it
        target = dataclasses.replace(target, options=dataclasses.replace(
            target.options, benchmark_binary=Path(tune.benchmark_binary).expanduser()))
    say(f"tuning on {target.name}: checking the device")
    check = make_device(target).check()
    if not check.reachable:
        raise MicronetError(f"cannot tune on {check.line()}")
    tools = rec.toolchain()
    exports, devices = {}, {}
    for fmt, profile in fams.items():
        runtime = runtimes[fmt]
        if runtime not in check.runtimes:
            why = f": {check.problem}" if check.problem else f" (it has {', '.join(check.runtimes) or 'none'})"
            raise MicronetError(f"cannot tune {fmt} on {target.name}: it has no {runtime}{why}")
        exports[fmt] = {"variant": variant, "input_size": request.input_size, "format": fmt, "profile": profile,
                        "threads": tune.threads}
        devices[fmt] = {**rec.fingerprint(target.kind, check.summary, runtime,
                                          check.runtimes[runtime]),
                        "target": target.text}
    tuning = Tuning(tune, target, fams, exports, devices, tools)
    for fmt in fams:
        device = {k: v for k, v in devices[fmt].items() if k != "target"}
        if tune.record is not None:
            record = rec.load_record(tune.record)
            if record.get("export", {}).get("format") != fmt and len(fams) > 1:
                continue  # a record tunes one file; the other is measured
            rec.check_record(record, exports[fmt], device, tools, str(tune.record))
            tuning.reused[fmt] = record
        elif tune.cache:
            record = rec.cached(tuning.key(fmt))
            if record is not None:
                tuning.reused[fmt] = record
    if tune.record is not None and not tuning.reused:
        raise MicronetError(f"tuning record {tune.record} tunes none of the requested files")
    return tuning


def tune_export(tuning: Tuning, ctx, say: Say) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Tune every file of ``tuning`` for the prepared export ``ctx``: (fast-graph profile name → the
    ``RuntimeProfile`` to build, format → the record for its manifests)."""
    from ..fast import PROFILES

    profiles, records = {}, {}
    for fmt, name in tuning.families.items():
        if fmt in tuning.reused:
            record = tuning.reused[fmt]
            say(f"tuning {fmt}: reusing the record measured on {record['device']['summary']} "
                f"({record['created_utc']})")
            record = {**record, "reused": True}
        else:
            record = _search(tuning, fmt, ctx, say)
            if tuning.request.cache:
                path = rec.store(tuning.key(fmt), record)
                say(f"tuning record cached: {_plain(str(path))}")
        profiles[name] = chosen_profile(PROFILES[name], record["chosen"])
        records[fmt] = record
    return profiles, records


def _search(tuning: Tuning, fmt: str, ctx, say: Say) -> dict[str, Any]:
    from ..fast import PROFILES

    tune = tuning.request
    default = PROFILES[tuning.families[fmt]]
    start = time.monotonic()
    timing = dict(threads=tune.threads, runtime=tuning.devices[fmt]["runtime"], rounds=tune.rounds,
                  runs=tune.runs, warmup=tune.warmup, inventory=tune.inventory)
    candidates: list[dict[str, Any]] = []
    order = [s for s, on in switches(default).items() if on or default.name != "portable"]
    with tempfile.TemporaryDirectory(prefix="micronet-tune-") as scratch:
        say(f"tuning {fmt} ({default.name} profile) on {tuning.target.name} at {tune.threads} thread(s): "
            "building the default")
        built = build_candidate(ctx, fmt, default, Path(scratch) / "default")
        state = _Incumbent(default, built.path, {plan_fingerprint(ctx, default)})

        def attempt(challenger, phase: str, step: str) -> None:
            """Build ``challenger``, time it against the incumbent, keep it if it wins every round."""
            entry = {"name": _name(challenger, default), "phase": phase, "changed": changed(challenger, default),
                     "blocks": [list(b) for b in challenger.blocks], "against": _name(state.profile, default)}
            elapsed = time.monotonic() - start
            if elapsed > tune.budget_s and candidates:  # the first challenger is always measured
                candidates.append({**entry, "status": "not tried (budget spent)"})
                return
            say(f"tuning {fmt}: {phase} candidate {step} {entry['name']} ({elapsed:.0f} s of {tune.budget_s:.0f} s)")
            try:
                made = build_candidate(ctx, fmt, challenger, Path(scratch) / f"c{len(candidates)}")
            except Exception as exc:  # noqa: BLE001 - a combination a rewrite refuses is a result, not a crash
                interrupts.check()
                reason = str(exc).splitlines()[0] if str(exc) else ""
                candidates.append({**entry, "status": f"not built: {reason}" if isinstance(exc, MicronetError)
                                   else f"not built: {type(exc).__name__}: {reason}"})
                return
            (inc, cha), _ = time_on_device(tuning.target, [state.path, made.path], **timing)
            state.noise = max(state.noise, inc.spread_ms, cha.spread_ms)
            state.statistics |= {inc.statistic, cha.statistic}
            won = beats(cha, inc)
            candidates.append({**entry, "status": "measured", "parity": made.parity, "p50_ms": cha.p50_ms,
                               "median_ms": cha.median_ms, "against_p50_ms": inc.p50_ms, "won": won})
            if won:
                state.profile, state.path = challenger, made.path

        for i, switch in enumerate(order):  # phase 1: each switch for the whole graph
            challenger = with_switch(state.profile, switch, not getattr(state.profile, switch))
            fingerprint = plan_fingerprint(ctx, challenger)
            if fingerprint in state.seen:  # the switch changes nothing in this model's graph
                candidates.append({"name": _name(challenger, default), "phase": "graph",
                                   "changed": changed(challenger, default), "blocks": [],
                                   "against": _name(state.profile, default), "status": "same graph as one timed"})
                continue
            state.seen.add(fingerprint)
            attempt(challenger, "graph", f"{i + 1}/{len(order)}")
        if tune.per_block:  # phase 2: each block's switches on the winner, where they change the graph
            # The portable graph never switches on what breaks an ONNX consumer: only_off lists only flips
            # to off, and a later winner (another block or switch) cannot change this flip's direction.
            flips = block_flips(ctx, state.profile, state.seen, only_off=default.name == "portable")
            for i, (block, switch) in enumerate(flips):
                current = state.profile.for_block(block)
                challenger = with_block_switch(state.profile, block, switch, not getattr(current, switch))
                fingerprint = plan_fingerprint(ctx, challenger)
                if fingerprint in state.seen:
                    continue  # an earlier winner made this flip a graph already timed
                state.seen.add(fingerprint)
                attempt(challenger, "block", f"{i + 1}/{len(flips)}")
        search_s = time.monotonic() - start
        incumbent, noise = state.profile, state.noise
        chosen = incumbent
        if incumbent != default:
            say(f"tuning {fmt}: checking {_name(incumbent, default)} against the default once more")
            (base, best), _ = time_on_device(tuning.target, [built.path, state.path], **timing)
            noise = max(noise, base.spread_ms, best.spread_ms)
            state.statistics |= {base.statistic, best.statistic}
            final = {"default_p50_ms": base.p50_ms, "chosen_p50_ms": best.p50_ms, "won": beats(best, base)}
            if not final["won"]:
                chosen = default
        else:
            (base,), _ = time_on_device(tuning.target, [built.path], **timing)
            state.statistics.add(base.statistic)
            final = {"default_p50_ms": base.p50_ms, "chosen_p50_ms": base.p50_ms, "won": False}
    default_entry = {"name": "default", "phase": "default", "changed": {}, "blocks": [], "status": "measured",
                     "parity": built.parity, "p50_ms": final["default_p50_ms"],
                     "median_ms": Timing(final["default_p50_ms"]).median_ms}
    say(f"tuning {fmt}: shipping {_name(chosen, default)}")
    search = "greedy per switch from the default, catalogue order"
    if tune.per_block:
        search += "; then greedy per block and switch, in block order, where the flip changes the graph"
    return {
        "schema": rec.SCHEMA,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export": tuning.exports[fmt],
        "device": tuning.devices[fmt],
        "threads": tune.threads,
        "toolchain": tuning.toolchain,
        "method": {"search": search, "rounds": tune.rounds, "runs": tune.runs, "warmup": tune.warmup,
                   "budget_s": tune.budget_s,
                   "statistic": "/".join(sorted(state.statistics)),
                   "rule": "a challenger wins only if its p50 is below the incumbent's in every round, both timed"
                           " in each round (the mean where the device's tool reports no median: statistic)"},
        "candidates": [default_entry, *candidates],
        "final_check": final,
        "chosen": {"name": _name(chosen, default), "changed": changed(chosen, default),
                   "switches": switches(chosen), "blocks": [list(b) for b in chosen.blocks]},
        "noise_ms": noise,
        "search_s": round(search_s, 1),
        "elapsed_s": round(time.monotonic() - start, 1),
    }


@dataclass
class _Incumbent:
    """The best candidate so far, its file, and the plans already built (by ``FastPlan.fingerprint``)."""

    profile: Any
    path: Path
    seen: set[str]
    noise: float = 0.0
    statistics: set[str] = field(default_factory=set)  # "p50", or "mean" where the tool prints no median


def _name(profile, default) -> str:
    diff = changed(profile, default)
    parts = [f"{'+' if on else '-'}{name}" for name, on in diff.items()]
    parts += [f"{'+' if on else '-'}{name}@{block}" for block, name, on in profile.blocks]
    return " ".join(parts) or "default"


def _plain(text: str) -> str:
    from rich.markup import escape

    return escape(text)
