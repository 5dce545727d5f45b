"""Load tests and benchmarks of the served stack. Run the benchmarks from the repository root
as modules (`python -m loadtest.bench_compare`); locust loads `loadtest/locustfile.py` by path."""
