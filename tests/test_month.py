"""A whole month for a small site, through the real Ingest -> EnergyBook -> Reporter path, against a table computed
by hand.

Site dc1 (Asia/Shanghai, grid region central, factor year 2023), November 2026 = [2026-10-31T16:00Z,
2026-11-30T16:00Z) = 30 days x 96 = 2880 bins of 15 minutes. Every sender samples every 5 minutes, one sample
per MQTT message (contract v1 bytes), each delivered 2 s after its sample (the collector's clock, now_ms, is a
parameter; delivering the whole month at month end would be refused as too-old, the limit being 8 days).

- IT: hall-a/r01 h01, h02 at 12 kW each, hall-a/r02 h03, h04 at 8 kW each (GPU servers): IT = 40 kW = 10 kWh/bin.
- Facility: 50 kW all month = 12.5 kWh/bin, so PUE = 50 / 40 = 1.25, and in every bin
  grid = 50 kW - PV - diesel (PV and diesel are behind the utility incomer).
- PV (onsite-generation, pv): 20 kW from 09:00 to 15:00 local, else 0: 120 kWh a day, 5 kWh per daytime bin.
- Diesel (onsite-generation, diesel): reports 0 all month except an on-load test run on 22 Nov 02:00-04:00 local
  at 50 kW, carrying the whole facility (grid 0): 8 bins, 100 kWh.
- Agent restart: h01's agent restarts on 8 Nov; last sample of the old session at 03:05 local, first of the new
  one (counter from 0) at 03:10. The 5 minutes between are not counted: 12 kW x 5 min = 1 kWh lost; bin 03:00
  has host coverage (4 - 1/3) / 4 = 11/12 = 0.9167 < 0.98: excluded from the PUE (1 bin).
- Missing rack: r02's agents are stopped on 15 Nov 09:00-12:00 local and start again with new sessions (a
  silence with an intact counter would lose nothing: the next point would carry the energy). 12 bins with host
  coverage 2/4 = 0.5: excluded from the PUE; 2 x 8 kW x 3 h = 48 kWh of IT energy unseen.
- Meter reset: the utility meter is replaced on 25 Nov, so its register starts again from 0 and the gateway
  starts a new session: last reading of the old session at 12:05 local, first of the new one at 12:10. Bin
  12:00 keeps 10 of its 15 minutes (2 x 5 min x 30 kW = 5 kWh, 2.5 kWh lost): coverage 2/3 < 0.999, not
  facility-complete (1 bin).
- Wrapped counter: the PV meter's lifetime register is a uint32 count of kJ, read through the gateway's own
  EnergyCounter (agent/gateway/poller.py), and starts the month 536 MJ below its maximum. It rolls over on
  2 Nov; the gateway unwraps it and the session goes on, so nothing is lost and the table below
  has no line for it. (The contract's counters never wrap on the wire: unwrapping is the sender's job.)
- Certificates: 20 GECs (20,000 kWh) for [2026-11-01, 2026-12-01), the site's ledger.

Hand-computed month (factors: central 2023 0.5271, national residual 2023 0.6096, diesel 0.762 kgCO2/kWh):

    facility-complete bins  2880 - 1 (reset)                             = 2879
    E_facility              2879 x 12.5                                  = 35,987.5 kWh
    PV                      30 x 120 - 5 (PV in the reset bin)           = 3,595 kWh
    diesel                                                                 100 kWh
    grid                    35,987.5 - 3,595 - 100                       = 32,292.5 kWh
    GEC share               20,000 x 2879 / 2880                         = 19,993.0555... kWh (< grid: all claimed)
    green                   3,595 + 19,993.0555...                       = 23,588.0555... kWh
    green ratio             23,588.0555... / 35,987.5                    = 0.65545...
    carbon location         32,292.5 x 0.5271 + 100 x 0.762              = 17,097.57675 kg
    carbon market           (32,292.5 - 19,993.0555...) x 0.6096 + 76.2  = 7,573.9413... kg
    complete bins           2879 - 1 (restart) - 12 (rack)               = 2866, coverage 2866 / 2880
    E_IT                    2866 x 10                                    = 28,660 kWh
    PUE (estimated)         2866 x 12.5 / 28,660                         = 1.25
    basis grid              32,292.5 - 12.5 (restart bin, night) - 12 x 7.5 (rack bins, PV on) = 32,190 kWh
    CUE location            (32,190 x 0.5271 + 76.2) / 28,660            = 0.594680...
    CUE market              ((32,190 - 20,000 x 2866 / 2880) x 0.6096 + 76.2) / 28,660 = 0.264008...
    host coverage           (2880 x 4 - 1/3 - 12 x 2) / (2880 x 4)      = 0.997887...
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.gateway.poller import CounterEvent, CounterStep, EnergyCounter
from agent.gateway.registers import RegisterSpec
from collector.book import EnergyBook
from collector.ingest import Ingest
from collector.ledger import load_site_ledgers
from collector.metrics import PueCategory
from collector.report import Reporter, site_factors
from collector.site import SiteIndex, load_site_config
from common.contract import Component, EnergySource, Method, MeterRole, Reading, Sample, SampleBatch, encode
from tests.site_stream import Device, sample

REL = 1e-9
MIN_MS = 60_000
STEP_MS = 5 * MIN_MS
BIN_MS = 15 * MIN_MS
HOUR_MS = 60 * MIN_MS
DAY_MS = 24 * HOUR_MS
SHANGHAI = ZoneInfo("Asia/Shanghai")
DELIVERY_DELAY_MS = 2_000


def local(text: str) -> int:
    """Epoch ms of a wall-clock time in Shanghai (UTC+8 all year)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp() * 1000)


MONTH_START = local("2026-11-01T00:00")
MONTH_END = local("2026-12-01T00:00")
BINS_IN_MONTH = 30 * 96  # 2880

FACILITY_W = 50_000.0
PV_W = 20_000.0
DIESEL_W = 50_000.0
RESTART_LAST = local("2026-11-08T03:05")  # h01: last sample of the old session; the new one starts 5 min later
RACK_DOWN, RACK_UP = local("2026-11-15T09:00"), local("2026-11-15T12:00")  # r02's agents stopped
DIESEL_ON, DIESEL_OFF = local("2026-11-22T02:00"), local("2026-11-22T04:00")
RESET_LAST = local("2026-11-25T12:05")  # utility meter: last reading before it was replaced
PV_REGISTER = RegisterSpec(address=0, data_type="uint32", scale=1 / 3600)  # kJ (in kWh): every step a whole number
PV_REGISTER_START = 2**32 - 536_000  # kJ when the month begins: it wraps after 536 MJ, on 2 Nov (432 MJ a day)

SITE_YAML = """
sites:
  - id: dc1
    name: "Month test site"
    timezone: Asia/Shanghai
    grid_region: central
    grid_factor_year: 2023
    certificates: ledger.yaml
    rooms:
      - id: hall-a
        racks:
          - {id: r01, hosts: [h01, h02]}
          - {id: r02, hosts: [h03, h04]}
    meters:
      - {id: utility-1, role: facility-input, source: grid}
      - {id: pv-1, role: onsite-generation, source: pv}
      - {id: diesel-1, role: onsite-generation, source: diesel}
"""

LEDGER_YAML = """
site: dc1
entries:
  - kind: gec
    id_range: {prefix: "GEC-2026-", first: 1, last: 20, digits: 6}
    kwh: 20000
    period: {start: 2026-11-01, end: 2026-12-01}
"""

H01 = Device("hall-a", "r01", "h01", "host", 12_000.0)
H02 = Device("hall-a", "r01", "h02", "host", 12_000.0)
H03 = Device("hall-a", "r02", "h03", "host", 8_000.0)
H04 = Device("hall-a", "r02", "h04", "host", 8_000.0)
UTILITY = Device("facility", "main", "utility-1", "meter", 0.0, MeterRole.FACILITY_INPUT, EnergySource.GRID)
PV = Device("facility", "main", "pv-1", "meter", 0.0, MeterRole.ONSITE_GENERATION, EnergySource.PV)
DIESEL = Device("facility", "main", "diesel-1", "meter", 0.0, MeterRole.ONSITE_GENERATION, EnergySource.DIESEL)

Session = tuple[str, int, int]  # (session id, first sample ms, last sample ms)


class RecordingCounter(EnergyCounter):
    """The gateway's register counter, remembering what each read was (advance, rollover, reset...)."""

    def __init__(self, spec: RegisterSpec):
        super().__init__(spec)
        self.events: list[CounterEvent] = []

    def update(self, raw: int | float) -> CounterStep:
        step = super().update(raw)
        self.events.append(step.event)
        return step
Message = tuple[int, str, bytes]  # (delivery ms, topic, payload)


# --- power curves: the power over the 5-minute interval starting at t ------------------------------------------

def pv_w(t: int) -> float:
    local_hour = (t + 8 * HOUR_MS) % DAY_MS // HOUR_MS
    return PV_W if 9 <= local_hour < 15 else 0.0


def diesel_w(t: int) -> float:
    return DIESEL_W if DIESEL_ON <= t < DIESEL_OFF else 0.0


def grid_w(t: int) -> float:
    return FACILITY_W - pv_w(t) - diesel_w(t)


# --- contract messages ------------------------------------------------------------------------------------------

def one_session(name: str) -> list[Session]:
    return [(f"{name}-month-1", MONTH_START, MONTH_END)]


def broken_session(name: str, last_old: int, first_new: int) -> list[Session]:
    """A restart: the old session's last sample, then a new session whose counter starts again from 0."""
    return [(f"{name}-before-1", MONTH_START, last_old), (f"{name}-after-2", first_new, MONTH_END)]


def host_messages(device: Device, sessions: list[Session]) -> list[Message]:
    """Constant power (tests/site_stream.sample: energy = watts x time since the session began)."""
    out = []
    for session, first, last in sessions:
        for seq, ts in enumerate(range(first, last + 1, STEP_MS)):
            batch = SampleBatch(kind="host", session=session, samples=[sample(device, seq, ts, first, STEP_MS)])
            out.append((ts + DELIVERY_DELAY_MS, device.topic(), encode(batch)))
    return out


def meter_messages(device: Device, sessions: list[Session], power_w: Callable[[int], float],
                   register: EnergyCounter | None = None) -> list[Message]:
    """A meter gateway's cumulative register, in joules since its session began, for a piecewise power curve.
    With `register`, the energy goes through a kJ register (PV_REGISTER from PV_REGISTER_START), read by it."""
    out = []
    for session, first, last in sessions:
        energy_j = 0.0
        for seq, ts in enumerate(range(first, last + 1, STEP_MS)):
            watts = power_w(ts - STEP_MS)
            if seq:
                energy_j += watts * STEP_MS / 1000
            if register is not None:  # every step's energy is a whole number of kJ
                raw = (PV_REGISTER_START + round(energy_j / 1000)) % (PV_REGISTER.max_raw + 1)
                sent_j = register.update(raw).energy_j
            else:
                sent_j = energy_j
            reading = Reading(component=Component.METER, id="main", method=Method.METER, power_w=watts,
                              energy_j=sent_j, role=device.role, source=device.source)
            batch = SampleBatch(kind="meter", session=session,
                                samples=[Sample(seq=seq, ts_ms=ts, interval_s=STEP_MS / 1000, readings=[reading])])
            out.append((ts + DELIVERY_DELAY_MS, device.topic(), encode(batch)))
    return out


def month_of_messages(pv_register: EnergyCounter) -> list[Message]:
    messages = (
        host_messages(H01, broken_session("h01", RESTART_LAST, RESTART_LAST + STEP_MS))
        + host_messages(H02, one_session("h02"))
        + host_messages(H03, broken_session("h03", RACK_DOWN, RACK_UP))
        + host_messages(H04, broken_session("h04", RACK_DOWN, RACK_UP))
        + meter_messages(UTILITY, broken_session("utility", RESET_LAST, RESET_LAST + STEP_MS), grid_w)
        + meter_messages(PV, one_session("pv"), pv_w, pv_register)
        + meter_messages(DIESEL, one_session("diesel"), diesel_w)
    )
    return sorted(messages, key=lambda m: m[0])  # as they arrive: interleaved in time


# --- checks of one bin ------------------------------------------------------------------------------------------

def bin_metrics(reporter: Reporter, start: int):
    (m,) = reporter.metrics("dc1", [("15m", start, start + BIN_MS)])
    return m


GEC_PER_BIN = 20_000 / BINS_IN_MONTH  # the ledger's 20,000 kWh spread evenly over the month's 2880 bins


def check_rack_bin(reporter: Reporter) -> None:
    """15 Nov 10:30: r02 silent, r01 2 x 12 kW; facility 12.5 kWh of which PV 5, grid 7.5."""
    m = bin_metrics(reporter, local("2026-11-15T10:30"))
    assert m.pue is None and m.cue_location is None and m.cue_market is None and m.e_it_kwh is None
    assert m.pue_status == "it-coverage-low 0.50 < 0.98"
    assert m.pue_category is PueCategory.ESTIMATED and m.bins_complete == 0
    assert m.host_coverage == pytest.approx(2 / 4, rel=REL)
    assert m.e_facility_kwh == pytest.approx(12.5, rel=REL)
    # GEC share 20,000 / 2880 = 6.944 kWh < grid 7.5 kWh: all claimed; green = 5 + 6.944 = 11.944 kWh
    assert m.green_kwh == pytest.approx(5 + GEC_PER_BIN, rel=REL)
    assert m.green_ratio == pytest.approx((5 + GEC_PER_BIN) / 12.5, rel=REL)
    assert m.green_unclaimed_kwh == pytest.approx(0.0, abs=1e-9)
    assert m.carbon_location_kg == pytest.approx(7.5 * 0.5271, rel=REL)
    assert m.carbon_market_kg == pytest.approx((7.5 - GEC_PER_BIN) * 0.6096, rel=REL)
    # r01 only: 2 x 12 kW x 0.25 h = 6 kWh counted of the 10 kWh drawn
    assert reporter.book.site_bin("dc1", local("2026-11-15T10:30")).host_server_input_kwh == pytest.approx(6.0, rel=REL)


def check_diesel_bin(reporter: Reporter) -> None:
    """22 Nov 02:30: the generator carries the whole facility, the grid delivers nothing."""
    m = bin_metrics(reporter, local("2026-11-22T02:30"))
    assert m.facility.e_diesel_kwh == pytest.approx(12.5, rel=REL)  # 50 kW x 0.25 h
    assert m.facility.e_grid_delivered_kwh == 0.0 and m.facility.e_pv_kwh == 0.0
    assert m.e_facility_kwh == pytest.approx(12.5, rel=REL)
    assert m.e_it_kwh == pytest.approx(10.0, rel=REL)
    assert m.pue == pytest.approx(1.25, rel=REL) and m.pue_status == "ok"
    # certificates count only against grid energy: none here, so the bin's share is unclaimed and nothing is green
    assert m.green_kwh == 0.0 and m.green_ratio == 0.0
    assert m.green_unclaimed_kwh == pytest.approx(GEC_PER_BIN, rel=REL)
    # 12.5 kWh x 0.762 = 9.525 kg both ways; CUE = 9.525 / 10 kWh
    assert m.carbon_location_kg == pytest.approx(9.525, rel=REL)
    assert m.carbon_market_kg == pytest.approx(9.525, rel=REL)
    assert m.cue_location == pytest.approx(0.9525, rel=REL)
    assert m.cue_market == pytest.approx(0.9525, rel=REL)


def check_restart_bin(reporter: Reporter) -> None:
    """8 Nov 03:00: h01's 03:05-03:10 not counted: 12 kW x 5 min = 1 kWh lost, coverage 11/12."""
    start = local("2026-11-08T03:00")
    b = reporter.book.site_bin("dc1", start)
    assert b.host_server_input_kwh == pytest.approx(10.0 - 1.0, rel=REL)
    assert b.host_coverage_sum == pytest.approx(4 - 1 / 3, rel=REL)
    m = bin_metrics(reporter, start)
    assert m.pue is None and m.pue_status == "it-coverage-low 0.91 < 0.98"  # 0.9167 rounded down
    assert m.e_facility_kwh == pytest.approx(12.5, rel=REL)


def check_reset_bin(reporter: Reporter) -> None:
    """25 Nov 12:00: the utility meter's 12:05-12:10 not counted: 30 kW x 5 min = 2.5 kWh lost, coverage 2/3."""
    start = local("2026-11-25T12:00")
    b = reporter.book.site_bin("dc1", start)
    assert b.meter_coverage["utility-1"].fraction == pytest.approx(2 / 3, rel=REL)
    assert b.energy_kwh[(MeterRole.FACILITY_INPUT, EnergySource.GRID)] == pytest.approx(7.5 - 2.5, rel=REL)
    m = bin_metrics(reporter, start)
    assert m.bins_facility_complete == 0 and m.e_facility_kwh is None
    assert m.pue is None and m.pue_status == "no-facility-data"


# --- the month --------------------------------------------------------------------------------------------------

def test_november_with_pv_diesel_certificates_restart_reset_wrap_and_missing_rack(tmp_path: Path):
    (tmp_path / "ledger.yaml").write_text(LEDGER_YAML)
    (tmp_path / "site.yaml").write_text(SITE_YAML)
    config = load_site_config(tmp_path / "site.yaml")
    index = SiteIndex(config)
    book = EnergyBook(index)
    ingest = Ingest(index, book, "dcem")
    reporter = Reporter(index, book, load_site_ledgers(config), {"dc1": site_factors(config.sites[0])})

    pv_register = RecordingCounter(PV_REGISTER)
    messages = month_of_messages(pv_register)
    assert pv_register.events.count(CounterEvent.ROLLOVER) == 1 and CounterEvent.RESET not in pv_register.events
    began = time.perf_counter()
    refused = [(topic, r) for now_ms, topic, payload in messages if (r := ingest.handle(topic, payload, now_ms))]
    ingest_s = time.perf_counter() - began
    assert refused == []
    # 30 x 288 + 1 = 8641 samples a month per sender (both ends included); a restart keeps every sample time (the
    # gap is the interval between two sessions), but h03 and h04 send none of the 35 from 09:05 to 11:55
    assert ingest.outcomes["messages"] == len(messages) == 7 * 8641 - 2 * 35
    assert ingest.outcomes["new"] == len(messages)
    assert ingest_s < 30

    (m,) = reporter.metrics("dc1", [("mtd", MONTH_START, MONTH_END)])
    f = site_factors(config.sites[0])
    assert (f.grid.value_kg_per_kwh, f.grid.year, f.residual.value_kg_per_kwh, f.diesel.value_kg_per_kwh) == (
        0.5271, 2023, 0.6096, 0.762)

    # facility energy, green and carbon: the 2879 facility-complete bins (all but the reset bin)
    facility_bins = BINS_IN_MONTH - 1
    e_facility = facility_bins * 12.5  # 35,987.5 kWh
    pv = 30 * 120 - 5  # 3,595 kWh: 6 h x 20 kW a day, less the reset bin's 5 kWh (the PV wrap loses nothing)
    diesel = 100.0  # 2 h x 50 kW
    grid = e_facility - pv - diesel  # 32,292.5 kWh = 36,000 - 3,600 - 100 - 7.5 (reset bin's grid)
    gec = 20_000 * facility_bins / BINS_IN_MONTH  # 19,993.06 kWh, below the grid energy: all claimed
    assert m.bins_total == BINS_IN_MONTH
    assert m.bins_facility_complete == facility_bins
    assert m.facility_coverage == pytest.approx(facility_bins / BINS_IN_MONTH, rel=REL)
    assert m.e_facility_kwh == pytest.approx(35_987.5, rel=REL)
    assert m.facility.e_grid_delivered_kwh == pytest.approx(32_292.5, rel=REL)
    assert m.facility.e_pv_kwh == pytest.approx(3_595.0, rel=REL)
    assert m.facility.e_diesel_kwh == pytest.approx(diesel, rel=REL)
    assert m.facility.ledger_gec_kwh == pytest.approx(gec, rel=REL)
    assert m.green_kwh == pytest.approx(pv + gec, rel=REL)
    assert m.green_unclaimed_kwh == pytest.approx(0.0, abs=1e-9)
    assert m.green_ratio == pytest.approx((pv + gec) / e_facility, rel=REL)  # 0.65545
    assert m.green_ratio_metered == pytest.approx(pv / e_facility, rel=REL)  # 0.09989
    assert m.green_ratio_onsite == pytest.approx(pv / e_facility, rel=REL)
    assert m.green_status == "ok"
    assert m.carbon_location_kg == pytest.approx(grid * 0.5271 + diesel * 0.762, rel=REL)  # 17,097.58 kg
    assert m.carbon_market_kg == pytest.approx((grid - gec) * 0.6096 + diesel * 0.762, rel=REL)  # 7,573.94 kg

    # PUE and CUE: the 2866 complete bins (less the restart bin and the 12 missing-rack bins)
    complete = facility_bins - 1 - 12
    e_it = complete * 10.0  # 28,660 kWh
    basis_grid = grid - 12.5 - 12 * 7.5  # 32,190 kWh: restart bin at night, rack bins with PV on
    basis_gec = 20_000 * complete / BINS_IN_MONTH  # 19,902.78 kWh
    assert m.pue_category is PueCategory.ESTIMATED
    assert m.bins_complete == 2866
    assert m.coverage == pytest.approx(2866 / 2880, rel=REL)
    assert m.e_it_kwh == pytest.approx(28_660.0, rel=REL)
    assert m.pue_basis.e_facility_kwh == pytest.approx(complete * 12.5, rel=REL)  # 35,825 kWh
    assert m.pue_basis.e_grid_delivered_kwh == pytest.approx(32_190.0, rel=REL)
    assert m.pue == pytest.approx(1.25, rel=REL) and m.pue_status == "ok"
    assert m.cue_location == pytest.approx((basis_grid * 0.5271 + diesel * 0.762) / e_it, rel=REL)  # 0.59468
    assert m.cue_market == pytest.approx(((basis_grid - basis_gec) * 0.6096 + diesel * 0.762) / e_it,
                                  rel=REL)  # 0.26401
    assert m.ppue_cooling is None and m.ppue_bins == 0

    # over every bin received: 4 hosts x 2880 bins, less 1/3 (restart) and 2 hosts x 12 bins (rack)
    assert m.host_coverage == pytest.approx((4 * 2880 - 1 / 3 - 24) / (4 * 2880), rel=REL)
    assert m.cpu_util == pytest.approx(0.5, rel=REL)

    check_rack_bin(reporter)
    check_diesel_bin(reporter)
    check_restart_bin(reporter)
    check_reset_bin(reporter)
