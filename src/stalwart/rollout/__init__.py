"""Canary and shadow deployments: run-time routes, sticky routing, rollouts judged by anytime-valid tests (the controller), shadow comparisons."""
