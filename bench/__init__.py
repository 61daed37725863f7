"""Benchmarks: latency and throughput runners, reports; data-pipeline throughput."""
