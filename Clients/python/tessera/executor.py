"""`python -m tessera.executor ENDPOINT`: runs users' functions for one Tessera worker.

A worker starts a few of these on its own host, on demand, and talks to each over a ZeroMQ PAIR
socket on `ipc://` (the worker binds; this connects). One request at a time:

    request: [header JSON, function pickle, column 0, column 1, ...]       ("map")
             [header JSON, function pickle, partial 0, partial 1, ...]     ("combine")
    reply:   [header JSON, value pickle]

A map's header names the columns and their dtypes (`<f8`, `<i8`, `|b1`); each column frame is
wrapped as a numpy array in place (`numpy.frombuffer`, no copy) and the arrays become a pandas
DataFrame without consolidation. A combine folds `combine(a, b)` over the unpickled partials.
The reply header says `ok`, or the failure: `exception` (with the traceback), `module` (a module
the function needs is not installed here), `unpicklable` (the value cannot be pickled).

The worker, not this process, enforces the deadline and the memory limit: it kills an
executor that runs too long or grows too large, and starts another for the next call. Before
anything else (before any thread starts), the executor confines itself with Landlock as the
worker's `TESSERA_EXECUTOR_SANDBOX` says (`tessera._sandbox`): no reads of the worker's data
folder or key, writes only in its scratch folder, no TCP, no signals to the worker.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import sys
import threading
import time
import traceback


def _reply(sock, header: dict, payload: bytes = b"") -> None:
    sock.send_multipart([json.dumps(header).encode(), payload], copy=False)


def _failure(e: BaseException) -> dict:
    missing = e if isinstance(e, ModuleNotFoundError) else None
    cause = e.__cause__ or e.__context__
    while missing is None and cause is not None:
        if isinstance(cause, ModuleNotFoundError):
            missing = cause
        cause = cause.__cause__ or cause.__context__
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    if missing is not None:
        return {"ok": False, "kind": "module", "module": missing.name or str(missing), "message": str(missing), "traceback": tb}
    if isinstance(e, MemoryError):
        return {"ok": False, "kind": "memory", "message": f"{type(e).__name__}: {e}", "traceback": tb}
    return {"ok": False, "kind": "exception", "message": f"{type(e).__name__}: {e}", "traceback": tb}


def _children() -> list:
    """This process's living and dead children: from each thread's `children` file, or where
    the kernel has none, from every process's parent in /proc."""
    pids = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        return pids
    except OSError:
        pass
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    after = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if len(after) > 1 and int(after[1]) == me:
                pids.append(int(name))
    return pids


def _stop_multiprocessing_helpers() -> None:
    """multiprocessing's forkserver and resource tracker serve call after call from the process
    that started them: stopped their own way (each exits when the descriptor it watches closes)
    so that the next call's multiprocessing starts them afresh, rather than finding killed and
    reaped the pids it still holds (its forkserver then fails on a `waitpid`)."""
    for module, helper in (("multiprocessing.forkserver", "_forkserver"), ("multiprocessing.resource_tracker", "_resource_tracker")):
        stop = getattr(getattr(sys.modules.get(module), helper, None), "_stop", None)
        if stop is not None:
            try:
                stop()
            except Exception:  # noqa: BLE001 - what is left is killed below
                pass


def _end_forked() -> None:
    """Kills and reaps every process the last call forked, at any depth: a function's work ends
    with its call, and what it left running would outlive the call's deadline and memory check.
    This process is their subreaper, so a grandchild whose parent is gone (or that left the
    process group with setsid) comes back to it as a child and goes in the next round."""
    _stop_multiprocessing_helpers()
    for _ in range(100):
        pids = _children()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        # Each waited for until it is gone (a SIGKILL takes a moment to land, longer for a
        # process that maps much), so that the next round sees only what was reparented here.
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    # A hundred generations and still forking: the whole process group goes, this executor
    # with it (the worker reports its end and starts another).
    os.killpg(os.getpgid(0), 9)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].startswith("ipc://"):
        print("usage: python -m tessera.executor ipc://PATH (started by a tessera-worker)", file=sys.stderr)
        return 2
    # Nothing of the worker's stays open here but standard input, output and error (its spawn
    # closes the rest where glibc can; this is for where it cannot).
    os.closerange(3, 1 << 16)
    # `python -m` put the worker's working folder first on sys.path; this one's is its scratch.
    scratch = os.environ.pop("TESSERA_EXECUTOR_SCRATCH", "")
    if scratch:
        if sys.path and sys.path[0] == os.getcwd():
            del sys.path[0]
        os.chdir(scratch)
    # First, while this is the only thread: Landlock confines the calling thread and what it
    # starts after, and pandas (through pyarrow's allocator) starts a thread at import.
    sandbox = os.environ.pop("TESSERA_EXECUTOR_SANDBOX", "")
    if sandbox:
        from tessera import _sandbox

        try:
            config = json.loads(sandbox)
            done = _sandbox.confine(read=config.get("read", []), write=config.get("write", []),
                                    private=config.get("private", []), scratch=config.get("scratch"),
                                    allow_unscoped_signals=bool(config.get("unscoped_signals", False)))
        except (_sandbox.SandboxUnavailable, OSError, ValueError) as e:
            print(f"tessera executor: cannot confine users' functions: {e}", file=sys.stderr)
            return 3
        print(f"tessera executor: confined (Landlock ABI {done['abi']}; TCP {'refused' if done['tcp'] else 'open'}; "
              f"signals {'scoped' if done['signals'] else 'open'}; kept from {done['dropped']})", file=sys.stderr)

    import cloudpickle
    import numpy as np
    import pandas as pd
    import zmq

    # A process group of its own (the worker's spawn makes one too), so that the worker's kill
    # (deadline, memory, cancel) takes the processes a function forks with it.
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    # What a function forks comes back to this process when its parent ends (PR_SET_CHILD_SUBREAPER),
    # so that `_end_forked` finds all of it.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    # The worker that started this process owns it: when the worker is gone, so is this.
    parent = os.getppid()

    def watch_parent():
        while os.getppid() == parent:
            time.sleep(0.5)
        # What the functions forked goes too (they have no such thread: a worker killed at
        # once left them running for good). The executor leads their process group.
        try:
            os.killpg(os.getpgid(0), 9)
        finally:
            os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.linger = 0
    sock.connect(argv[0])
    # The worker checks resident memory every 100 ms; an address-space limit (inherited by what
    # a function forks) also stops one allocation far past it at once, as a MemoryError. The
    # room is beyond what this process maps once it has started its threads and made a first
    # DataFrame (pandas' first maps about a gigabyte it never touches).
    pd.DataFrame({"x": np.zeros(1)}).sum()
    address_space = 0
    room = os.environ.get("TESSERA_EXECUTOR_ADDRESS_ROOM")
    if room:
        import resource

        with open("/proc/self/status") as f:
            mapped = next((int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:")), 0)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        address_space = mapped + int(room)
        if hard != resource.RLIM_INFINITY:
            address_space = min(address_space, hard)
        # Hard as well as soft: a function may not raise it again.
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    _reply(sock, {"ready": True, "pid": os.getpid(), "python": "%d.%d" % sys.version_info[:2], "confined": bool(sandbox),
                  "address_space": address_space})
    functions: dict = {}
    me = os.getpid()

    def forked_child():
        """Whether this is a process the function forked, come back from it (it returned or
        raised rather than calling os._exit): it must not answer on the executor's socket,
        whose ZeroMQ context does not survive a fork, nor read its next call."""
        return os.getpid() != me

    while True:
        frames = sock.recv_multipart(copy=False)
        try:
            header = json.loads(frames[0].bytes)
        except ValueError:
            _reply(sock, {"ok": False, "kind": "exception", "message": "a request header that is not JSON"})
            continue
        if header.get("op") == "exit":
            return 0
        try:
            fn_bytes = frames[1].buffer
            digest = hashlib.blake2b(fn_bytes, digest_size=16).digest()
            fn = functions.get(digest)
            if fn is None:
                fn = cloudpickle.loads(fn_bytes)
                if len(functions) > 64:
                    functions.clear()
                functions[digest] = fn
            if header.get("op") == "map":
                data = {}
                for name, dtype, frame in zip(header["names"], header["dtypes"], frames[2:]):
                    data[name] = np.frombuffer(frame.buffer, dtype=np.dtype(dtype))
                df = pd.DataFrame(data, copy=False)
                value = fn(df)
            elif header.get("op") == "combine":
                parts = [pickle.loads(f.buffer) for f in frames[2:]]
                value = functools.reduce(fn, parts) if parts else None
            else:
                _reply(sock, {"ok": False, "kind": "exception", "message": f"unknown op {header.get('op')!r}"})
                continue
        except BaseException as e:  # noqa: BLE001 - everything the user's code raises is reported
            if forked_child():
                os._exit(1)
            _end_forked()
            if isinstance(e, (KeyboardInterrupt, SystemExit)) and not isinstance(e, SystemExit):
                raise
            _reply(sock, _failure(e))
            continue
        if forked_child():
            os._exit(0)
        _end_forked()
        try:
            payload = cloudpickle.dumps(value, protocol=5)
        except BaseException as e:  # noqa: BLE001
            _reply(sock, {"ok": False, "kind": "unpicklable", "message": f"the function's value cannot be pickled: {type(e).__name__}: {e}"})
            continue
        limit = header.get("max_value_bytes")
        if isinstance(limit, int) and len(payload) > limit:
            # Sent anyway, the worker's socket would cut it off and the call would look stuck.
            _reply(sock, {"ok": False, "kind": "too_large",
                          "message": f"the function's value is {len(payload)} bytes pickled, over the limit of {limit} (return less, or reduce it first)"})
            continue
        _reply(sock, {"ok": True}, payload)


if __name__ == "__main__":
    sys.exit(main())
