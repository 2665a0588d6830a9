"""The one "log once per outage, back off" helper."""

from __future__ import annotations

import logging

import pytest

from coherence_network.outage import Outage


def test_an_outage_is_logged_when_it_starts_and_when_it_ends_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    outage = Outage(logging.getLogger("coherence.test.outage"), first_delay=0.5, max_delay=4.0, clock=lambda: now[0])
    assert not outage.down and outage.lasted() == 0.0
    with caplog.at_level(logging.INFO, logger="coherence.test.outage"):
        delays = [outage.failed("down: try %d", n) for n in range(6)]
        now[0] = 10.0
        assert outage.down and outage.lasted() == 10.0
        assert outage.recovered("up after %.0f s", outage.lasted())
        assert not outage.recovered("up again")  # no outage to end: nothing logged
        assert outage.failed("down: %s", "again", level=logging.ERROR) == 0.5  # a new outage starts over
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "down: try 0"), ("INFO", "up after 10 s"), ("ERROR", "down: again")]
