"""Whole-system runs above replay and the nodes: the demo (``make demo``) and live-vs-replay checks.

The top floor below the command line: it may use replay, the ROS nodes and the synthetic world
together, which no lower room may.
"""
