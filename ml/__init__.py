"""FaceBench's machine-learning library: plain Python, NumPy and PyTorch.

Nothing under ``ml`` imports Django, so detectors, metrics and training loops can be tested and
used on their own (notebooks, GPU workers, scripts); the Django apps call into it, never the
other way round.
"""
