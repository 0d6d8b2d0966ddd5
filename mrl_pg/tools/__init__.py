"""The ``mrl-pg`` command and what it runs: the demo, ``bench``, ``evaluate`` and
``abandon-online``, the embedded server and synthetic MRL-like data."""
