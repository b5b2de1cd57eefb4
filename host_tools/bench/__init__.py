"""Benchmarks for `energo bench NAME`: one module each, with NAME and run(args) -> dict."""
