"""The container runtime: the ``serve`` entry point, multi-model-server's
configuration, and the adapter from MMS requests to :mod:`serving.handler`."""
