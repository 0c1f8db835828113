"""Test hosts and a simulated cluster in network namespaces: the project's own small
networks on one machine, for the tests, the benchmarks and ``node-ping-lab``.

Not part of the agent: a distribution of its own (lab/pyproject.toml) that neither
``pip install .`` nor the image carries. Every address lives in 198.18.0.0/15 or
fd00:198:18::/48, inside namespaces this code created; every namespace carries a
per-run or per-lab prefix and is removed again, also after a failure.
"""
