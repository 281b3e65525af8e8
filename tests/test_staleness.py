"""The stale-profile check: a profile's prediction against measured items of the body at hand."""

from __future__ import annotations

import re
import statistics

import pytest

from calibration.staleness import (
    SPEED_KINDS,
    TOLERANCE,
    compare,
    predicted_s,
    probe_kind,
    recalibrate_command,
    reference,
)
from hwmodel.latency import LatencyModel
from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile


def measured_rows():
    prof = load_profile(DEFAULT_CPU_PROFILE)
    return prof, [r for r in prof.measurements if r["kind"] in ("engine_step", "search_call")]


def test_a_profile_agrees_with_the_machine_it_was_measured_on():
    prof, rows = measured_rows()
    found = compare(prof, rows)
    assert not found.stale
    assert found.items["prefill_step"] > 50 and found.items["decode_step"] > 50
    assert found.items["search_embed"] > 50 and found.items["search_scan"] > 50
    assert all(abs(e) < 0.1 for e in found.errors.values())


def test_a_profile_with_its_step_costs_halved_is_flagged():
    prof, rows = measured_rows()
    halved = prof.model_copy(update={"gen_step": prof.gen_step.model_copy(
        update={k: v / 2 for k, v in prof.gen_step.model_dump().items() if k.endswith("_s")})})  # costs, not shape
    found = compare(halved, rows)
    assert found.stale
    assert abs(found.errors["prefill_step"] + 0.5) < 0.1 and abs(found.errors["decode_step"] + 0.5) < 0.1
    assert abs(found.errors["search_embed"]) < TOLERANCE and abs(found.errors["search_scan"]) < TOLERANCE
    line = found.line(recalibrate_command("cpu"))
    assert "\n" not in line and re.search(r"engine steps that only decode take (1\.9[5-9]|2\.0\d)x", line)  # twice
    assert "hedra calibrate --backend cpu" in line


def test_a_slower_scan_is_flagged_and_a_small_drift_is_not():
    prof, rows = measured_rows()
    slower = [{**r, "seconds": r["seconds"] * (1.6 if r["kind"] == "search_call" else 1.1)} for r in rows]
    found = compare(prof, slower)
    assert found.stale and found.errors["search_scan"] < -TOLERANCE
    assert abs(found.errors["prefill_step"]) < TOLERANCE and abs(found.errors["decode_step"]) < TOLERANCE
    assert not compare(prof, [{**r, "seconds": r["seconds"] * 1.1} for r in rows]).stale


def test_an_embedding_priced_twice_too_slow_is_flagged_though_the_scans_are_right():
    """Half the probe's search calls only scan; a median over all of them hid a 2x embedding error."""
    prof, rows = measured_rows()
    faster = [{**r, "seconds": r["seconds"] / (2.0 if r["kind"] == "search_call" and r["new_queries"] else 1.0)}
              for r in rows]
    found = compare(prof, faster)
    assert found.stale and found.errors["search_embed"] > 0.8
    assert abs(found.errors["search_scan"]) < 0.1 and abs(found.errors["decode_step"]) < 0.1
    taken = 1 / (1 + found.errors["search_embed"])  # about 0.5: the profile's own bias on these rows besides
    assert f"search calls that embed queries take {taken:.2f}x" in found.line(recalibrate_command("cpu"))


def test_decode_steps_off_twice_are_flagged_though_the_prefills_take_most_of_the_time():
    """Apart from the prefills, whose time would hide them in one sum over the engine's steps."""
    prof, rows = measured_rows()
    slower = [{**r, "seconds": r["seconds"] * (2.0 if probe_kind(r) == "decode_step" else 1.0)}
              for r in rows]
    found = compare(prof, slower)
    assert found.stale and found.errors["decode_step"] < -0.4 and abs(found.errors["prefill_step"]) < 0.1


def test_the_shorter_half_of_the_decode_steps_far_off_does_not_make_a_profile_stale():
    """The verdict weighs each item by its time: the shorter half of the decode steps at 1.8x their
    price (one- and four-sequence steps on a drifting VM, stop 34) moves it by less than the
    tolerance, where a median over the items (the verdict until stop 35) reads 1.8x."""
    prof, rows = measured_rows()
    decode = sorted(float(r["seconds"]) for r in rows if probe_kind(r) == "decode_step")
    short = decode[len(decode) // 2 + 1]
    slower = [{**r, "seconds": r["seconds"] * (1.8 if probe_kind(r) == "decode_step"
                                               and r["seconds"] <= short else 1.0)} for r in rows]
    found = compare(prof, slower)
    assert not found.stale and -TOLERANCE < found.errors["decode_step"] < -0.1
    prices = predicted_s(LatencyModel(prof), slower)
    per_item = [p / r["seconds"] - 1 for r, p in zip(slower, prices, strict=True)
                if probe_kind(r) == "decode_step"]
    assert statistics.median(per_item) < -TOLERANCE


def test_the_probe_speed_is_the_machine_against_the_calibrations_minute():
    """Divided by what the probe measured right after the calibration (`Profile.probe`), the fit's
    own bias on the probe's shapes drops out: the same rows read 1.0, rows 30% slower read 1.3."""
    prof, rows = measured_rows()
    raw = compare(prof, rows).speed  # no reference: the rows' measured over priced time as it is
    assert all(0.8 < raw[kind] < 1.2 for kind in SPEED_KINDS)
    referenced = prof.model_copy(update={"probe": reference(prof, rows)})
    assert compare(referenced, rows).speed == pytest.approx({"engine_step": 1.0, "search_call": 1.0})
    slower = [{**r, "seconds": r["seconds"] * (1.3 if r["kind"] == "engine_step" else 1.0)} for r in rows]
    assert compare(referenced, slower).speed == pytest.approx({"engine_step": 1.3, "search_call": 1.0})


def test_a_stale_line_names_both_cpus_when_they_differ():
    """VMs sold under one model string differ in speed: the line says the profile's CPU is not this one."""
    from dataclasses import replace

    prof, rows = measured_rows()
    halved = prof.model_copy(update={"gen_step": prof.gen_step.model_copy(
        update={k: v / 2 for k, v in prof.gen_step.model_dump().items() if k.endswith("_s")})})
    found = replace(compare(halved, rows), other_cpu=("family 25 model 1 stepping 1", "family 25 model 17 stepping 1"))
    line = found.line(recalibrate_command("cpu"))
    assert "\n" not in line and "measured on family 25 model 1 stepping 1, this CPU is family 25 model 17" in line
    assert found.to_json()["other_cpu"] == ["family 25 model 1 stepping 1", "family 25 model 17 stepping 1"]
    assert compare(halved, rows).to_json()["other_cpu"] is None


def test_the_cpu_id_reads_family_model_stepping_clock_and_cache(tmp_path, monkeypatch):
    """From a /proc/cpuinfo like this VM's; the clock is the TSC's (bogomips / 2), not "cpu MHz",
    which frequency scaling moves: the same machine must give the same id."""
    from calibration import cpu

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nstepping\t: 1\ncpu MHz\t\t: 3100.000\ncache size\t: 1024 KB\n"
                    "bogomips\t: 5192.27\n\nprocessor\t: 1\ncpu family\t: 99\n")
    real_path = cpu.Path
    monkeypatch.setattr(cpu, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    assert cpu.cpu_model() == "AMD EPYC"
    assert cpu.cpu_id() == "family 25 model 17 stepping 1, 2596 MHz, cache 1024 KB"
