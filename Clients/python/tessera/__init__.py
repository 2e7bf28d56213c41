"""Tessera's Python client: catalog questions answered next to the data, and your own Python
functions run on the workers that hold each shard.

    import tessera
    with tessera.Client() as client:                  # or Client("tcp://host:7700")
        obj = client.catalog("object")
        q = obj.cone(60, -35, 0.5).where("refExtendedness == 0 and mag(r_psfFlux) < 24")
        q.count()
        q.select("objectId", r_mag="mag(r_psfFlux)").to_pandas()
"""
from .client import Catalog, Client, GroupBy, Partial, Query
from .cluster import LocalCluster
from .errors import (
    JobCancelled,
    JobFailed,
    NotAllowed,
    OverLimit,
    OverBudget,
    ProtocolError,
    PythonFunctionError,
    QueryError,
    SchedulerRestarted,
    SchedulerUnavailable,
    TesseraError,
)

__version__ = "0.1.0"
__all__ = [
    "Client", "Catalog", "Query", "GroupBy", "Partial", "LocalCluster",
    "TesseraError", "ProtocolError", "SchedulerUnavailable", "QueryError", "NotAllowed", "OverLimit", "OverBudget",
    "JobFailed", "JobCancelled", "SchedulerRestarted", "PythonFunctionError",
]
