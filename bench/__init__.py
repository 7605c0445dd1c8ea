"""FERBench: a benchmark harness for semi-supervised facial expression recognition."""

__version__ = "0.1.0"
