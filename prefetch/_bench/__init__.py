"""The throughput benchmark behind `prefetch bench` and bench/throughput.py."""
