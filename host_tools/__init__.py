"""Energo host tools: the energo CLI, verification, settlement, benchmarks."""
