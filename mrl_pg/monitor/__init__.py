"""A live recall monitor: a sample of searches re-run as exact searches off the search path,
with rolling recall@k per table and prefix and per segment.

::

    from mrl_pg.monitor import RecallMonitor

    monitor = RecallMonitor.attach(engine, sample_rate=0.01, segment_column="tenant")
    print(monitor.snapshot().segments[:5])   # the five lowest segments

See docs/monitoring.md.
"""

from mrl_pg.monitor.figures import CheckedQuery, MonitorSnapshot, RecallFigure
from mrl_pg.monitor.monitor import SEGMENT_OPTION, RecallMonitor, query_hash

__all__ = [
    "SEGMENT_OPTION",
    "CheckedQuery",
    "MonitorSnapshot",
    "RecallFigure",
    "RecallMonitor",
    "query_hash",
]
