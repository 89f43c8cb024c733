"""The agent's main loop: sample on a fixed beat, spool every sample, publish batches, report status."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psutil

from agent import __version__
from agent.sampler import Sampler
from common.contract import Overhead, Sample, Status
from common.logs import event
from common.beat import Beat, Every
from common.publisher import STATUS_INTERVAL_S, SpoolPublisher, flush_publishers, spool_item
from common.spool import Spool

log = logging.getLogger(__name__)



class AgentRunner:
    def __init__(self, sampler: Sampler, spool: Spool, publisher: SpoolPublisher | None,
                 interval_s: float, publish_interval_s: float,
                 on_sample: Callable[[Sample], None] | None = None,
                 unavailable_sensors: dict[str, str] | None = None):
        self.sampler = sampler
        self.spool = spool
        self.publisher = publisher
        self.interval_s = interval_s
        self.publish_interval_s = publish_interval_s
        self.on_sample = on_sample
        self.unavailable_sensors = dict(unavailable_sensors or {})
        self.samples_taken = 0
        self._process = psutil.Process()

    def run(self, stop: threading.Event, max_samples: int | None = None) -> None:
        """Sample until `stop` is set (or max_samples were taken), then flush what the broker will take."""
        beat, publishing, reporting = Beat(self.interval_s), Every(self.publish_interval_s), Every(STATUS_INTERVAL_S)
        publishing.due(time.monotonic())  # the first batch waits a whole publish interval
        while not stop.is_set() and (max_samples is None or self.samples_taken < max_samples):
            self._take_sample()
            now = time.monotonic()
            if self.publisher:
                self.publisher.pump(publish=publishing.due(now))
                if self.publisher.connected.is_set() and reporting.due(now):
                    self.publisher.publish_status(self.status())
            beat.wait(stop)
        self._shutdown()

    def status(self) -> Status:
        cpu = self._process.cpu_times()
        return Status(
            state="online",
            session=self.sampler.session,
            ts_ms=int(time.time() * 1000),
            version=__version__,
            sensors={**self.unavailable_sensors, **{sensor.name: sensor.state for sensor in self.sampler.sensors}},
            overhead=Overhead(cpu_seconds=cpu.user + cpu.system, rss_bytes=self._process.memory_info().rss,
                              spool_depth=self.spool.depth, spool_dropped=self.spool.dropped),
        )

    def _take_sample(self) -> None:
        sample = self.sampler.sample()
        if sample is None:
            return
        self.spool.append(spool_item(self.sampler.session, sample))
        self.samples_taken += 1
        if self.on_sample:
            self.on_sample(sample)

    def _shutdown(self) -> None:
        if not self.publisher:
            return
        flush_publishers([self.publisher])
        if self.publisher.connected.is_set():
            self.publisher.publish_status(Status(state="offline", session=self.sampler.session,
                                                 ts_ms=int(time.time() * 1000), version=__version__))
        event(log, logging.INFO, "agent-stopped", samples=self.samples_taken, spool_depth=self.spool.depth)
