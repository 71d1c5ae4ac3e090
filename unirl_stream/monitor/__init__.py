"""Live monitoring: the metrics aggregator (driver side of the bus), the Snapshot, the
rich panel, the ``monitor`` viewer, plots, wandb and Prometheus sinks.

Entry points for the rest of the code base (import the submodules; this package imports
nothing so ``import unirl_stream.monitor`` stays cheap):

- driver: ``monitor.setup.Monitoring.start(recipe, run_dir, run_id)``
- stage workers: ``pipeline.metrics.ZmqSink`` / ``StageMeter``
- CLI: ``monitor.viewer.monitor_command(run_dir, once, as_json, plot, console)``
"""
