"""Benchmarks: exitrd side by side with dracut and stock Debian (see tests/bench/README.md)."""
