"""Tessera's Python client: catalog questions answered next to the data, and your own Python
functions run on the workers that hold each shard.

    import tessera
    with tessera.Client() as client:                  # or Client("tcp://host:7700")
        obj = client.catalog("object")
        q = obj.cone(60, -35, 0.5).where("refExtendedness == 0 and mag(r_psfFlux) < 24")
        q.count()
        q.select("objectId", r_mag="mag(r_psfFlux)").to_pandas()
"""
import importlib

# Names are imported on first use (PEP 562), so that `import tessera` alone loads no numpy,
# pandas or ZeroMQ: the workers' Python executor (`tessera.executor`) must confine itself
# before any of them starts a thread (see `tessera._sandbox`).
_WHERE = {
    "Catalog": "client", "Client": "client", "GroupBy": "client", "Partial": "client", "Query": "client",
    "LocalCluster": "cluster",
    **{name: "errors" for name in (
        "JobCancelled", "JobFailed", "NotAllowed", "OverLimit", "OverBudget", "ProtocolError",
        "PythonFunctionError", "QueryError", "SchedulerRestarted", "SchedulerUnavailable", "TesseraError")},
}


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tessera' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_WHERE))


__version__ = "0.1.0"
__all__ = [
    "Client", "Catalog", "Query", "GroupBy", "Partial", "LocalCluster",
    "TesseraError", "ProtocolError", "SchedulerUnavailable", "QueryError", "NotAllowed", "OverLimit", "OverBudget",
    "JobFailed", "JobCancelled", "SchedulerRestarted", "PythonFunctionError",
]
