"""The parts behind ``mrl-pg bench`` and ``mrl-pg evaluate``: inputs, scratch tables, timed
query loops, prefix recall in numpy, reports and plots."""
