"""The comparison benchmark (`python -m loadtest.bench_compare`): the workload and its rows, the
sweep over concurrency, the report and the plots."""
