"""Helpers of the experiment tools, tools/study.py and tools/reproduce_paper.py."""
