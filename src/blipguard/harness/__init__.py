"""Drives the reference app on a local stack: Django, workers, a processing-service
simulator, and one job from start to its final state. Tests, the demo and the benchmarks
share it."""
