"""Tests of the site model (collector/site.py), emission factors (collector/factors.py) and the green ledger
(collector/ledger.py): loading, errors that name the file and field, lookups and proration."""

from __future__ import annotations

import copy
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.factors import (
    DEFAULT_FACTORS_PATH,
    FactorError,
    GridRegion,
    diesel_factor,
    grid_factor,
    load_factors,
    residual_factor,
)
from collector.ledger import (
    LedgerError,
    green_instruments_kwh,
    load_ledger,
    load_ledgers,
    load_site_ledgers,
)
from collector.site import (
    FACILITY_RACK,
    FACILITY_ROOM,
    HostInfo,
    MeterInfo,
    SiteConfigError,
    SiteIndex,
    load_site_config,
)
from common.contract import EnergySource, MeterRole

COLLECTOR = Path(__file__).resolve().parent.parent / "collector"
EXAMPLE_SITE = COLLECTOR / "site.example.yaml"
SHANGHAI = ZoneInfo("Asia/Shanghai")
TIMEZONES = {"wuhan-1": "Asia/Shanghai", "shanghai-1": "Asia/Shanghai"}

BASE_SITE = {
    "id": "wuhan-1",
    "name": "Wuhan AI computing centre 1",
    "grid_region": "central",
    "rooms": [
        {"id": "hall-a", "racks": [{"id": "r01", "hosts": ["h01", "h02"]}, {"id": "r02", "hosts": ["h03"]}]},
        {"id": "hall-b", "racks": [{"id": "r01", "hosts": ["h04"]}]},
    ],
    "meters": [
        {"id": "utility-1", "role": "facility-input", "source": "grid", "feeds": ["hall-a", "hall-b"]},
        {"id": "pv-1", "role": "onsite-generation", "source": "pv"},
        {"id": "ups-a", "room": "hall-a", "rack": "ups", "role": "ups-output"},
    ],
}


def write_yaml(directory: Path, name: str, data: dict) -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def site_file(directory: Path, *sites: dict) -> Path:
    return write_yaml(directory, "sites.yaml", {"sites": list(sites) or [BASE_SITE]})


def changed_site(change) -> dict:
    site = copy.deepcopy(BASE_SITE)
    change(site)
    return site


def gec_range(first: int, last: int, start: str, end: str, prefix: str = "GEC-2026-", digits: int = 6) -> dict:
    return {"kind": "gec", "id_range": {"prefix": prefix, "first": first, "last": last, "digits": digits},
            "period": {"start": start, "end": end}}


def gec_ids(ids: list[str], start: str, end: str) -> dict:
    return {"kind": "gec", "ids": ids, "period": {"start": start, "end": end}}


def trading(contract: str, kwh: float, start: str, end: str) -> dict:
    return {"kind": "green-trading", "contract": contract, "kwh": kwh, "period": {"start": start, "end": end}}


def ledger_file(directory: Path, name: str, entries: list[dict], site: str = "wuhan-1") -> Path:
    return write_yaml(directory, name, {"site": site, "entries": entries})


def ledger_error(directory: Path, entries: list[dict]) -> str:
    with pytest.raises(LedgerError) as caught:
        load_ledger(ledger_file(directory, "ledger.yaml", entries), "Asia/Shanghai")
    return str(caught.value)


# --- the example files -------------------------------------------------------------------------------------


def test_example_site_config_loads_with_its_ledger():
    config = load_site_config(EXAMPLE_SITE)
    site = config.sites[0]
    assert site.id == "wuhan-1" and site.grid_region == GridRegion.CENTRAL
    assert site.zone == SHANGHAI
    assert site.certificates == COLLECTOR / "ledger.example.yaml"
    roles = {meter.role for meter in site.meters}
    assert {MeterRole.FACILITY_INPUT, MeterRole.ONSITE_GENERATION, MeterRole.UPS_OUTPUT, MeterRole.COOLING} <= roles
    assert {meter.source for meter in site.meters} >= {EnergySource.GRID, EnergySource.PV, EnergySource.DIESEL}
    ledgers = load_site_ledgers(config)
    assert set(ledgers) == {"wuhan-1"} and len(ledgers["wuhan-1"].claims) == 3


def test_minimal_site_without_meters_loads_when_facility_meter_not_required(tmp_path):
    site = {"id": "edge-1", "name": "Edge", "grid_region": "national", "rooms": []}
    config = load_site_config(site_file(tmp_path, site))
    assert config.sites[0].meters == () and config.sites[0].timezone == "Asia/Shanghai"


# --- site config errors --------------------------------------------------------------------------------------


def set_path(*steps_and_value):
    """A change that sets site[steps...] = value."""
    *steps, last, value = steps_and_value

    def change(site: dict) -> None:
        node = site
        for step in steps:
            node = node[step]
        node[last] = value

    return change


SITE_ERRORS = [
    (set_path("id", "wuhan 1"), "sites[0].id", "not a valid topic level"),
    (set_path("colour", "red"), "sites[0].colour", "Extra inputs are not permitted"),
    (set_path("timezone", "Mars/Base"), "sites[0].timezone", "unknown time zone"),
    (set_path("grid_region", "hubei"), "sites[0].grid_region", "'national'"),
    (set_path("grid_factor_year", 2021), "sites[0].grid_factor_year", "set grid_region: national"),
    (set_path("min_it_coverage", 1.5), "sites[0].min_it_coverage", "less than or equal to 1"),
    (set_path("rooms", 0, "racks", 0, "hosts", 1, "h 02"), "sites[0].rooms[0].racks[0].hosts[1]", "topic level"),
    (set_path("meters", 2, "role", "generator"), "sites[0].meters[2].role", "'facility-input'"),
    (set_path("meters", 1, "source", "grid"), "sites[0].meters[1].source", "pv, wind or diesel"),
    (set_path("meters", 0, "source", "pv"), "sites[0].meters[0].source", "grid, green-traded or mixed"),
    (set_path("meters", 0, "source", None), "sites[0].meters[0].source", "grid, green-traded or mixed"),
    (set_path("meters", 2, "room", "hall-z"), "sites[0].meters[2].room", "neither 'facility' nor a room"),
    (set_path("meters", 0, "feeds", ["hall-a", "hall-z"]), "sites[0].meters[0].feeds[1]", "'hall-z' is not a room"),
    (set_path("meters", 0, "feeds", ["hall-a", "hall-a"]), "sites[0].meters[0].feeds[1]", "also at"),
    (set_path("rooms", 1, "id", "hall-a"), "sites[0].rooms[1].id", "room id 'hall-a' is also at sites[0].rooms[0].id"),
    (set_path("rooms", 0, "racks", 1, "id", "r01"), "sites[0].rooms[0].racks[1].id", "rack id 'r01'"),
    (set_path("meters", 1, "id", "h03"), "sites[0].meters[1].id",
     "device id 'h03' is also at sites[0].rooms[0].racks[1].hosts[0]"),
]


@pytest.mark.parametrize("change, field, why", SITE_ERRORS)
def test_site_error_names_file_field_and_why(tmp_path, change, field, why):
    path = site_file(tmp_path, changed_site(change))
    with pytest.raises(SiteConfigError) as caught:
        load_site_config(path)
    message = str(caught.value)
    assert f"{path}: {field}: " in message
    assert why in message


def test_duplicate_host_in_another_room_names_both_places(tmp_path):
    site = changed_site(set_path("rooms", 1, "racks", 0, "hosts", ["h04", "h01"]))
    with pytest.raises(SiteConfigError) as caught:
        load_site_config(site_file(tmp_path, site))
    assert ("sites[0].rooms[1].racks[0].hosts[1]: device id 'h01' is also at sites[0].rooms[0].racks[0].hosts[0]"
            in str(caught.value))


def test_duplicate_site_id_names_both_sites(tmp_path):
    with pytest.raises(SiteConfigError, match=r"sites\[1\]\.id: site id 'wuhan-1' is also at sites\[0\]\.id"):
        load_site_config(site_file(tmp_path, BASE_SITE, BASE_SITE))


def test_required_facility_meter_missing_is_an_error(tmp_path):
    site = changed_site(set_path("require_facility_meter", True))
    site["meters"] = [meter for meter in site["meters"] if meter["role"] == "ups-output"]
    with pytest.raises(SiteConfigError, match=r"sites\[0\]\.meters: require_facility_meter is true"):
        load_site_config(site_file(tmp_path, site))


def test_onsite_generation_alone_does_not_satisfy_required_facility_meter(tmp_path):
    """A facility-complete bin needs a facility-input meter (docs/metrics.md): without one the site never gets a
    PUE, which is what require_facility_meter is there to catch at load."""
    site = changed_site(set_path("require_facility_meter", True))
    site["meters"] = [meter for meter in site["meters"] if meter["role"] == "onsite-generation"]
    with pytest.raises(SiteConfigError, match=r"sites\[0\]\.meters: .* no meter has role facility-input; the PUE"):
        load_site_config(site_file(tmp_path, site))
    site["meters"].append({"id": "utility-9", "role": "facility-input", "source": "grid"})
    assert load_site_config(site_file(tmp_path, site)).sites[0].require_facility_meter


def test_several_problems_are_all_reported(tmp_path):
    site = changed_site(set_path("meters", 1, "source", "grid"))
    site["rooms"][1]["id"] = "hall-a"
    with pytest.raises(SiteConfigError) as caught:
        load_site_config(site_file(tmp_path, site))
    assert "sites[0].rooms[1].id" in str(caught.value) and "sites[0].meters[1].source" in str(caught.value)


@pytest.mark.parametrize("text, why", [
    ("sites:\n  - id: a\n    id: b\n", "repeated key 'id'"),
    ("sites: [\n", "not valid YAML"),
    ("- just a list\n", "expected a mapping at the top level"),
    ("sites: []\n", "sites: List should have at least 1 item"),
])
def test_unusable_file_is_named(tmp_path, text, why):
    path = tmp_path / "sites.yaml"
    path.write_text(text)
    with pytest.raises(SiteConfigError) as caught:
        load_site_config(path)
    assert str(caught.value).startswith(str(path)) and why in str(caught.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SiteConfigError, match="nowhere.yaml: cannot read"):
        load_site_config(tmp_path / "nowhere.yaml")


# --- the lookup index ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index() -> SiteIndex:
    with tempfile.TemporaryDirectory() as directory:
        return SiteIndex(load_site_config(site_file(Path(directory))))


def test_index_finds_hosts_by_topic_levels(index):
    assert index.host("wuhan-1", "hall-a", "r01", "h02") == HostInfo("wuhan-1", "hall-a", "r01", "h02")
    assert index.host("wuhan-1", "hall-b", "r01", "h04") == HostInfo("wuhan-1", "hall-b", "r01", "h04")


@pytest.mark.parametrize("levels", [
    ("wuhan-2", "hall-a", "r01", "h01"),  # unknown site
    ("wuhan-1", "hall-b", "r01", "h01"),  # host in another room
    ("wuhan-1", "hall-a", "r02", "h01"),  # host in another rack
    ("wuhan-1", "hall-a", "r01", "h99"),  # unknown host
    ("wuhan-1", FACILITY_ROOM, FACILITY_RACK, "utility-1"),  # a meter is not a host
])
def test_index_host_is_none_when_not_expected_there(index, levels):
    assert index.host(*levels) is None


def test_index_finds_meters_under_their_topic_levels(index):
    utility = index.meter("wuhan-1", FACILITY_ROOM, FACILITY_RACK, "utility-1")
    assert utility == MeterInfo("wuhan-1", "facility", "main", "utility-1", MeterRole.FACILITY_INPUT,
                                EnergySource.GRID, ("hall-a", "hall-b"))
    ups = index.meter("wuhan-1", "hall-a", "ups", "ups-a")
    assert ups is not None and ups.role == MeterRole.UPS_OUTPUT and ups.source is None
    assert index.meter("wuhan-1", FACILITY_ROOM, FACILITY_RACK, "ups-a") is None
    assert index.meter("wuhan-1", "hall-a", "r01", "h01") is None


def test_index_expected_hosts_and_meters(index):
    assert [host.device for host in index.expected_hosts("wuhan-1")] == ["h01", "h02", "h03", "h04"]
    assert [host.device for host in index.expected_hosts("wuhan-1", "hall-a")] == ["h01", "h02", "h03"]
    assert [host.device for host in index.expected_hosts("wuhan-1", "hall-b", "r01")] == ["h04"]
    assert index.expected_hosts("wuhan-2") == () and index.expected_hosts("wuhan-1", "hall-a", "r09") == ()
    assert [meter.device for meter in index.expected_meters("wuhan-1")] == ["utility-1", "pv-1", "ups-a"]
    assert index.expected_meters("wuhan-2") == ()
    assert index.site("wuhan-1").name == BASE_SITE["name"] and index.site("wuhan-2") is None
    with pytest.raises(ValueError, match="give room too"):
        index.expected_hosts("wuhan-1", rack="r01")


# --- emission factors --------------------------------------------------------------------------------------------

SPEC_FACTORS = [
    ("national", 2021, 0.5568), ("national", 2022, 0.5366), ("national", 2023, 0.5306),
    ("north", 2022, 0.6776), ("north", 2023, 0.6361),
    ("northeast", 2022, 0.5564), ("northeast", 2023, 0.5122),
    ("east", 2022, 0.5617), ("east", 2023, 0.5500),
    ("central", 2022, 0.5395), ("central", 2023, 0.5271),
    ("northwest", 2022, 0.5857), ("northwest", 2023, 0.5543),
    ("south", 2022, 0.3869), ("south", 2023, 0.4042),
    ("southwest", 2022, 0.2268), ("southwest", 2023, 0.2472),
]


@pytest.mark.parametrize("region, year, value", SPEC_FACTORS)
def test_grid_factor_for_explicit_year(region, year, value):
    factor = grid_factor(region, year)
    assert (factor.value_kg_per_kwh, factor.region, factor.year, factor.kind) == (value, region, year, "location")
    assert "生态环境部" in factor.source and str(year) in factor.source


@pytest.mark.parametrize("region, value", [("national", 0.5306), ("central", 0.5271), ("southwest", 0.2472)])
def test_grid_factor_defaults_to_latest_year(region, value):
    factor = grid_factor(GridRegion(region))
    assert factor.year == 2023 and factor.value_kg_per_kwh == value


@pytest.mark.parametrize("year, value", [(2021, 0.5942), (2022, 0.5856), (2023, 0.6096), (None, 0.6096)])
def test_residual_factor(year, value):
    factor = residual_factor(year)
    assert factor.value_kg_per_kwh == value and factor.kind == "residual" and factor.region == "national"


@pytest.mark.parametrize("lookup, why", [
    (lambda: grid_factor("hubei"), "unknown grid region 'hubei'; regions are national, north"),
    (lambda: grid_factor("central", 2021), "central has 2022, 2023 (a national figure exists for 2021"),
    (lambda: grid_factor("national", 2030), "no grid emission factor for national in 2030; national has 2021, 2022"),
    (lambda: residual_factor(2020), "no national residual factor for 2020; the table has 2021, 2022, 2023"),
])
def test_unknown_factor_names_what_exists(lookup, why):
    with pytest.raises(FactorError) as caught:
        lookup()
    assert why in str(caught.value)


def test_diesel_default_follows_from_ipcc_factor_and_efficiency():
    factor = diesel_factor()
    assert factor.value_kg_per_kwh == pytest.approx(74.1 * 3.6 / 1000 / 0.35, abs=0.001)
    assert factor.kind == "assumption" and "IPCC" in factor.source
    assert diesel_factor(0.8).value_kg_per_kwh == 0.8 and "site configuration" in diesel_factor(0.8).source


@pytest.mark.parametrize("change, why", [
    (lambda data: data["factors"].append(dict(data["factors"][0])), "a second location factor for national 2021"),
    (lambda data: data["factors"].append({**data["factors"][3], "region": "north"}), "for the nation only"),
    (lambda data: data["diesel"].update(kg_per_kwh=0.7), "does not match fuel factor / efficiency"),
    (lambda data: data["factors"][0].update(document="nowhere"), "'nowhere' is not listed"),
    (lambda data: data["factors"][0].update(kg_per_kwh=-1), "greater than 0"),
])
def test_bad_factors_file_is_refused(tmp_path, change, why):
    data = yaml.safe_load(DEFAULT_FACTORS_PATH.read_text(encoding="utf-8"))
    change(data)
    path = write_yaml(tmp_path, "factors.yaml", data)
    with pytest.raises(FactorError) as caught:
        load_factors(path)
    assert str(path) in str(caught.value) and why in str(caught.value)


def test_site_config_checks_its_factor_against_a_given_table(tmp_path):
    data = yaml.safe_load(DEFAULT_FACTORS_PATH.read_text(encoding="utf-8"))
    data["factors"] = [row for row in data["factors"] if row["region"] == "national"]
    table = load_factors(write_yaml(tmp_path, "factors.yaml", data))
    with pytest.raises(SiteConfigError, match=r"sites\[0\]\.grid_region: no grid emission factor for region central"):
        load_site_config(site_file(tmp_path), factors=table)


# --- the green ledger ----------------------------------------------------------------------------------------------


def test_duplicate_certificate_within_a_file_names_both_entries(tmp_path):
    message = ledger_error(tmp_path, [
        gec_range(1, 500, "2026-10-01", "2026-11-01"),
        gec_ids(["GEC-2026-000499", "GEC-2026-000600"], "2026-11-01", "2026-12-01"),
    ])
    path = tmp_path / "ledger.yaml"
    assert f"{path} entries[1]: certificate GEC-2026-000499 is also claimed in {path} entries[0]" in message


def test_duplicate_certificate_across_site_files_names_both_files(tmp_path):
    wuhan = ledger_file(tmp_path, "wuhan.yaml", [gec_range(1, 500, "2026-10-01", "2026-11-01")])
    shanghai = ledger_file(tmp_path, "shanghai.yaml", [gec_range(400, 900, "2026-10-01", "2026-11-01")],
                           site="shanghai-1")
    with pytest.raises(LedgerError) as caught:
        load_ledgers([wuhan, shanghai], TIMEZONES)
    expected = f"{shanghai} entries[0]: certificate GEC-2026-000400 is also claimed in {wuhan} entries[0]"
    assert expected in str(caught.value)


def test_range_prefix_ending_in_digits_matches_the_same_written_id(tmp_path):
    message = ledger_error(tmp_path, [
        gec_range(1, 100, "2026-10-01", "2026-11-01", prefix="GEC2026", digits=6),
        gec_ids(["GEC2026000042"], "2026-11-01", "2026-12-01"),
    ])
    assert "certificate GEC2026000042 is also claimed" in message


def test_differently_written_ids_are_different_certificates(tmp_path):
    ledger = load_ledger(ledger_file(tmp_path, "ledger.yaml", [
        gec_range(1, 9, "2026-10-01", "2026-11-01", prefix="GEC-", digits=1),
        gec_ids(["GEC-01", "GEC-10", "GEC"], "2026-11-01", "2026-12-01"),
    ]), "Asia/Shanghai")
    assert [claim.kwh for claim in ledger.claims] == [9000, 3000]


def test_contract_claimed_twice_for_overlapping_periods(tmp_path):
    message = ledger_error(tmp_path, [
        trading("GPT-1", 1000, "2026-10-01", "2026-11-01"),
        trading("GPT-1", 1000, "2026-11-01", "2026-12-01"),
        trading("GPT-1", 1000, "2026-10-15", "2026-10-16"),
    ])
    assert "entries[2]: contract 'GPT-1' is also claimed for an overlapping period in" in message
    assert "entries[0]" in message and "entries[1]:" not in message


@pytest.mark.parametrize("entry, field, why", [
    (gec_range(1, 5, "2026-10-01", "2026-10-01"), "entries[0].gec.period", "must be after start"),
    (gec_range(1, 5, "2026-11-01", "2026-10-01"), "entries[0].gec.period", "must be after start"),
    (gec_range(5, 1, "2026-10-01", "2026-11-01"), "entries[0].gec.id_range", "last 1 is before first 5"),
    (gec_range(1, 1000, "2026-10-01", "2026-11-01", digits=3), "entries[0].gec.id_range", "more than 3 digits"),
    ({**gec_range(1, 500, "2026-10-01", "2026-11-01"), "kwh": 50000}, "entries[0].gec",
     "kwh 50000 is not 500 certificates x 1000 kWh"),
    ({**gec_range(1, 2, "2026-10-01", "2026-11-01"), "ids": ["X-1"]}, "entries[0].gec", "either ids or id_range"),
    (gec_ids(["X-1", "X-2", "X-1"], "2026-10-01", "2026-11-01"), "entries[0].gec", "ids lists X-1 more than once"),
    (gec_ids([], "2026-10-01", "2026-11-01"), "entries[0].gec.ids", "at least 1 item"),
    (trading("GPT-1", 0, "2026-10-01", "2026-11-01"), "entries[0].green-trading.kwh", "greater than 0"),
    ({"kind": "bond"}, "entries[0]", "does not match any of the expected tags"),
])
def test_ledger_entry_error_names_file_entry_and_why(tmp_path, entry, field, why):
    message = ledger_error(tmp_path, [entry])
    assert f"{tmp_path / 'ledger.yaml'}: {field}: " in message and why in message


def test_ledger_for_unknown_or_repeated_site_is_refused(tmp_path):
    stranger = ledger_file(tmp_path, "stranger.yaml", [], site="beijing-9")
    with pytest.raises(LedgerError, match="site: 'beijing-9' is not a configured site"):
        load_ledgers([stranger], TIMEZONES)
    first, second = ledger_file(tmp_path, "a.yaml", []), ledger_file(tmp_path, "b.yaml", [])
    with pytest.raises(LedgerError, match=f"{second}: site: 'wuhan-1' already has a ledger, {first}"):
        load_ledgers([first, second], TIMEZONES)


def test_site_certificates_file_must_be_for_that_site(tmp_path):
    ledger_file(tmp_path, "ledger.yaml", [], site="shanghai-1")
    shanghai = {"id": "shanghai-1", "name": "Shanghai", "grid_region": "east"}
    site_file(tmp_path, changed_site(set_path("certificates", "ledger.yaml")), shanghai)
    config = load_site_config(tmp_path / "sites.yaml")
    with pytest.raises(LedgerError, match="site: 'shanghai-1', but it is the certificates file of 'wuhan-1'"):
        load_site_ledgers(config)


# --- proration -------------------------------------------------------------------------------------------------

OCTOBER_HOURS = 31 * 24
UTC = timezone.utc


@pytest.fixture(scope="module")
def october_ledger():
    with tempfile.TemporaryDirectory() as directory:
        return load_ledger(ledger_file(Path(directory), "ledger.yaml", [
            gec_range(1, 500, "2026-10-01", "2026-11-01"),
            trading("GPT-2026-10-HB-17", 120000, "2026-10-01", "2026-11-01"),
        ]), "Asia/Shanghai")


def local(day: int, month: int = 10, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=SHANGHAI)


PRORATION = [
    # reporting period, share of October's 500 certificates (500,000 kWh) and 120,000 traded kWh
    ("first half of October", local(1), local(16), 15 / 31),
    ("all of October", local(1), local(1, month=11), 1.0),
    ("a quarter around October", local(1, month=9), local(1, month=12), 1.0),
    ("straddling the start", local(30, month=9), local(3), 2 / 31),
    ("November only", local(1, month=11), local(2, month=11), 0.0),
    ("September only", local(1, month=9), local(1), 0.0),
    ("one local hour", local(31, hour=23), local(1, month=11), 1 / OCTOBER_HOURS),
    ("UTC day Oct 31: local 08:00 to Nov 1 08:00",
     datetime(2026, 10, 31, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC), 16 / OCTOBER_HOURS),
    ("local first half given in UTC",
     datetime(2026, 9, 30, 16, tzinfo=UTC), datetime(2026, 10, 15, 16, tzinfo=UTC), 15 / 31),
]


@pytest.mark.parametrize("label, start, end, share", PRORATION, ids=[row[0] for row in PRORATION])
def test_claims_prorated_by_time_overlap(october_ledger, label, start, end, share):
    gec_kwh, traded_kwh = green_instruments_kwh(october_ledger, start, end)
    assert gec_kwh == pytest.approx(500_000 * share, abs=1e-6)
    assert traded_kwh == pytest.approx(120_000 * share, abs=1e-6)


def test_hand_computed_first_half_of_october(october_ledger):
    assert green_instruments_kwh(october_ledger, local(1), local(16)).gec_kwh == pytest.approx(500_000 * 15 / 31)


SPLIT_START, SPLIT_END = local(16, month=9), local(16, month=11)


@given(cut_minutes=st.integers(min_value=1, max_value=int((SPLIT_END - SPLIT_START).total_seconds()) // 60 - 1))
@settings(max_examples=200)
def test_splitting_a_reporting_period_splits_its_green_kwh(october_ledger, cut_minutes):
    start, end = SPLIT_START, SPLIT_END
    cut = start + timedelta(minutes=cut_minutes)
    whole = green_instruments_kwh(october_ledger, start, end)
    first, second = green_instruments_kwh(october_ledger, start, cut), green_instruments_kwh(october_ledger, cut, end)
    assert first.gec_kwh + second.gec_kwh == pytest.approx(whole.gec_kwh)
    assert first.traded_kwh + second.traded_kwh == pytest.approx(whole.traded_kwh)


@pytest.mark.parametrize("start, end, why", [
    (datetime(2026, 10, 1), datetime(2026, 10, 2), "time-zone aware"),
    (local(2), local(1), "must be after start"),
])
def test_bad_reporting_period_is_refused(october_ledger, start, end, why):
    with pytest.raises(ValueError, match=why):
        green_instruments_kwh(october_ledger, start, end)


# --- duplicate detection agrees with expanding every id ------------------------------------------------------------

certificate_run = st.one_of(
    st.tuples(st.sampled_from(["GEC-", "GEC-1", "G"]), st.integers(0, 40), st.integers(0, 10), st.just(2)),
    st.lists(st.sampled_from(["GEC-01", "GEC-1", "GEC-10", "GEC-100", "G001", "G01", "GEC", "GEC-"]),
             min_size=1, max_size=3, unique=True),
)


def expanded(run) -> set[str]:
    if isinstance(run, list):
        return set(run)
    prefix, first, count, digits = run
    return {f"{prefix}{number:0{digits}d}" for number in range(first, min(first + count, 99) + 1)}


def as_entry(run) -> dict:
    if isinstance(run, list):
        return gec_ids(run, "2026-10-01", "2026-11-01")
    prefix, first, count, digits = run
    return gec_range(first, min(first + count, 99), "2026-10-01", "2026-11-01", prefix=prefix, digits=digits)


@given(runs=st.lists(certificate_run, min_size=1, max_size=4))
@settings(max_examples=150, deadline=None)
def test_double_claims_found_exactly_when_expanded_ids_overlap(runs):
    ids = [expanded(run) for run in runs]
    overlapping = any(ids[i] & ids[j] for i in range(len(ids)) for j in range(i))
    with tempfile.TemporaryDirectory() as directory:
        path = ledger_file(Path(directory), "ledger.yaml", [as_entry(run) for run in runs])
        if overlapping:
            with pytest.raises(LedgerError, match="is also claimed in"):
                load_ledger(path, "Asia/Shanghai")
        else:
            assert len(load_ledger(path, "Asia/Shanghai").claims) == len(runs)
