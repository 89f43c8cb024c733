"""Tests of the version 1 wire contract in common/contract.py: topics, batch decoding and its error reasons."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.contract import (
    MAX_PAYLOAD_BYTES,
    MAX_SAMPLES_PER_BATCH,
    SAMPLES_CHANNEL,
    STATUS_CHANNEL,
    Component,
    ContractError,
    EnergySource,
    HostStats,
    Identity,
    MeterRole,
    Method,
    Reading,
    Sample,
    SampleBatch,
    Status,
    decode_batch,
    decode_status,
    encode,
    parse_topic,
    subscription,
    topic_for,
)

SESSION = "0123456789abcdef"


def batch_dict(**overrides) -> dict:
    """A valid SampleBatch as plain JSON data; keyword arguments replace top-level fields."""
    body = {
        "v": 1,
        "kind": "host",
        "session": SESSION,
        "samples": [
            {
                "seq": 0,
                "ts_ms": 1_700_000_000_000,
                "interval_s": 1.0,
                "readings": [
                    {"component": "cpu-package", "id": "package-0", "method": "rapl", "power_w": 85.5,
                     "energy_j": 85.5},
                    {"component": "server-input", "id": "input", "method": "model", "power_w": 150.0,
                     "energy_j": 150.0},
                ],
                "host": {"cpu_util": 0.25, "logical_cpus": 8, "mem_used_bytes": 1, "mem_total_bytes": 2},
            }
        ],
    }
    body.update(overrides)
    return body


def payload(body: dict) -> bytes:
    return json.dumps(body).encode()


def with_first_reading(**fields) -> dict:
    body = batch_dict()
    body["samples"][0]["readings"][0].update(fields)
    return body


def sample_dict(seq: int) -> dict:
    return {"seq": seq, "ts_ms": 1_700_000_000_000 + seq, "interval_s": 1.0, "readings": []}


# --- topics -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [SAMPLES_CHANNEL, STATUS_CHANNEL])
@pytest.mark.parametrize("root", ["dcem", "site-x_energy"])
def test_topic_for_and_parse_topic_round_trip(root: str, channel: str) -> None:
    identity = Identity(site="dc1", room="hall-a", rack="r.01", device="node_017")
    topic = topic_for(identity, channel, root=root)
    assert topic == f"{root}/v1/dc1/hall-a/r.01/node_017/{channel}"
    assert parse_topic(topic, root=root) == (identity, channel)


def test_subscription_matches_the_topic_shape() -> None:
    assert subscription(SAMPLES_CHANNEL) == "dcem/v1/+/+/+/+/samples"


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/dc1/hall-a/r01/node/samples",  # wrong root
        "dcem/v2/dc1/hall-a/r01/node/samples",  # wrong version
        "dcem/1/dc1/hall-a/r01/node/samples",  # version without its v
        "dcem/v1/dc1/hall-a/r01/samples",  # one level short
        "dcem/v1/dc1/hall-a/r01/node/extra/samples",  # one level too many
        "dcem/v1/dc1/hall a/r01/node/samples",  # space
        "dcem/v1/dc1/hall-a/r01/nöde/samples",  # non-ASCII
        "dcem/v1/dc1/+/r01/node/samples",  # MQTT wildcard as a level
        "dcem/v1/dc1/#/r01/node/samples",
        "dcem/v1//hall-a/r01/node/samples",  # empty level
        "dcem/v1/dc1/hall-a/r01/" + "n" * 65 + "/samples",  # level too long
        "",
    ],
)
def test_parse_topic_rejects_topics_outside_the_contract(topic: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_topic(topic)
    assert caught.value.reason == "bad-topic"


def test_parse_topic_accepts_a_64_character_level() -> None:
    identity, _ = parse_topic("dcem/v1/dc1/hall-a/r01/" + "n" * 64 + "/samples")
    assert identity.device == "n" * 64


def test_parse_topic_uses_the_given_root() -> None:
    with pytest.raises(ContractError):
        parse_topic("dcem/v1/dc1/hall-a/r01/node/samples", root="other")


# --- decoding ---------------------------------------------------------------------------------------------


def test_decode_batch_accepts_a_valid_batch() -> None:
    batch = decode_batch(payload(batch_dict()))
    assert batch.v == 1
    assert batch.session == SESSION
    reading = batch.samples[0].readings[0]
    assert (reading.component, reading.method, reading.power_w) == (Component.CPU_PACKAGE, Method.RAPL, 85.5)
    assert batch.samples[0].host == HostStats(cpu_util=0.25, logical_cpus=8, mem_used_bytes=1, mem_total_bytes=2)


def test_decode_batch_accepts_exactly_max_samples() -> None:
    body = batch_dict(samples=[sample_dict(i) for i in range(MAX_SAMPLES_PER_BATCH)])
    assert len(decode_batch(payload(body)).samples) == MAX_SAMPLES_PER_BATCH


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "malformed-json"),
        (b"{", "malformed-json"),
        (b"\xff\xfe not json", "malformed-json"),
        (payload(batch_dict())[:-1], "malformed-json"),
        # Python's json module writes the non-standard NaN/Infinity literals, which is what a sloppy sender does
        (payload(with_first_reading(power_w=float("nan"))), "not-finite"),
        (payload(with_first_reading(power_w=float("inf"))), "not-finite"),
        (payload(with_first_reading(energy_j=float("-inf"))), "not-finite"),
        (payload(batch_dict()).replace(b'"power_w": 85.5', b'"power_w": NaN'), "not-finite"),
        (payload(with_first_reading(power_w=-1.0)), "out-of-range"),
        (payload(with_first_reading(energy_j=-0.001)), "out-of-range"),
        (payload(with_first_reading(util=1.5)), "out-of-range"),
        (payload(with_first_reading(temp_c=-60)), "out-of-range"),
        (payload(with_first_reading(watts=3.0)), "schema"),
        (payload(batch_dict(hostname="node-017")), "schema"),
        (payload(with_first_reading(component="toaster")), "schema"),
        (payload(batch_dict(kind="fridge")), "schema"),
        (payload(batch_dict(session="short")), "schema"),
        (payload(batch_dict(session="has space in it")), "schema"),
        (payload(batch_dict(v=2)), "unsupported-version"),
        (payload(batch_dict(samples=[])), "schema"),
        (payload(batch_dict(samples=[sample_dict(i) for i in range(MAX_SAMPLES_PER_BATCH + 1)])), "schema"),
    ],
    ids=[
        "empty", "truncated-brace", "binary", "truncated-batch",
        "nan", "infinity", "minus-infinity-energy", "nan-literal",
        "negative-power", "negative-energy", "util-above-1", "temp-below-range",
        "unknown-reading-field", "unknown-batch-field", "unknown-component", "unknown-kind", "short-session",
        "session-bad-chars", "version-2", "empty-samples", "too-many-samples",
    ],
)
def test_decode_batch_rejects_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        decode_batch(raw)
    assert caught.value.reason == reason


def test_nan_literal_is_really_in_the_payload() -> None:
    """Guards the table above: json.dumps writes NaN as the bare literal, not as a string or null."""
    assert b'"power_w": NaN' in payload(with_first_reading(power_w=float("nan")))


def test_decode_batch_names_the_offending_field() -> None:
    with pytest.raises(ContractError) as caught:
        decode_batch(payload(with_first_reading(power_w=-1.0)))
    assert "samples.0.readings.0.power_w" in caught.value.detail
    assert "samples.0.readings.0.power_w" in str(caught.value)


def test_decode_batch_rejects_oversized_payload_before_parsing() -> None:
    raw = b" " * (MAX_PAYLOAD_BYTES + 1)  # not even JSON: the size check comes first
    with pytest.raises(ContractError) as caught:
        decode_batch(raw)
    assert caught.value.reason == "oversized"


def test_decode_batch_accepts_payload_of_exactly_max_size() -> None:
    raw = payload(batch_dict())
    padded = raw[:-1] + b" " * (MAX_PAYLOAD_BYTES - len(raw)) + raw[-1:]
    assert len(padded) == MAX_PAYLOAD_BYTES
    assert decode_batch(padded).session == SESSION


def test_decode_status_rejects_unknown_state() -> None:
    with pytest.raises(ContractError) as caught:
        decode_status(b'{"v":1,"state":"sleeping"}')
    assert caught.value.reason == "schema"


# --- encoding ---------------------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    batch = SampleBatch(
        kind="meter",
        session=SESSION,
        samples=[
            Sample(seq=7, ts_ms=1_700_000_000_123, interval_s=15.0, readings=[
                Reading(component=Component.METER, id="incomer-1", method=Method.METER, energy_j=3.6e9,
                        power_w=120_000.0, role=MeterRole.FACILITY_INPUT, source=EnergySource.GRID),
                Reading(component=Component.GPU, id="GPU-abc", method=Method.NVML_ENERGY, state="lost"),
            ])
        ],
    )
    raw = encode(batch)
    assert b"null" not in raw  # absent optional fields are left out, not sent as null
    assert decode_batch(raw) == batch


def test_status_round_trip() -> None:
    status = Status(state="online", session=SESSION, ts_ms=1, version="0.1.0", sensors={"rapl": "ok"})
    assert decode_status(encode(status)) == status


@pytest.mark.parametrize(
    ("method", "estimated"),
    [(Method.MODEL, True), (Method.RAPL, False), (Method.NVML_ENERGY, False), (Method.NVML_POWER, False),
     (Method.METER, False)],
)
def test_reading_is_estimated_only_for_model(method: Method, estimated: bool) -> None:
    assert Reading(component=Component.GPU, id="x", method=method).estimated is estimated


# --- property: any valid batch round-trips -----------------------------------------------------------------

finite_non_negative = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


def readings() -> st.SearchStrategy[Reading]:
    return st.builds(
        Reading,
        component=st.sampled_from(Component),
        id=st.from_regex(r"\A[A-Za-z0-9_.:/\-]{1,96}\Z"),
        method=st.sampled_from(Method),
        power_w=optional(finite_non_negative),
        energy_j=optional(finite_non_negative),
        name=optional(st.text(max_size=96)),
        power_instant_w=optional(finite_non_negative),
        power_avg_w=optional(finite_non_negative),
        power_limit_w=optional(finite_non_negative),
        util=optional(st.floats(min_value=0, max_value=1)),
        temp_c=optional(st.floats(min_value=-50, max_value=200)),
        mem_used_bytes=optional(st.integers(min_value=0, max_value=2**53)),
        mem_total_bytes=optional(st.integers(min_value=0, max_value=2**53)),
        state=st.sampled_from(["ok", "lost"]),
        role=optional(st.sampled_from(MeterRole)),
        source=optional(st.sampled_from(EnergySource)),
    )


host_stats = st.builds(
    HostStats,
    cpu_util=st.floats(min_value=0, max_value=1),
    cpu_freq_mhz=optional(st.floats(min_value=0, max_value=1e4)),
    logical_cpus=st.integers(min_value=1, max_value=4096),
    mem_used_bytes=st.integers(min_value=0, max_value=2**53),
    mem_total_bytes=st.integers(min_value=0, max_value=2**53),
)

samples = st.builds(
    Sample,
    seq=st.integers(min_value=0, max_value=2**53),
    ts_ms=st.integers(min_value=1, max_value=2**53),
    interval_s=st.floats(min_value=0, max_value=3600, exclude_min=True),
    readings=st.lists(readings(), max_size=4),
    host=optional(host_stats),
)

batches = st.builds(
    SampleBatch,
    kind=st.sampled_from(["host", "meter"]),
    session=st.from_regex(r"[A-Za-z0-9_\-]{8,64}", fullmatch=True),
    samples=st.lists(samples, min_size=1, max_size=4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_any_valid_batch_round_trips_through_encode_and_decode(batch: SampleBatch) -> None:
    assert decode_batch(encode(batch)) == batch


@pytest.mark.parametrize("seq", ["1", True, 1.0])
def test_types_are_strict_so_a_string_or_bool_is_not_taken_for_a_number(seq) -> None:
    body = batch_dict()
    body["samples"][0]["seq"] = seq
    with pytest.raises(ContractError) as caught:
        decode_batch(payload(body))
    assert caught.value.reason == "schema"


def test_a_seq_beyond_int64_is_out_of_range() -> None:
    """The collector stores seq as a 64-bit integer: a larger one is refused at the door, not met at the save."""
    body = batch_dict()
    body["samples"][0]["seq"] = 2**63 - 1
    assert decode_batch(payload(body)).samples[0].seq == 2**63 - 1
    body["samples"][0]["seq"] = 2**63
    with pytest.raises(ContractError) as caught:
        decode_batch(payload(body))
    assert caught.value.reason == "out-of-range"


@pytest.mark.parametrize("bad_id", ["gpu\\", "a b", "line\nbreak", "x,y", "k=v"])
def test_reading_ids_are_safe_to_store(bad_id) -> None:
    """A reading id becomes a database tag: characters that line protocol cannot carry are refused here."""
    body = with_first_reading(id=bad_id)
    with pytest.raises(ContractError):
        decode_batch(payload(body))
