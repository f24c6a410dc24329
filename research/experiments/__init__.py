"""The experiment runner: regenerates a published table from a spec.

`python -m research.experiments run experiments/NAME` (see experiments/README.md).
"""
