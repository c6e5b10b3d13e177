"""Flowyard's benchmark suite: `python -m benchmarks` (or `make bench`).

Every figure is measured against a reference in the same run (stock Prefect, or the direct
path without the proxy), because the machines this runs on are shared and noisy: ratios
taken minutes apart mean little, ratios taken side by side do. See BENCHMARKS.md.
"""
