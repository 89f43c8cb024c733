"""The gateway's main loop: poll every meter on a fixed beat, spool each sample, publish per meter, report status.

Each meter has its own spool file and SpoolPublisher (with its own MQTT connection, whose last will marks
that meter offline), because a SpoolPublisher publishes to one samples topic; this keeps each meter's
samples in order. The gateway's own connection carries its retained status and last will.

The runner reads time from its `clock`: the system clock, except where a harness drives the gateway in
simulated time (the site simulator's Modbus mode and tests call poll_once() themselves, one simulated step at
a time, with a clock they set). Samples and statuses are stamped with that clock; run() paces in real time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import paho.mqtt.client as paho

from agent import __version__
from agent.gateway.poller import MeterPoller, MeterSample
from common.contract import Status, encode
from common.logs import event
from common.beat import Beat, Every
from common.publisher import STATUS_INTERVAL_S, SpoolPublisher, flush_publishers, spool_item
from common.spool import Spool

log = logging.getLogger(__name__)

MAX_PARALLEL_POLLS = 16

Clock = Callable[[], tuple[float, int]]


def system_clock() -> tuple[float, int]:
    """Now: monotonic seconds (backoff and sample intervals) and wall-clock epoch ms (timestamps)."""
    return time.monotonic(), int(time.time() * 1000)


@dataclass
class MeterChannel:
    """A meter's poller, the spool that holds its samples and the publisher that sends them."""

    poller: MeterPoller
    spool: Spool
    publisher: SpoolPublisher


class GatewayRunner:
    def __init__(self, channels: list[MeterChannel], status_client: paho.Client, status_topic: str, session: str,
                 interval_s: float, publish_interval_s: float, clock: Clock = system_clock):
        self.channels = channels
        self.clock = clock
        self.status_client = status_client
        self.status_topic = status_topic
        self.session = session
        self.interval_s = interval_s
        self.publish_interval_s = publish_interval_s
        self.cycles = 0
        self.samples_taken = 0
        self._pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_POLLS, len(channels)),
                                        thread_name_prefix="meter-poll")

    def run(self, stop: threading.Event, max_cycles: int | None = None) -> None:
        """Poll until `stop` is set (or max_cycles polls were made), then flush what the broker will take."""
        beat, publishing, reporting = Beat(self.interval_s), Every(self.publish_interval_s), Every(STATUS_INTERVAL_S)
        publishing.due(time.monotonic())  # the first batch waits a whole publish interval
        try:
            while not stop.is_set() and (max_cycles is None or self.cycles < max_cycles):
                self.poll_once()
                now = time.monotonic()
                publish = publishing.due(now)
                for channel in self.channels:
                    channel.publisher.pump(publish=publish)
                if self.status_client.is_connected() and reporting.due(now):
                    self._publish_statuses()
                beat.wait(stop)
        finally:
            self.shutdown()

    def poll_once(self) -> list[MeterSample]:
        """Poll every due meter in parallel and spool what they answered."""
        now_s, now_ms = self.clock()
        futures = [(channel, self._pool.submit(channel.poller.poll, now_s, now_ms)) for channel in self.channels]
        taken = []
        for channel, future in futures:
            result = future.result()
            if result is not None:
                channel.spool.append(spool_item(result.session, result.sample))
                taken.append(result)
        self.cycles += 1
        self.samples_taken += len(taken)
        return taken

    def gateway_status(self, state: str = "online") -> Status:
        return Status(state=state, session=self.session, ts_ms=self.clock()[1], version=__version__,
                      sensors={channel.poller.meter.id: channel.poller.state for channel in self.channels})

    def _publish_statuses(self) -> None:
        self.status_client.publish(self.status_topic, encode(self.gateway_status()), qos=1, retain=True)
        for channel in self.channels:
            if channel.publisher.connected.is_set():
                channel.publisher.publish_status(self._meter_status(channel.poller))

    def _meter_status(self, poller: MeterPoller, state: str = "online") -> Status:
        return Status(state=state, session=poller.session, ts_ms=self.clock()[1], version=__version__,
                      sensors={"modbus": poller.state})

    def shutdown(self) -> None:
        """Stop polling, publish what the spools hold while the broker takes it, mark everything offline.
        run() calls it; a caller that drives poll_once() itself calls it at the end."""
        self._pool.shutdown(wait=True)
        flush_publishers([channel.publisher for channel in self.channels])
        for channel in self.channels:
            if channel.publisher.connected.is_set():
                channel.publisher.publish_status(self._meter_status(channel.poller, "offline"))
        if self.status_client.is_connected():
            self.status_client.publish(self.status_topic, encode(self.gateway_status("offline")), qos=1, retain=True)
        event(log, logging.INFO, "gateway-stopped", cycles=self.cycles, samples=self.samples_taken,
              spool_depth=sum(channel.spool.depth for channel in self.channels))
