"""Prometheus gauges of the recall monitor, when ``prometheus_client`` is installed (the
``prometheus`` extra); without it the monitor keeps its figures all the same.

Two metrics, registered once per process in ``prometheus_client``'s default registry and
shared by every monitor in it:

- ``mrl_pg_recall`` (gauge; labels ``table``, ``prefix``, ``segment``): the rolling recall@k
  of a window, ``segment=""`` for all the searches of a table and prefix;
- ``mrl_pg_recall_checks_total`` (counter; label ``outcome``: ``sampled``, ``checked``,
  ``skipped``, ``failed``, ``dropped``).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

_made: RecallGauges | None = None
_lock = threading.Lock()


class RecallGauges:
    """The process's recall metrics."""

    def __init__(self, prometheus_client: Any) -> None:
        self._recall = prometheus_client.Gauge(
            "mrl_pg_recall",
            "Rolling recall@k of mrl_pg searches, from the recall monitor's exact re-runs",
            ["table", "prefix", "segment"],
        )
        self._checks = prometheus_client.Counter(
            "mrl_pg_recall_checks",
            "Searches sampled by the mrl_pg recall monitor, by what became of their check",
            ["outcome"],
        )

    def set_recall(self, key: tuple[str, str, str | None], recall: float) -> None:
        self._recall.labels(*_labels(key)).set(recall)

    def remove(self, key: tuple[str, str, str | None]) -> None:
        with contextlib.suppress(KeyError):  # another monitor removed the series already
            self._recall.remove(*_labels(key))

    def count(self, outcome: str) -> None:
        self._checks.labels(outcome).inc()


def _labels(key: tuple[str, str, str | None]) -> tuple[str, str, str]:
    table, prefix, segment = key
    return table, prefix, "" if segment is None else segment


def recall_gauges() -> RecallGauges | None:
    """The process's gauges, made at the first call; None without ``prometheus_client``."""
    global _made
    try:
        import prometheus_client
    except ImportError:
        return None
    with _lock:
        if _made is None:
            _made = RecallGauges(prometheus_client)
        return _made
