"""Benchmarks are not part of the default test run (testpaths = tests and
--benchmark-disable). Run them with: pytest benches --benchmark-enable"""
