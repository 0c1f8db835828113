"""Test hosts in network namespaces: the project's own small networks on one machine.

Used by the integration tests and the benchmarks. Every address lives in
198.18.0.0/15 or fd00:198:18::/48, inside namespaces this code created; every
namespace carries a per-run prefix and is removed again, also after a failure.
"""
