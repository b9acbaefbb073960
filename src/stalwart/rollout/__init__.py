"""Canary and shadow deployments: sticky routing, anytime-valid analysis, shadow comparisons (issue 14; the controller comes next)."""
