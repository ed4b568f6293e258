"""Benchmarks of dagster-gptimage: ``python -m bench`` (``make bench``); results in RESULTS.md."""
