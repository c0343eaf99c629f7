"""exitrd's tests that are Python: the VM harness (tests.vm) and the benchmarks (tests.bench)."""
