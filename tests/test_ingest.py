"""Message validation and accounting in the collector (collector/ingest.py): every rejection reason from a crafted
message, all-or-nothing acceptance, status lines, raw-line decimation, and the message-splitting invariance.

Site: tests/site_stream.py (h01 500 W, h02 300 W in dc1/hall-a/r01; meters utility-1 and pv-1 under facility/main).
T is a bin start (2026-03-02T00:00Z); the collector's clock reads NOW = T + 10 min unless a test says otherwise.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.accounting import Point, bin_energies
from collector.book import EnergyBook
from collector.ingest import Ingest
from collector.site import SiteConfig, SiteIndex
from common.contract import (
    MAX_PAYLOAD_BYTES,
    Component,
    HostStats,
    Method,
    Overhead,
    Reading,
    Sample,
    SampleBatch,
    Status,
    encode,
)
from tests.lineparse import parse
from tests.site_stream import HOSTS, METERS, SITE_YAML

SEC, MIN, DAY = 1_000, 60_000, 86_400_000
T = int(datetime(2026, 3, 2, tzinfo=timezone.utc).timestamp() * 1000)
NOW = T + 10 * MIN
INDEX = SiteIndex(SiteConfig.model_validate(yaml.safe_load(SITE_YAML)))
H01, H02 = HOSTS
UTILITY, PV = METERS
H01_TOPIC = H01.topic()
UTILITY_TOPIC = UTILITY.topic()
SESSION = "session-h01-aaaa"


# ---------------------------------------------------------------------------------------------------------------
# Message builders
# ---------------------------------------------------------------------------------------------------------------

def host_sample(seq: int, ts: int, energy_j: float | None, power_w: float = 500.0, gpus: int = 0,
                interval_s: float = 60.0, cpu_util: float = 0.5) -> Sample:
    readings = [Reading(component=Component.SERVER_INPUT, id="input", method=Method.MODEL, power_w=power_w,
                        energy_j=energy_j)]
    readings += [Reading(component=Component.GPU, id=str(g), method=Method.NVML_ENERGY, power_w=100.0 + g,
                         energy_j=1.0, util=0.25 * (g + 1)) for g in range(gpus)]
    return Sample(seq=seq, ts_ms=ts, interval_s=interval_s, readings=readings,
                  host=HostStats(cpu_util=cpu_util, logical_cpus=8, mem_used_bytes=1, mem_total_bytes=2))


def meter_sample(seq: int, ts: int, energy_j: float | None, power_w: float = 900.0, interval_s: float = 60.0) -> Sample:
    reading = Reading(component=Component.METER, id="main", method=Method.METER, power_w=power_w, energy_j=energy_j,
                      role=UTILITY.role, source=UTILITY.source)
    return Sample(seq=seq, ts_ms=ts, interval_s=interval_s, readings=[reading])


def host_msg(samples: list[Sample], session: str = SESSION) -> bytes:
    return encode(SampleBatch(kind="host", session=session, samples=samples))


def meter_msg(samples: list[Sample], session: str = "session-utility-a") -> bytes:
    return encode(SampleBatch(kind="meter", session=session, samples=samples))


def edited(payload: bytes, edit) -> bytes:
    """A payload changed as JSON (to build what the contract's models would refuse to build)."""
    data = json.loads(payload)
    edit(data)
    return json.dumps(data).encode()


def set_power(value):
    def edit(data):
        data["samples"][0]["readings"][0]["power_w"] = value
    return edit


def rows(book: EnergyBook) -> dict:
    return {key: acc.as_row() for key, acc in book.accumulators.items()}


# Accepted before every rejection case: h01, one session, seqs 0..2 a minute apart at 500 W (30 000 J per minute).
BASELINE = [(H01_TOPIC, host_msg([host_sample(seq, T + seq * MIN, seq * 30_000.0) for seq in range(3)]))]


@pytest.fixture
def ingest() -> Ingest:
    ingest = Ingest(INDEX, EnergyBook(INDEX), "dcem")
    for topic, payload in BASELINE:
        assert ingest.handle(topic, payload, NOW) is None
    ingest.take_lines()
    ingest.book.take_dirty()
    ingest.book.take_new_points()
    return ingest


GOOD = host_msg([host_sample(3, T + 3 * MIN, 90_000.0)])

REJECTIONS = {
    # topic
    "topic with too few levels": ("dcem/v1/dc1/hall-a/h01/samples", GOOD, "bad-topic"),
    "topic with another root": ("other/v1/dc1/hall-a/r01/h01/samples", GOOD, "bad-topic"),
    "topic with another protocol version": ("dcem/v2/dc1/hall-a/r01/h01/samples", GOOD, "bad-topic"),
    "topic with a level that is not a topic level": ("dcem/v1/dc1/hall a/r01/h01/samples", GOOD, "bad-topic"),
    "topic with an unknown channel": ("dcem/v1/dc1/hall-a/r01/h01/metrics", GOOD, "bad-topic"),
    # payload, from the contract
    "payload that is not JSON": (H01_TOPIC, b"{not json", "malformed-json"),
    "payload with NaN power": (H01_TOPIC, edited(GOOD, set_power(float("nan"))), "not-finite"),
    "payload with infinite power": (H01_TOPIC, edited(GOOD, set_power(float("inf"))), "not-finite"),
    "payload with negative power": (H01_TOPIC, edited(GOOD, set_power(-1.0)), "out-of-range"),
    "payload of protocol version 2": (H01_TOPIC, edited(GOOD, lambda d: d.update(v=2)), "unsupported-version"),
    "payload over 256 KiB": (H01_TOPIC, GOOD + b" " * MAX_PAYLOAD_BYTES, "oversized"),
    "payload with an unknown field": (H01_TOPIC, edited(GOOD, lambda d: d.update(colour="red")), "schema"),
    # identity
    "site not configured": ("dcem/v1/nowhere/hall-a/r01/h01/samples", GOOD, "unknown-site"),
    "device not configured": ("dcem/v1/dc1/hall-a/r01/h99/samples", GOOD, "unknown-device"),
    "host in a rack it is not configured in": ("dcem/v1/dc1/hall-a/r02/h01/samples", GOOD, "unknown-device"),
    "meter payload on a host topic": (H01_TOPIC, meter_msg([meter_sample(3, T + 3 * MIN, 1.0)]), "kind-mismatch"),
    "host payload on a meter topic": (UTILITY_TOPIC, host_msg([host_sample(0, T, 0.0)]), "kind-mismatch"),
    # values, checked by the collector
    "sample 300.001 s ahead of the collector": (
        H01_TOPIC, host_msg([host_sample(3, NOW + 300_001, 90_000.0)]), "future-timestamp"),
    "sample more than 8 days old": (H01_TOPIC, host_msg([host_sample(3, NOW - 8 * DAY - 1, 90_000.0)]), "too-old"),
    "host reading of 50 001 W": (H01_TOPIC, host_msg([host_sample(3, T + 3 * MIN, 90_000.0, power_w=50_001.0)]),
                                 "absurd-power"),
    "meter reading of 500 000 001 W": (UTILITY_TOPIC, meter_msg([meter_sample(0, T, 0.0, power_w=500e6 + 1)]),
                                       "absurd-power"),
    "counter going back within one batch": (
        H01_TOPIC, host_msg([host_sample(0, T + 10 * MIN, 100.0), host_sample(1, T + 11 * MIN, 50.0)],
                            "session-h01-bbbb"),
        "counter-backwards"),
    "counter going back within one batch listed out of order": (
        H01_TOPIC, host_msg([host_sample(1, T + 11 * MIN, 50.0), host_sample(0, T + 10 * MIN, 100.0)],
                            "session-h01-bbbb"),
        "counter-backwards"),
    "counter going back across batches of one session": (
        H01_TOPIC, host_msg([host_sample(3, T + 3 * MIN, 59_999.0)]), "counter-backwards"),
    "late point below the nearest earlier known point": (
        H01_TOPIC, host_msg([host_sample(5, T + 5 * MIN, 150_000.0), host_sample(4, T + 4 * MIN, 10.0)]),
        "counter-backwards"),
    "host sample without server-input energy": (H01_TOPIC, host_msg([host_sample(3, T + 3 * MIN, None)]),
                                                "no-energy-reading"),
    "host sample with only a cpu reading": (H01_TOPIC, host_msg([Sample(
        seq=3, ts_ms=T + 3 * MIN, interval_s=60.0,
        readings=[Reading(component=Component.CPU_PACKAGE, id="0", method=Method.RAPL, power_w=100.0, energy_j=5.0)])]),
        "no-energy-reading"),
    "meter sample without energy": (UTILITY_TOPIC, meter_msg([meter_sample(0, T, None)]), "no-energy-reading"),
    "batch whose last sample only is bad": (
        H01_TOPIC, host_msg([host_sample(3, T + 3 * MIN, 90_000.0), host_sample(4, T + 4 * MIN, 120_000.0),
                             host_sample(5, NOW + 3_600_000, 150_000.0)]), "future-timestamp"),
}


@pytest.mark.parametrize(("topic", "payload", "reason"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_a_bad_message_is_rejected_whole_with_its_stable_reason(ingest, topic, payload, reason):
    before = rows(ingest.book)
    outcomes = dict(ingest.outcomes)
    rejection = ingest.handle(topic, payload, NOW)
    assert rejection is not None and rejection.reason == reason, rejection
    assert rejection.detail
    assert dict(ingest.rejected) == {reason: 1}
    # nothing of it was accounted or written
    assert rows(ingest.book) == before
    assert ingest.book.take_dirty() == {}
    assert ingest.book.take_new_points() == []
    assert ingest.take_lines() == []
    assert dict(ingest.outcomes) == outcomes


ACCEPTED_AT_THE_EDGE = {
    "sample exactly 300 s ahead": host_msg([host_sample(3, NOW + 300_000, 90_000.0)]),
    "sample exactly 8 days old": host_msg([host_sample(0, NOW - 8 * DAY, 0.0)], "session-h01-old1"),
    "host reading of exactly 50 000 W": host_msg([host_sample(3, T + 3 * MIN, 90_000.0, power_w=50_000.0)]),
    "counter that stays flat": host_msg([host_sample(3, T + 3 * MIN, 60_000.0)]),
    "counter lower than the last one, but in a new session": host_msg([host_sample(0, T + 3 * MIN, 0.0)],
                                                                      "session-h01-bbbb"),
    "late point between the nearest known ones": host_msg(
        [host_sample(5, T + 5 * MIN, 150_000.0), host_sample(4, T + 4 * MIN, 60_000.0)]),
    "batch listed out of seq order": host_msg([host_sample(4, T + 4 * MIN, 120_000.0),
                                               host_sample(3, T + 3 * MIN, 90_000.0)]),
}


@pytest.mark.parametrize("payload", ACCEPTED_AT_THE_EDGE.values(), ids=ACCEPTED_AT_THE_EDGE.keys())
def test_a_message_just_inside_the_limits_is_accepted(ingest, payload):
    assert ingest.handle(H01_TOPIC, payload, NOW) is None
    assert not ingest.rejected
    assert ingest.outcomes["messages"] == 2  # the baseline and this one


def test_counter_backwards_is_not_checked_across_sessions(ingest):
    # the baseline session ended at 60 000 J; a restarted agent counts from 0 again
    assert ingest.handle(H01_TOPIC, host_msg([host_sample(0, T + 4 * MIN, 0.0)], "session-h01-bbbb"), NOW) is None
    assert ingest.handle(H01_TOPIC, host_msg([host_sample(1, T + 5 * MIN, 30_000.0)], "session-h01-bbbb"), NOW) is None
    # ... and is still checked within the new session
    rejection = ingest.handle(H01_TOPIC, host_msg([host_sample(2, T + 6 * MIN, 29_999.0)], "session-h01-bbbb"), NOW)
    assert rejection is not None and rejection.reason == "counter-backwards"


def test_a_late_point_above_the_next_known_point_is_counter_backwards(ingest):
    now = T + 30 * MIN
    # baseline: seq 2 at T+2 min with 60 000 J. seq 4 at T+20 min with 600 000 J (500 W) is accepted:
    # 540 000 J over 18 min, 13/18 = 390 000 J in bin T and 5/18 = 150 000 J in bin T+15
    assert ingest.handle(H01_TOPIC, host_msg([host_sample(4, T + 20 * MIN, 600_000.0)]), now) is None
    # seq 3 at T+15 min claims 900 000 J: above seq 2 (so the check passes) but above seq 4 too. In seq order
    # (3 then 4) seq 4 would be refused as counter-backwards; so must seq 3 be now. Accepted, it splits 2-4 into
    # 2-3 = +840 000 J (bin T) and 3-4 = -300 000 J (bin T+15): bin T+15 goes to -300 000 J, which site_bin
    # clamps to 0, so the site counts 60 000 + 840 000 = 900 000 J where the session's counter says 600 000.
    rejection = ingest.handle(H01_TOPIC, host_msg([host_sample(3, T + 15 * MIN, 900_000.0)]), now)
    assert rejection is not None and rejection.reason == "counter-backwards"


def test_an_accepted_message_accounts_its_points_and_writes_raw_lines(ingest):
    assert ingest.handle(H01_TOPIC, host_msg([host_sample(3, T + 3 * MIN, 90_000.0)]), NOW) is None
    # baseline 0-2 min = 60 000 J, now 2-3 min = 30 000 J more, all in bin T
    assert ingest.book.accumulators[("rack", "dc1", "hall-a", "r01", T)].energy_j == pytest.approx(90_000.0)
    assert ingest.outcomes["new"] == 4 and ingest.outcomes["messages"] == 2
    (text,) = ingest.take_lines()
    measurement, tags, fields, ts = parse(text)
    assert (measurement, ts) == ("host", T + 3 * MIN)
    assert tags == {"site": "dc1", "room": "hall-a", "rack": "r01", "host": "h01"}
    assert fields == {"server_input_w": 500.0, "cpu_util": 0.5}


def test_a_redelivered_message_counts_as_duplicates_and_writes_nothing(ingest):
    topic, payload = BASELINE[0]
    before = rows(ingest.book)
    assert ingest.handle(topic, payload, NOW) is None
    assert ingest.outcomes["duplicate"] == 3
    assert rows(ingest.book) == before
    assert ingest.take_lines() == []


# ---------------------------------------------------------------------------------------------------------------
# Status messages
# ---------------------------------------------------------------------------------------------------------------

STATUS_TOPIC = "dcem/v1/dc1/hall-a/r01/h01/status"


def test_an_online_status_becomes_a_device_status_line_at_its_own_time(ingest):
    status = Status(state="online", session=SESSION, ts_ms=T + 5 * MIN, version="0.1.0",
                    overhead=Overhead(cpu_seconds=1.5, rss_bytes=40_000_000, spool_depth=3, spool_dropped=0))
    assert ingest.handle(STATUS_TOPIC, encode(status), NOW) is None
    (text,) = ingest.take_lines()
    measurement, tags, fields, ts = parse(text)
    assert measurement == "device_status" and ts == T + 5 * MIN
    assert tags == {"site": "dc1", "room": "hall-a", "rack": "r01", "device": "h01"}
    assert fields == {"state": "online", "online": True, "version": "0.1.0", "spool_depth": 3, "spool_dropped": 0,
                      "cpu_seconds": 1.5, "rss_bytes": 40_000_000}
    assert ingest.book.take_dirty() == {} and ingest.book.take_new_points() == []  # no accounting


def test_an_offline_last_will_without_time_is_stamped_with_the_collector_clock(ingest):
    assert ingest.handle("dcem/v1/dc1/facility/main/utility-1/status", encode(Status(state="offline")), NOW) is None
    (text,) = ingest.take_lines()
    measurement, tags, fields, ts = parse(text)
    assert (measurement, ts) == ("device_status", NOW)
    assert tags["device"] == "utility-1"
    assert fields == {"state": "offline", "online": False}


def test_a_meter_gateway_status_is_stored_though_the_site_config_does_not_list_gateways(ingest):
    topic = "dcem/v1/dc1/facility/main/meter-gateway/status"
    assert ingest.handle(topic, encode(Status(state="offline")), NOW) is None
    (text,) = ingest.take_lines()
    assert parse(text)[1]["device"] == "meter-gateway"
    assert ingest.devices.online[("dc1", "facility", "main", "meter-gateway")] is False


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("dcem/v1/elsewhere/hall-a/r01/h01/status", encode(Status(state="online")), "unknown-site"),
    (STATUS_TOPIC, b"offline", "malformed-json"),
    (STATUS_TOPIC, b'{"state": "sleeping"}', "schema"),
], ids=["unknown-site", "malformed-json", "schema"])
def test_a_bad_status_is_rejected_and_writes_no_line(ingest, topic, payload, reason):
    rejection = ingest.handle(topic, payload, NOW)
    assert rejection is not None and rejection.reason == reason
    assert ingest.take_lines() == []


# ---------------------------------------------------------------------------------------------------------------
# Raw lines: at most one per device per raw_resolution
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_message", [1, 7, 20])
def test_raw_lines_are_decimated_to_one_per_slot_per_device(per_message):
    # 20 host samples (2 GPUs each) and 20 meter samples, every 1 s from T: the 10 s slots [T, T+10s), [T+10s, T+20s)
    ingest = Ingest(INDEX, EnergyBook(INDEX), "dcem", raw_resolution_ms=10_000)
    hosts = [host_sample(i, T + i * SEC, 500.0 * i, gpus=2, interval_s=1.0) for i in range(20)]
    meters = [meter_sample(i, T + i * SEC, 900.0 * i, interval_s=1.0) for i in range(20)]
    now = T + 30 * SEC
    for i in range(0, 20, per_message):
        assert ingest.handle(H01_TOPIC, host_msg(hosts[i:i + per_message]), now) is None
        assert ingest.handle(UTILITY_TOPIC, meter_msg(meters[i:i + per_message]), now) is None
    parsed = [parse(text) for text in ingest.take_lines()]
    by_kind: dict[str, list] = {}
    for measurement, tags, fields, ts in parsed:
        by_kind.setdefault(measurement, []).append((tags.get("gpu"), ts, fields))
    assert sorted((g, ts) for g, ts, _ in by_kind["host"]) == [(None, T), (None, T + 10 * SEC)]
    assert sorted((g, ts) for g, ts, _ in by_kind["gpu"]) == [("0", T), ("0", T + 10 * SEC),
                                                               ("1", T), ("1", T + 10 * SEC)]
    assert sorted(ts for _, ts, _ in by_kind["meter"]) == [T, T + 10 * SEC]
    host_fields = by_kind["host"][0][2]
    # gpu_w = 100 + 101 W; gpus = 2
    assert (host_fields["server_input_w"], host_fields["gpu_w"], host_fields["gpus"]) == (500.0, 201.0, 2)
    gpu1 = next(f for g, _, f in by_kind["gpu"] if g == "1")
    assert (gpu1["power_w"], gpu1["util"], gpu1["method"], gpu1["lost"]) == (101.0, 0.5, "nvml-energy", False)
    meter_fields = by_kind["meter"][1][2]
    assert meter_fields == {"power_w": 900.0, "energy_kwh": pytest.approx(900.0 * 10 / 3.6e6)}


def test_raw_decimation_uses_the_configured_resolution():
    ingest = Ingest(INDEX, EnergyBook(INDEX), "dcem", raw_resolution_ms=1_000)
    samples = [host_sample(i, T + i * SEC, 500.0 * i, interval_s=1.0) for i in range(5)]
    assert ingest.handle(H01_TOPIC, host_msg(samples), T + MIN) is None
    assert len(ingest.take_lines()) == 5


# ---------------------------------------------------------------------------------------------------------------
# Message splitting invariance
# ---------------------------------------------------------------------------------------------------------------

STREAM_DEVICES = {"h01": (H01, "host"), "h02": (H02, "host"), "utility-1": (UTILITY, "meter")}


@st.composite
def deliveries(draw):
    """Sessions of samples, the messages they are batched into, and an arrival order with duplicates."""
    sessions = []
    session_end = T  # a device runs one session at a time: each starts after the previous ones ended
    for number in range(draw(st.integers(1, 3))):
        device = draw(st.sampled_from(sorted(STREAM_DEVICES)))
        start = session_end + draw(st.integers(0, 60)) * MIN
        steps_ms = draw(st.lists(st.integers(1, 900_000), min_size=1, max_size=11))
        watts = draw(st.lists(st.floats(0.0, 5_000.0), min_size=len(steps_ms), max_size=len(steps_ms)))
        times, energies = [start], [0.0]
        for step, power in zip(steps_ms, watts):
            times.append(times[-1] + step)
            energies.append(energies[-1] + power * step / 1000)
        sessions.append((device, f"session-{number}-{device}", list(zip(times, energies))))
        session_end = times[-1]
    messages = []  # (session index, first seq, last seq + 1)
    for index, (_device, _session, points) in enumerate(sessions):
        inner = range(1, len(points))  # where a message may end and the next begin
        cuts = sorted(draw(st.sets(st.sampled_from(inner), max_size=len(inner)))) if inner else []
        bounds = [0, *cuts, len(points)]
        messages += [(index, a, b) for a, b in zip(bounds, bounds[1:])]
    order = draw(st.permutations(range(len(messages))))
    repeats = draw(st.lists(st.integers(0, len(messages) - 1), max_size=len(messages)))
    arrival = list(order)
    for repeat in repeats:  # each duplicate re-inserted at a drawn position
        arrival.insert(draw(st.integers(0, len(arrival))), repeat)
    return sessions, messages, arrival


def encode_slice(device_name: str, session: str, points, first: int, end: int) -> tuple[str, bytes]:
    device, kind = STREAM_DEVICES[device_name]
    build = host_sample if kind == "host" else meter_sample
    samples = [build(seq, points[seq][0], points[seq][1], power_w=1.0) for seq in range(first, end)]
    return device.topic(), encode(SampleBatch(kind=kind, session=session, samples=samples))


def deliver(sessions, messages, arrival, now) -> Ingest:
    ingest = Ingest(INDEX, EnergyBook(INDEX), "dcem")
    for m in arrival:
        index, first, end = messages[m]
        device, session, points = sessions[index]
        assert ingest.handle(*encode_slice(device, session, points, first, end), now) is None
    return ingest


def assert_same_energies(actual: Ingest, expected: Ingest, scale: float) -> None:
    a, e = actual.book.accumulators, expected.book.accumulators
    for key in set(a) | set(e):
        got = (a[key].energy_j, a[key].covered_ms) if key in a else (0.0, 0.0)
        want = (e[key].energy_j, e[key].covered_ms) if key in e else (0.0, 0.0)
        # 1e-9 relative; near-zero bins (+x - x after a late point) get 1e-9 of the stream's total
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9 * scale), key


@settings(max_examples=150, deadline=None)
@given(deliveries())
def test_splitting_reordering_and_duplicating_messages_gives_the_same_energies(delivery):
    sessions, messages, arrival = delivery
    now = max(p[0] for _, _, points in sessions for p in points) + SEC
    scale = 1.0 + sum(points[-1][1] for _, _, points in sessions)
    once_in_order = [(index, seq, seq + 1) for index, (_, _, points) in enumerate(sessions)
                     for seq in range(len(points))]
    reference = deliver(sessions, once_in_order, range(len(once_in_order)), now)
    shuffled = deliver(sessions, messages, arrival, now)
    assert_same_energies(shuffled, reference, scale)
    # and both agree with the reference definition in collector/accounting.py: hosts per rack, meters per meter
    for kind, key in (("host", lambda start: ("rack", "dc1", "hall-a", "r01", start)),
                      ("meter", lambda start: ("meter", "dc1", "utility-1", start))):
        points = [Point(session, seq, ts, energy) for name, session, pts in sessions
                  if STREAM_DEVICES[name][1] == kind for seq, (ts, energy) in enumerate(pts)]
        for start, total in bin_energies(points).items():
            acc = shuffled.book.accumulators[key(start)]
            assert (acc.energy_j, acc.covered_ms) == pytest.approx((total.energy_j, total.covered_ms),
                                                                   rel=1e-9, abs=1e-9 * scale)


@pytest.mark.parametrize("seed", range(5))
def test_constant_power_streams_longer_than_the_kept_points_give_the_same_energies_in_any_order(seed):
    # 60 samples per session (more than the 16 kept): late points among dropped ones are ignored, which at
    # constant power moves no energy between bins
    rng = random.Random(seed)
    sessions = [(name, f"session-long-{name}", [(T + i * 40 * SEC, watts * 40 * i) for i in range(60)])
                for name, watts in (("h01", 500.0), ("utility-1", 900.0))]
    messages = []
    for index, (_, _, points) in enumerate(sessions):
        first = 0
        while first < len(points):
            end = min(len(points), first + rng.randint(1, 5))
            messages.append((index, first, end))
            first = end
    arrival = list(range(len(messages))) + [rng.randrange(len(messages)) for _ in range(10)]
    rng.shuffle(arrival)
    now = T + 60 * 40 * SEC
    once_in_order = [(index, seq, seq + 1) for index in range(2) for seq in range(60)]
    reference = deliver(sessions, once_in_order, range(len(once_in_order)), now)
    assert_same_energies(deliver(sessions, messages, arrival, now), reference, 1e6)
    # 59 intervals of 40 s at 500 W = 1 180 000 J in total, over bins T .. T+30 min
    total = sum(acc.energy_j for key, acc in reference.book.accumulators.items() if key[0] == "rack")
    assert total == pytest.approx(500.0 * 59 * 40)


def test_a_counter_jump_is_refused_every_time_it_shows_not_only_with_an_absurd_reported_power(ingest):
    # baseline: seq 2 at T+2 min with 60 000 J; seq 3 claims 1e9 J more a minute later (16.7 MW) while
    # reporting a plausible 500 W: refused, and so is any later sample whose counter keeps the jump
    spike = host_msg([host_sample(3, T + 3 * MIN, 60_000.0 + 1e9)])
    assert ingest.handle(H01_TOPIC, spike, NOW).reason == "absurd-power"
    carried = host_msg([host_sample(4, T + 4 * MIN, 60_000.0 + 1e9 + 30_000.0)])
    assert ingest.handle(H01_TOPIC, carried, NOW).reason == "absurd-power"
    honest = host_msg([host_sample(4, T + 4 * MIN, 120_000.0)])  # 500 W for the 2 minutes since seq 2
    assert ingest.handle(H01_TOPIC, honest, NOW) is None
    assert ingest.book.accumulators[("hosts", "dc1", T)].energy_j == pytest.approx(120_000.0)


def test_an_energy_beyond_the_contract_bound_is_refused_before_it_can_overflow():
    ingest = Ingest(INDEX, EnergyBook(INDEX), "dcem")
    payload = host_msg([host_sample(0, T, 12_345.0)]).replace(b'"energy_j":12345.0', b'"energy_j":1e307')
    assert ingest.handle(H01_TOPIC, payload, NOW).reason == "out-of-range"


def test_a_late_point_is_bounded_by_the_earliest_point_of_a_trimmed_session():
    # keep 2: after seqs 10, 11, 12 the book keeps 11 and 12 and remembers 10 as the earliest; seq 5 with
    # 1 500 J would sit before seq 10's 1 000 J: its counter is too high, refused rather than subtracting
    ingest = Ingest(INDEX, EnergyBook(INDEX, keep_points=2), "dcem")
    for seq, energy in ((10, 1_000.0), (11, 2_000.0), (12, 3_000.0)):
        assert ingest.handle(H01_TOPIC, host_msg([host_sample(seq, T + seq * MIN, energy)]), NOW + 60 * MIN) is None
    late = host_msg([host_sample(5, T + 5 * MIN, 1_500.0)])
    assert ingest.handle(H01_TOPIC, late, NOW + 60 * MIN).reason == "counter-backwards"


def test_two_senders_claiming_one_host_are_not_both_counted(ingest):
    # the baseline session runs T .. T+2 min; a second agent with the same identity reports inside that span
    clone = host_msg([host_sample(0, T + MIN, 0.0)], "session-h01-clone")
    assert ingest.handle(H01_TOPIC, clone, NOW).reason == "session-overlap"


def test_a_device_seen_before_is_checked_as_the_first_time(ingest):
    """Topics of configured devices are resolved once; every check after the lookup still runs each time."""
    wrong_kind = host_msg([host_sample(0, T, 0.0)])
    first = ingest.handle(UTILITY_TOPIC, wrong_kind, NOW)
    assert ingest.handle(UTILITY_TOPIC, meter_msg([meter_sample(0, T, 0.0)]), NOW) is None
    assert ingest.handle(UTILITY_TOPIC, wrong_kind, NOW) == first and first.reason == "kind-mismatch"
    unknown = ingest.handle("dcem/v1/dc1/hall-a/r01/h99/samples", GOOD, NOW)
    assert unknown.reason == "unknown-device"
    assert ingest.handle("dcem/v1/dc1/hall-a/r01/h99/samples", GOOD, NOW) == unknown


def reading(component: Component, id: str, power_w: float | None, method: Method = Method.RAPL, **extra) -> Reading:
    return Reading(component=component, id=id, method=method, power_w=power_w, energy_j=1.0, **extra)


HOST_LINE_CASES = {
    "packages win over psys; dram and gpus summed; one gpu lost": (
        [reading(Component.PSYS, "psys", 300.0), reading(Component.CPU_PACKAGE, "package-0", 96.5),
         reading(Component.DRAM, "dram-0", 12.5), reading(Component.CPU_PACKAGE, "package-1", None, Method.MODEL),
         reading(Component.CPU_PACKAGE, "package-2", 91.25), reading(Component.DRAM, "dram-1", 11.75),
         reading(Component.GPU, "0", 250.0, Method.NVML_ENERGY), reading(Component.GPU, "1", None, state="lost")],
        {"server_input_w": 500.0, "cpu_w": 187.75, "dram_w": 24.25, "gpu_w": 250.0, "cpu_method": "rapl",
         "cpu_util": 0.5, "gpus": 2, "gpus_lost": 1}),
    "psys without packages; no power anywhere else": (
        [reading(Component.PSYS, "psys", None, Method.MODEL), reading(Component.DRAM, "dram-0", None),
         reading(Component.CPU_CORE, "core", 50.0)],
        {"server_input_w": 500.0, "cpu_method": "model", "cpu_util": 0.5}),
}


@pytest.mark.parametrize(("extra", "fields"), HOST_LINE_CASES.values(), ids=HOST_LINE_CASES.keys())
def test_the_raw_host_line_sums_each_component_kind(extra, fields):
    ingest = Ingest(INDEX, EnergyBook(INDEX), "dcem")
    sample = host_sample(0, T, 0.0)
    sample = sample.model_copy(update={"readings": [*sample.readings, *extra]})
    assert ingest.handle(H01_TOPIC, host_msg([sample]), NOW) is None
    host_lines = [parse(text) for text in ingest.take_lines() if text.startswith("host,")]
    assert [(tags["host"], got, ts) for _, tags, got, ts in host_lines] == [("h01", fields, T)]
