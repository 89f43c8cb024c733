"""The collector process: MQTT in, accounting, InfluxDB out, acknowledging only what is durably handled.

One thread reads, accounts and acknowledges, driving paho's network loop itself (loop_read / loop_write /
loop_misc); a second one writes to InfluxDB. Messages are taken in batches; a batch is flushed when it is
full or `flush_interval_s` has passed: its lines go to the output spool on disk, the accounting state is
saved, and only then are its messages acknowledged (PUBACK). The writer thread sends the spooled lines to
InfluxDB in order, and keeps them while InfluxDB is down, so the database works on the other core while
the next batch is read. A collector killed at any point is sent the unacknowledged messages again
by the broker (persistent session), and the saved state recognises those it had already counted.
"""

from __future__ import annotations

import gc
import json
import logging
import select
import threading
import time
from collections import Counter
from collections.abc import Iterable

import paho.mqtt.client as paho

from collector.accounting import BIN_MS
from collector.alerting import Alerting, alert_line, alert_message, log_fields
from collector.book import EnergyBook
from collector.config import CollectorConfig
from collector.ingest import Ingest, Limits, Rejection
from collector.ledger import load_site_ledgers
from collector.lineproto import line
from collector.output import SpooledOutput
from collector.report import Reporter, site_factors
from collector.rules import SHIPPED_RULES, load_profiles, rules_for_sites
from collector.site import SiteConfigError, SiteIndex, load_site_config
from collector.state import StateStore
from collector.writers import make_writer
from common.contract import SAMPLES_CHANNEL, STATUS_CHANNEL, subscription
from common.logs import event
from common.mqtt import connect, make_client
from common.spool import Spool

log = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 600.0
DAY_MS = 86_400_000
SITE_BINS_KEPT_MS = 400 * DAY_MS  # the trailing-12-month figure needs a year of site bins
RECONNECT_MAX_S = 30.0
_PUBACK_HEADER = bytes((paho.PUBACK, 2))
RECEIVE_MAXIMUM = 65_535  # unacknowledged messages the broker may send: acks come only after each flush
GC_YOUNG_THRESHOLD = 50_000  # allocations between collections of the youngest generation (Python's default: 700)
GC_FULL_INTERVAL_S = 3600.0  # a full collection, frozen objects included (see _settle_heap)
BATCHES_PER_LOOP = 5  # output batches one loop writes at most: its flush, held rack lines, site metrics, alerts, stats


class BufferedClient(paho.Client):
    """paho's client with two shortcuts for a high message rate, falling back to paho for anything else.

    - Reads: paho reads every packet with two or more small recv() calls, one packet per `loop_read`; here the
      socket is read 256 KiB at a time, and `loop_read(n)` handles up to n whole QoS 1 PUBLISH packets already
      read ahead in one loop.
    - QoS 1 PUBLISH without MQTT 5 properties (what brokers send the collector): decoded here and handed to
      `on_samples(topic, payload, mid, retained)` without building paho's Properties and MQTTMessage
      objects or matching per-topic callbacks. Acknowledging is left to the caller (manual acks, `ack_all`).
    Any other packet, or one only partly read, goes through paho's own code.
    paho-mqtt 2.x only (the version pinned in pyproject.toml); tests run the collector against a real broker.
    """

    _read_ahead = b""
    _read_at = 0
    on_samples = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_at >= len(self._read_ahead):
            self._read_ahead, self._read_at = super()._sock_recv(262_144), 0
        start = self._read_at
        self._read_at = start + bufsize
        return self._read_ahead[start:self._read_at]

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        """Handle up to max_packets whole QoS 1 PUBLISH packets from the read-ahead buffer; when there are none,
        paho reads one packet (refilling the buffer from the socket)."""
        if (self._sock is not None and self.on_samples is not None and self._manual_ack
                and self._in_packet["command"] == 0 and self._publish_burst(max_packets)):
            with self._msgtime_mutex:
                self._last_bytes_received = paho.time_func()  # what paho's keepalive check reads
            return paho.MQTT_ERR_SUCCESS
        return super().loop_read(max_packets)

    def ack_all(self, mids: Iterable[int]) -> paho.MQTTErrorCode:
        """PUBACK these QoS 1 messages in one write instead of one send() each: a single entry in paho's output
        queue holding every PUBACK (reason 0 and no properties: 4 bytes each, in MQTT 3.1.1 and 5 alike)."""
        packet = b"".join(_PUBACK_HEADER + mid.to_bytes(2, "big") for mid in mids)
        if not packet:
            return paho.MQTT_ERR_SUCCESS
        return self._packet_queue(paho.PUBACK, packet, 0, 0)

    def has_buffered_input(self) -> bool:
        return self._read_at < len(self._read_ahead)

    def _reset_sockets(self, *args, **kwargs) -> None:
        self._read_ahead, self._read_at = b"", 0
        super()._reset_sockets(*args, **kwargs)

    def _publish_burst(self, limit: int) -> int:
        """Handle the whole QoS 1 PUBLISH packets at the head of the read-ahead buffer, up to limit; stop at the
        first other or partial packet (left for paho). Returns how many were handled."""
        buffer, end, handled = self._read_ahead, len(self._read_ahead), 0
        while handled < limit:
            at = self._read_at
            if at + 2 > end or (buffer[at] & 0xF6) != 0x32:  # PUBLISH, QoS 1 (DUP and RETAIN bits either way)
                break
            length, shift, body = 0, 0, at + 1
            while body < end and body - at <= 4:  # the remaining length: 1 to 4 bytes of 7 bits
                byte = buffer[body]
                body += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                break
            if body + length > end or not self._deliver(buffer[at], buffer, body, body + length):
                break
            self._read_at = body + length
            handled += 1
        return handled

    def _deliver(self, header: int, buffer: bytes, start: int, end: int) -> bool:
        """Hand the QoS 1 PUBLISH whose variable header and payload are buffer[start:end] to on_samples; False
        (nothing done) for one with MQTT 5 properties or a topic that is not UTF-8, which paho then handles."""
        if end - start < 2:
            return False
        topic_end = start + 2 + (buffer[start] << 8 | buffer[start + 1])
        mqtt5 = self._protocol == paho.MQTTv5
        payload_start = topic_end + (3 if mqtt5 else 2)
        if payload_start > end or (mqtt5 and buffer[topic_end + 2]):
            return False
        try:
            topic = buffer[start + 2:topic_end].decode()
        except UnicodeDecodeError:
            return False
        self.on_samples(topic, buffer[payload_start:end], buffer[topic_end] << 8 | buffer[topic_end + 1],
                        bool(header & 0x01))
        return True

    def _handle_publish(self) -> paho.MQTTErrorCode:
        header, packet = self._in_packet["command"], self._in_packet["packet"]
        if self.on_samples is None or (header & 0x06) != 0x02 or not self._manual_ack \
                or not self._deliver(header, bytes(packet), 0, len(packet)):
            return super()._handle_publish()
        return paho.MQTT_ERR_SUCCESS


class Collector:
    def __init__(self, config: CollectorConfig):
        self.config = config
        site_config = load_site_config(config.site_config)
        self.index = SiteIndex(site_config)
        unknown = [site for site in config.ingest.sites or [] if self.index.site(site) is None]
        if unknown:
            raise SiteConfigError(f"ingest.sites names {', '.join(unknown)}, not in {config.site_config}")
        self.book = EnergyBook(self.index, config.state.keep_points)
        folder = config.state.folder
        self.store = StateStore(folder / "state.db")
        restored = self.store.load_into(self.book)
        self.ingest = Ingest(self.index, self.book, config.mqtt.topic_root,
                             Limits(**config.limits.model_dump()), int(config.ingest.raw_resolution_s * 1000))
        self.reporter = Reporter(self.index, self.book, load_site_ledgers(site_config),
                                 {site.id: site_factors(site) for site in site_config.sites}, config.ingest.sites)
        profiles = load_profiles(config.rules.folder or SHIPPED_RULES)
        chosen = {site.id: site.rules for site in self.reporter.sites}
        self.alerting = Alerting(rules_for_sites(profiles, chosen, str(config.site_config)), self.index, self.book,
                                 self.reporter, folder / "alerts.json")
        self.output = SpooledOutput(make_writer(config.influx),
                                    Spool(folder / "output-spool.db", config.state.output_spool_max_batches),
                                    rejected=Spool(folder / "output-rejected.db", config.state.output_spool_max_batches))
        self._recompute_restored_bins(_now_ms())
        self.client = self._make_client()
        self.pending: list[tuple[str, bytes, int, int, bool]] = []
        self.stats: Counter[str] = Counter()
        self.connected = threading.Event()
        self._dead_letters_this_second = 0
        self._dead_letter_second = 0
        self._last_logged: dict[str, float] = {}
        event(log, logging.INFO, "collector-started", sites=len(self.index.sites), state=str(folder),
              restored_points=restored[0], restored_accumulators=restored[1], influx=self.output.target)

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then flush what was received and disconnect."""
        _settle_heap()
        ingest = self.config.ingest
        connect(self.client, self.config.mqtt, persistent_session=True, session_expiry_s=ingest.session_expiry_s,
                receive_maximum=RECEIVE_MAXIMUM)
        drainer_stop = threading.Event()
        drainer = threading.Thread(target=self.output.run_drainer, args=(drainer_stop,), name="influx-writer",
                                   daemon=True)
        drainer.start()
        self._reconnect()
        backoff = 1.0
        batch_started = time.monotonic()
        next_metrics = next_stats = time.monotonic()
        next_prune = time.monotonic() + PRUNE_INTERVAL_S
        next_full_collection = time.monotonic() + GC_FULL_INTERVAL_S
        while not stop.is_set():
            if not self._pump_network(batch_started):
                stop.wait(backoff)
                backoff = min(RECONNECT_MAX_S, backoff * 2)
                self._reconnect()
                continue
            backoff = 1.0
            now = time.monotonic()
            if self.output.free_batches < BATCHES_PER_LOOP:  # room for all this loop may write, or no intake
                self._log_limited("output-spool-full", logging.ERROR, backlog_batches=self.output.backlog_batches,
                                  target=self.output.target,
                                  action="InfluxDB has been unreachable for long: messages are no longer "
                                         "acknowledged and wait at the broker; bring InfluxDB back or enlarge "
                                         "state.output_spool_max_batches")
                stop.wait(0.5)
                continue
            if self.pending and (len(self.pending) >= ingest.max_batch or now - batch_started >= ingest.flush_interval_s):
                self.flush()
                batch_started = time.monotonic()
            elif not self.pending:
                batch_started = now
            if now >= next_metrics:
                self.write_held_lines()
                self.output.enqueue(self.reporter.site_lines(_now_ms()))
                self.evaluate_rules(_now_ms())
                next_metrics = now + self.config.report.metrics_interval_s
            if now >= next_stats:
                self.output.enqueue([self._stats_line()])
                next_stats = now + self.config.report.stats_interval_s
            if now >= next_prune:
                self.prune(_now_ms())
                next_prune = now + PRUNE_INTERVAL_S
            if now >= next_full_collection:
                _collect_everything()
                next_full_collection = now + GC_FULL_INTERVAL_S
        drainer_stop.set()
        drainer.join()
        self.shutdown()

    def flush(self) -> None:
        """Account the pending messages, make the result durable, then acknowledge them.

        Called only while the output spool has room for a loop's batches (the run loop waits otherwise), so
        the batch's lines, and the batches written after it in the same loop, always find a place in it."""
        batch, self.pending = self.pending, []
        now_ms = _now_ms()
        for topic, payload, _mid, _qos, retained in batch:
            try:
                rejection = self.ingest.handle(topic, payload, now_ms, retained)
            except Exception as exc:  # one message must never stop the collector (it would come back forever)
                log.debug("message-not-handled", exc_info=True)
                self._log_limited("message-not-handled", logging.ERROR, topic=topic, error=repr(exc)[:300],
                                  action="report this with the dead-lettered payload: the collector could not "
                                         "handle a message the contract accepts")
                rejection = Rejection("internal-error", f"{type(exc).__name__}: {exc}")
                self.ingest.rejected["internal-error"] += 1
            if rejection:
                self._dead_letter(topic, payload, rejection)
        changed = self.book.take_dirty()
        # behind (a full batch, more already read): rack and meter lines at most once per metrics interval,
        # the held ones saved as unwritten; the next flush that is not behind writes them all
        behind = len(batch) >= self.config.ingest.max_batch and self.client.has_buffered_input()
        lines = self.ingest.take_lines() + self.reporter.accumulator_lines(
            changed, time.monotonic(), self.config.report.metrics_interval_s if behind else 0.0)
        if not self.output.enqueue(lines):
            raise RuntimeError("the output spool did not take the batch; not acknowledging it")
        self.store.save(self.book.take_new_points(), changed, lines_written=not self.reporter.holding,
                        book=self.book)
        self.client.ack_all(mid for _topic, _payload, mid, qos, _retained in batch if qos == 1)
        self.stats["messages"] += len(batch)
        self.stats["flushes"] += 1
        gc.freeze()  # what outlives a flush lives long (points, streams, accumulators): out of the collector's walks

    def write_held_lines(self) -> None:
        """Write the rack, room and meter lines a flush held back while behind, then mark them written in the state
        (a collector that caught up, went idle or is stopping does not keep them for the next message). Lines the
        spool refuses stay held, in memory and in the state."""
        if not self.reporter.holding:
            return
        held = set(self.book.unwritten)
        if self.output.enqueue(self.reporter.accumulator_lines({})):
            self.store.save([], {}, lines_written=True)
        else:
            self.book.unwritten |= held

    def evaluate_rules(self, now_ms: int) -> None:
        """Evaluate the sites' rules; store and publish (retained, QoS 1) every alert event."""
        events = self.alerting.evaluate(now_ms, self.ingest.devices)
        if not events:
            return
        self.output.enqueue([alert_line(e) for e in events])
        for alert in events:
            self.stats[f"alerts_{alert.state}"] += 1
            fields = {key: value for key, value in log_fields(alert).items() if value is not None}
            event(log, logging.WARNING if alert.active else logging.INFO, f"alert-{alert.state}", **fields)
            topic, payload = alert_message(alert, self.config.mqtt.topic_root)
            self.client.publish(topic, payload, qos=1, retain=True)

    def _recompute_restored_bins(self, now_ms: int) -> None:
        """A collector stopped between saving a bin and writing its metrics would leave them stale: recompute
        the metrics of every bin a message could still change."""
        since = now_ms - int(self.config.limits.max_age_s * 1000) - DAY_MS
        for site in self.reporter.sites:
            self.reporter.touch(site.id, self.book.site_bin_starts(site.id, since, now_ms + BIN_MS))

    def prune(self, now_ms: int) -> None:
        """Forget, in memory and on disk, what no message the collector still accepts can change."""
        oldest_accepted = now_ms - int(self.config.limits.max_age_s * 1000)
        sessions_before = rack_bins_before = oldest_accepted - DAY_MS
        site_bins_before = now_ms - SITE_BINS_KEPT_MS
        dropped = self.book.forget(sessions_before, rack_bins_before, site_bins_before)
        self.reporter.forget_before(min(rack_bins_before, site_bins_before))
        deleted = self.store.prune(rack_bins_before, site_bins_before)
        event(log, logging.DEBUG, "state-pruned", memory_entries=dropped, rows=deleted)

    def shutdown(self) -> None:
        if self.output.free_batches >= BATCHES_PER_LOOP:  # else all of it waits for the next start (see run)
            if self.pending:
                self.flush()
            self.write_held_lines()
            self.output.enqueue(self.reporter.site_lines(_now_ms()))
            self.evaluate_rules(_now_ms())
        self.output.drain(max_batches=1000)
        self._pump_network(time.monotonic())
        self.client.disconnect()
        event(log, logging.INFO, "collector-stopped", messages=self.stats["messages"],
              backlog_batches=self.output.stats().backlog_batches)
        self.store.close()
        self.output.close()

    def _make_client(self) -> BufferedClient:
        mqtt, ingest = self.config.mqtt, self.config.ingest
        client = make_client(mqtt, ingest.client_id, persistent_session=True, client_class=BufferedClient)
        client.manual_ack_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_samples = self._on_samples
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._log_limited("mqtt-connect-refused", logging.ERROR, reason=str(reason_code),
                              action="check mqtt.username, mqtt.password and mqtt.tls against the broker")
            return
        root = self.config.mqtt.topic_root
        sites = self.config.ingest.sites or ["+"]
        topics = [subscription(channel, root, site) for site in sites for channel in (SAMPLES_CHANNEL, STATUS_CHANNEL)]
        client.subscribe([(topic, 1) for topic in topics])
        event(log, logging.INFO, "mqtt-connected", session_present=bool(flags.session_present))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            event(log, logging.ERROR, "mqtt-subscribe-refused", reasons=",".join(refused),
                  action="give the collector's user read access to the agents' topics in the broker ACL")
            return
        self.connected.set()
        event(log, logging.INFO, "mqtt-subscribed", topics=len(reason_codes))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.pending.clear()  # unacknowledged: the broker sends them again on the next connection
        if reason_code == 0:  # we asked for it
            return
        self._log_limited("mqtt-disconnected", logging.WARNING, reason=str(reason_code),
                          action="none: the broker keeps this collector's session and queues messages meanwhile")

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        self.pending.append((message.topic, message.payload, message.mid, message.qos, message.retain))

    def _on_samples(self, topic: str, payload: bytes, mid: int, retained: bool) -> None:
        self.pending.append((topic, payload, mid, 1, retained))

    def _pump_network(self, batch_started: float) -> bool:
        """One round of network I/O; False when the connection is down."""
        sock = self.client.socket()
        if sock is None:
            return False
        max_batch = self.config.ingest.max_batch
        # messages already read ahead wait in the client's buffer, not in the socket: select() would not see them
        buffered = self.client.has_buffered_input()
        if buffered or len(self.pending) >= max_batch:
            wait = 0.0
        elif self.pending:
            wait = max(0.0, self.config.ingest.flush_interval_s - (time.monotonic() - batch_started))
        else:
            wait = 0.1
        readable, _, _ = select.select([sock], [sock] if self.client.want_write() else [], [], wait)
        if (readable or buffered) and len(self.pending) < max_batch:
            code = self.client.loop_read(max_batch - len(self.pending))
            while code == paho.MQTT_ERR_SUCCESS and self.client.has_buffered_input() and len(self.pending) < max_batch:
                code = self.client.loop_read(max_batch - len(self.pending))
            if code != paho.MQTT_ERR_SUCCESS:
                return False
        if self.client.want_write() and self.client.loop_write() != paho.MQTT_ERR_SUCCESS:
            return False
        return self.client.loop_misc() == paho.MQTT_ERR_SUCCESS

    def _reconnect(self) -> None:
        try:
            self.client.reconnect()
        except OSError as exc:
            self._log_limited("mqtt-unreachable", logging.WARNING, error=str(exc),
                              broker=f"{self.config.mqtt.host}:{self.config.mqtt.port}",
                              action="check that the broker runs; retrying with backoff")

    def _dead_letter(self, topic: str, payload: bytes, rejection: Rejection) -> None:
        self._log_limited(f"rejected:{rejection.reason}", logging.WARNING, reason=rejection.reason,
                          detail=rejection.detail[:200], topic=topic, event_name="message-rejected",
                          action="fix the sender; the message went to the dead-letter topic")
        second = int(time.monotonic())
        if second != self._dead_letter_second:
            self._dead_letter_second, self._dead_letters_this_second = second, 0
        if self._dead_letters_this_second >= self.config.ingest.dead_letter_per_s:
            self.stats["dead_letters_dropped"] += 1
            return
        self._dead_letters_this_second += 1
        body = {"reason": rejection.reason, "detail": rejection.detail, "topic": topic,
                "payload": payload[:4096].decode("utf-8", errors="replace")}
        self.client.publish(f"{self.config.mqtt.topic_root}/deadletter/{rejection.reason}", json.dumps(body), qos=0)

    def _log_limited(self, key: str, level: int, event_name: str | None = None, **fields) -> None:
        """Log a condition at most once a minute."""
        now = time.monotonic()
        if now - self._last_logged.get(key, -1e9) >= 60:
            self._last_logged[key] = now
            event(log, level, event_name or key, **fields)

    def _stats_line(self) -> str:
        out = self.output.stats()
        fields = {
            "messages": self.stats["messages"], "flushes": self.stats["flushes"],
            "accepted": self.ingest.outcomes["messages"], "samples_new": self.ingest.outcomes["new"],
            "duplicates": self.ingest.outcomes["duplicate"],
            "refinements_ignored": self.ingest.outcomes["refinement-ignored"],
            "rejected": sum(self.ingest.rejected.values()),
            "dead_letters_dropped": self.stats["dead_letters_dropped"],
            "alerts_firing": self.stats["alerts_firing"], "alerts_resolved": self.stats["alerts_resolved"],
            "alerts_active": len(self.alerting.active()),
            "backlog_batches": out.backlog_batches, "backlog_lines": out.backlog_lines,
            "written_lines": out.written_lines, "failed_writes": out.failed_writes,
            "set_aside_batches": out.rejected_batches, "dropped_batches": out.dropped_batches,
            "write_latency_s": out.last_write_latency_s, "pending": len(self.pending),
            **{f"rejected_{reason.replace('-', '_')}": count for reason, count in self.ingest.rejected.items()},
        }
        return line("collector_stats", {"collector": self.config.ingest.client_id}, fields, _now_ms())


def _settle_heap() -> None:
    """The collector holds millions of long-lived objects (the site index, the book's points and accumulators).
    With Python's default settings the garbage collector walks them again and again: freeze what start-up built
    (the site, the restored state) out of its reach, and collect the young generation less often. Each flush
    freezes what outlived it too (gc.freeze is a constant-time list splice). Frozen objects are still freed when
    nothing refers to them; only reference cycles among them wait for `_collect_everything`, and message handling
    makes almost none (0 found after 600,000 messages of the throughput benchmark)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _collect_everything() -> None:
    """Free the reference cycles among frozen objects, then freeze again: a pause of about 1.6 s with 200,000
    hosts' state (3 million objects), so it runs once every GC_FULL_INTERVAL_S."""
    started = time.monotonic()
    gc.unfreeze()
    freed = gc.collect()
    gc.freeze()
    event(log, logging.DEBUG, "full-garbage-collection", unreachable=freed, seconds=round(time.monotonic() - started, 2))


def _now_ms() -> int:
    return int(time.time() * 1000)

