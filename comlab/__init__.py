"""comlab: a lab for experimenting with and benchmarking a ZeroMQ client / server / worker system."""

__version__ = "0.1.0"
