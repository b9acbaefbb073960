"""Chaos, the degradation curve and soak: ``make chaos`` (``python -m benchmarks.chaos``)
and ``make soak`` (``python -m benchmarks.chaos.soak``).

Each fault is injected through real servers on loopback (``stalwart serve`` on the fraud
example's features with its whole degradation ladder, a private PostgreSQL and Redis, the
prediction log's spool on a tmpfs), bounded in time, while a probe sends a fixed pool of
requests at a steady rate; each answer is compared with a healthy reference server's
answer to the same request. ``docs/reliability.md`` explains the method and the figures.

Modules: ``world`` (services, data, models, servers), ``models`` (the fraud model's fault
switch), ``project`` (the deployment served), ``traffic`` (request pool, probe, healthy
answers), ``faults`` (one class per fault), ``scoring`` (yield, harvest, latency, records
lost, recovery), ``run`` (one fault; the curve), ``report`` (tables, JSON, HTML), ``soak``.
"""
