"""What ``unirl-stream monitor`` (unirl_stream/cli.py) imports: ``monitor_command``."""

from unirl_stream.monitor.viewer import monitor_command

__all__ = ["monitor_command"]
