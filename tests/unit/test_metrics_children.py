"""Metrics.child: the labelled children of the hot metrics, made once and bounded."""

from __future__ import annotations

from prometheus_client import generate_latest

from tusserver import metrics as metrics_module
from tusserver.metrics import Metrics


def test_a_child_is_made_once_and_counts_in_the_registry() -> None:
    m = Metrics()
    first = m.child(m.uploads, "created")
    assert m.child(m.uploads, "created") is first
    assert m.child(m.uploads, "finished") is not first
    first.inc()
    m.child(m.uploads, "created").inc()
    text = generate_latest(m.registry).decode()
    assert 'tusserver_uploads_total{event="created"} 2.0' in text, text


def test_children_kept_are_bounded() -> None:
    m = Metrics()
    limit = metrics_module._MAX_CHILDREN
    for i in range(limit + 10):
        m.child(m.requests, f"M{i}", "200").inc()
    assert len(m._children) == limit
    # Past the bound a child still counts (made again each time), it is only not kept.
    m.child(m.requests, "OVER", "200").inc()
    m.child(m.requests, "OVER", "200").inc()
    text = generate_latest(m.registry).decode()
    assert 'method="OVER",status="200"} 2.0' in text
