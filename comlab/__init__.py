"""comlab: a lab for experimenting with and benchmarking a ZeroMQ client / server / worker system."""

__version__ = "0.1.0"

# The lab API is imported lazily: worker and server processes import this package too, and must
# not pay for pandas (start-up time and tens of MiB per worker).
_LAZY = {
    "run_experiment": "lab.experiment", "summarize": "lab.records",
    "InvariantError": "lab.records", "load_results": "lab.results", "load_meta": "lab.results",
    "compare": "lab.compare", "load": "lab.report", "Result": "lab.report",
    "write_report": "lab.report", "summarize_configs": "lab.stability",
    "ResultError": "lab.results", "ResumeRefused": "lab.results", "ResultLocked": "lab.results",
    "read_commands": "data",
    "read_server_map": "data", "StabilityWarning": "lab.stability", "DataError": "data", "generate_data": "data",
}
__all__ = [*_LAZY, "__version__", "ComlabWarning"]


class ComlabWarning(UserWarning):
    """The category of every warning comlab gives (``warnings.simplefilter("error",
    comlab.ComlabWarning)`` makes them errors); ``StabilityWarning`` is one kind."""


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, "generate" if name == "generate_data" else name)
    raise AttributeError(f"module 'comlab' has no attribute {name!r}")
