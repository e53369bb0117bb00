"""Metric modules shipped with the package, each loaded with ``evaluate.load(<its folder>)``."""
