"""comlab: a lab for experimenting with and benchmarking a ZeroMQ client / server / worker system."""

__version__ = "0.1.0"

from .data import DataError, generate as generate_data, read_commands, read_server_map
from .lab import run_experiment
from .records import InvariantError, summarize
from .results import load_meta, load_results

__all__ = ["run_experiment", "summarize", "load_results", "load_meta", "read_commands",
           "read_server_map", "generate_data", "DataError", "InvariantError", "__version__"]
