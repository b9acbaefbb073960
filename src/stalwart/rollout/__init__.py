"""Canary and shadow deployments: routing, anytime-valid analysis, shadow comparisons."""
