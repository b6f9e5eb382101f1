"""Benchmarks: each figure is a ratio to a baseline measured in the same run.

Run ``make bench`` (or ``python -m bench``); see README "Performance".
"""
