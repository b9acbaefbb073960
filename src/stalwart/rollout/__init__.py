"""Canary and shadow deployments: routing, analysis and the rollout controller (issue 14)."""
