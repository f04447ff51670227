"""Rollouts, the evaluator (sequential and Ray), results store, latency, regression checks, report."""
