"""What can go wrong, as Python exceptions carrying the engine's own message.

The engine's messages are written for the person reading them: a query error shows the
expression with a caret under the problem and, for a misspelt column, "did you mean".
"""
from __future__ import annotations


class TesseraError(Exception):
    """Any error from Tessera. `code` is the wire's `ErrorCode` name when the scheduler sent one."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class ProtocolError(TesseraError):
    """A message that does not follow the wire protocol."""


class SchedulerUnavailable(TesseraError, ConnectionError):
    """No scheduler answered at the endpoint within the timeout."""


class QueryError(TesseraError, ValueError):
    """The question was refused before it ran: an unknown column or dataset, a bad expression."""


class NotAllowed(TesseraError, PermissionError):
    """The cluster does not let this user do this."""


class OverLimit(TesseraError):
    """Something in the request is over one of the cluster's documented limits."""


class OverBudget(OverLimit):
    """Admission control refused the question: an interactive question expected to read more than
    the cluster's interactive budget (the message has the estimate; ask it as normal or batch, or
    narrow the region), or a user over their limit of running jobs or returned rows."""


class JobFailed(TesseraError):
    """The job ran and failed (the message says which task, and why)."""


class JobCancelled(TesseraError):
    """The job was cancelled (by this client, an admin, or because its client fell silent)."""


class SchedulerRestarted(TesseraError):
    """The scheduler restarted and lost the job; submitting it again is safe."""


class PythonFunctionError(JobFailed):
    """The user's Python function failed on a worker: the message has its traceback, the shard
    and the worker."""


_BY_CODE = {
    "ERROR_INVALID_GRAPH": QueryError,
    "ERROR_UNKNOWN_OPERATOR": QueryError,
    "ERROR_NOT_ALLOWED": NotAllowed,
    "ERROR_OVER_LIMIT": OverLimit,
    "ERROR_OVER_BUDGET": OverBudget,
    "ERROR_SCHEDULER_RESTARTED": SchedulerRestarted,
    "ERROR_MALFORMED_MESSAGE": ProtocolError,
    "ERROR_UNSUPPORTED_VERSION": ProtocolError,
}


def from_reply(code_name: str, message: str) -> TesseraError:
    """The exception for a scheduler's `ErrorReply`."""
    return _BY_CODE.get(code_name, TesseraError)(message, code_name)
