"""Metrics, structured logs and (later) profiles, drift, skew and the prediction log."""
