"""thinklean: train language models to reach the same answers with fewer reasoning tokens."""

__version__ = "0.1.0"
