"""Simulation evaluation: suites, parallel rollouts, metrics, videos and reports."""

from robopolicy.eval.metrics import wilson_interval
from robopolicy.eval.runner import evaluate, resolve_checkpoint
from robopolicy.eval.suite import Suite, load_suite

__all__ = ["Suite", "evaluate", "load_suite", "resolve_checkpoint", "wilson_interval"]
