"""One connection to a scheduler: a DEALER socket owned by a background I/O thread.

ZeroMQ sockets belong to one thread, and a notebook user's thread may sit idle between two
`next()` calls of a stream for as long as it likes: the I/O thread keeps the job alive
meanwhile, sending the scheduler a `ClientHeartbeat` every second for every job still waiting
(a job whose client falls silent is cancelled everywhere). It files each incoming message in the
queue of the job, or of the request, it answers; callers send through an inproc socket that
wakes the I/O thread, so nothing waits on a polling interval.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time

import zmq

from . import _wire
from .errors import ProtocolError, SchedulerUnavailable, TesseraError, from_reply
from .v1 import tessera_pb2

#: As the Swift client (`ClientTiming`).
HEARTBEAT_SECONDS = 1.0
ACCEPT_TIMEOUT_SECONDS = 30.0
#: Job ids one heartbeat names at most (the scheduler's limit).
HEARTBEAT_JOBS = 4096

_ids = itertools.count(1)


class Credentials:
    """A user's key file (`tessera keys add-user`, or `tessera local`'s `user-local.key`)."""

    def __init__(self, path: str):
        self.path = path
        fields = {}
        try:
            with open(path, "rb") as f:
                text = f.read(64 * 1024 + 1)
        except OSError as e:
            raise TesseraError(f"cannot read the key file {path}: {e.strerror}") from None
        if len(text) > 64 * 1024:
            raise TesseraError(f"{path} is not a Tessera key file (over 64 KiB)")
        for line in text.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                fields[k.strip()] = v.strip()
        try:
            self.name = fields["name"]
            self.role = fields["role"]
            self.secret_key = fields["secret-key"].encode()
            self.scheduler_key = fields["scheduler-key"].encode()
        except KeyError:
            raise TesseraError(f"{path} is not a Tessera key file (it needs name, role, secret-key and scheduler-key lines)") from None
        if len(self.secret_key) != 40 or len(self.scheduler_key) != 40:
            raise TesseraError(f"{path}: its keys are not 40 Z85 characters")
        self.public_key = zmq.curve_public(self.secret_key)
        if "public-key" in fields and fields["public-key"].encode() != self.public_key:
            raise TesseraError(f"{path}: its public key does not belong to its secret key")

    def secure(self, socket: zmq.Socket) -> None:
        socket.curve_serverkey = self.scheduler_key
        socket.curve_publickey = self.public_key
        socket.curve_secretkey = self.secret_key


def find_credentials(key: str | None = None, data: str = "tessera-data"):
    """The key the `tessera` command would use: `key`, else `$TESSERA_KEY`, else the local
    cluster's `./tessera-data/keys/user-local.key`; None (no CURVE) when there is none."""
    path = key or os.environ.get("TESSERA_KEY")
    if path:
        return Credentials(path)
    local = os.path.join(data, "keys", "user-local.key")
    return Credentials(local) if os.path.exists(local) else None


def find_endpoint(address: str | None = None) -> str:
    """`address`, else `$TESSERA_SCHEDULER`, else `tessera local`'s tcp://127.0.0.1:7700."""
    return address or os.environ.get("TESSERA_SCHEDULER") or "tcp://127.0.0.1:7700"


class Connection:
    def __init__(self, endpoint: str, credentials: Credentials | None = None, timeout: float = 5.0):
        self.endpoint = endpoint
        self.credentials = credentials
        self.epoch = 0
        self._ctx = zmq.Context()
        self._lock = threading.Lock()
        self._tags = itertools.count(1)
        self._tagged: dict[int, queue.Queue] = {}
        self._jobs: dict[int, queue.Queue] = {}
        self._waiting: dict[int, int] = {}  # job id -> epoch that accepted it
        self._status: queue.Queue = queue.Queue()
        # Direct results: a DEALER to each worker whose values this client takes, and which job
        # each outstanding take is for. Used by the I/O thread only.
        self._peers: dict = {}
        self._takes: dict[int, int] = {}
        self._take_ids = itertools.count(1)
        #: Take direct results from a same-host worker's ipc:// socket when allowed to open it.
        self.same_host_results = True
        self._poller = zmq.Poller()
        self._closed = threading.Event()
        self._error: Exception | None = None
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = 0
        sock.rcvhwm = 0
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        if credentials is not None:
            credentials.secure(sock)
        sock.connect(endpoint)
        wake = f"inproc://tessera-client-{os.getpid()}-{next(_ids)}"
        self._inbox = self._ctx.socket(zmq.PAIR)
        self._inbox.bind(wake)
        self._outbox = self._ctx.socket(zmq.PAIR)
        self._outbox.linger = 0
        self._outbox.connect(wake)
        self._socket = sock
        self._thread = threading.Thread(target=self._run, name="tessera-io", daemon=True)
        self._thread.start()
        self.ping(timeout)

    # -- the caller's side -----------------------------------------------------------------------

    def send(self, env: tessera_pb2.Envelope, frames=()) -> None:
        if self._closed.is_set():
            raise TesseraError("this client is closed")
        parts = _wire.encode(env, frames)
        with self._lock:
            self._outbox.send_multipart(parts, copy=False)

    def _request(self, env: tessera_pb2.Envelope, tag: int, timeout: float, what: str, frames=()):
        q = self._tagged.setdefault(tag, queue.Queue())
        try:
            self.send(env, frames)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise what if isinstance(what, Exception) else TesseraError(what)
                try:
                    return q.get(timeout=min(left, 0.25))
                except queue.Empty:
                    self._check_alive()
        finally:
            self._tagged.pop(tag, None)

    def ping(self, timeout: float = 5.0) -> None:
        tag = next(self._tags)
        env = tessera_pb2.Envelope()
        env.ping.nonce = tag
        self._request(env, tag, timeout, SchedulerUnavailable(
            f"no Tessera scheduler answered at {self.endpoint} within {timeout:g} s "
            f"({'with the key ' + self.credentials.path if self.credentials else 'without a key'}): "
            "start one (`tessera local`, or tessera.LocalCluster()), or check the address and key"))

    def submit(self, plan=None, graph=None, name: str = "", task_timeout: float = 0.0, direct: bool = False,
               priority: int = 0, on_behalf_of: str = "") -> tessera_pb2.JobAccepted:
        tag = next(self._tags)
        env = tessera_pb2.Envelope()
        s = env.submit_job
        s.client_tag = tag
        s.name = name
        if plan is not None:
            s.plan.catalog.CopyFrom(plan)
        if task_timeout:
            s.task_timeout_s = task_timeout
        s.direct_results = direct
        s.priority = priority
        s.on_behalf_of = on_behalf_of
        reply = self._request(env, tag, ACCEPT_TIMEOUT_SECONDS,
                              f"the scheduler at {self.endpoint} did not accept the job within {ACCEPT_TIMEOUT_SECONDS:g} s")
        if reply.WhichOneof("body") == "error":
            raise from_reply(tessera_pb2.ErrorCode.Name(reply.error.code), reply.error.message)
        return reply.job_accepted

    def cancel(self, job_id: int) -> None:
        env = tessera_pb2.Envelope()
        env.cancel_job.job_id = job_id
        env.epoch = self._waiting.get(job_id, self.epoch)
        self.send(env)

    def next_event(self, job_id: int, timeout: float):
        """The next (envelope, frames) of a job, or None after `timeout` seconds."""
        q = self._jobs.get(job_id)
        if q is None:
            raise TesseraError(f"job {job_id} is not one of this connection's")
        # Short waits: a KeyboardInterrupt (a real SIGINT, or Jupyter's interrupt) is then seen
        # at once however it arrives, and the caller cancels the job.
        deadline = time.monotonic() + timeout
        while True:
            try:
                return q.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                self._check_alive()
                if time.monotonic() >= deadline:
                    return None

    def forget(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)
        self._waiting.pop(job_id, None)

    def status(self, timeout: float = 10.0) -> tessera_pb2.StatusReply:
        env = tessera_pb2.Envelope()
        env.status_request.SetInParent()
        self.send(env)
        try:
            return self._status.get(timeout=timeout)
        except queue.Empty:
            self._check_alive()
            raise TesseraError(f"no status from {self.endpoint} within {timeout:g} s") from None

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout=2)
        for s in (self._outbox, self._inbox, self._socket, *self._peers.values()):
            s.close(linger=0)
        self._ctx.term()

    def _check_alive(self):
        if self._error is not None:
            raise TesseraError(f"the connection to {self.endpoint} failed: {self._error}")

    # -- the I/O thread --------------------------------------------------------------------------

    def _run(self):
        poller = self._poller
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._inbox, zmq.POLLIN)
        last_heartbeat = 0.0
        try:
            while not self._closed.is_set():
                ready = dict(poller.poll(250))
                if self._inbox in ready:
                    self._drain(self._inbox, lambda parts: self._socket.send_multipart(parts, copy=False))
                if self._socket in ready:
                    self._drain(self._socket, self._file)
                for peer in self._peers.values():
                    if peer in ready:
                        self._drain(peer, self._file_take)
                now = time.monotonic()
                if self._waiting and now - last_heartbeat >= HEARTBEAT_SECONDS:
                    last_heartbeat = now
                    self._heartbeat()
        except Exception as e:  # noqa: BLE001 - reported to every waiting caller
            if not self._closed.is_set():
                self._error = e

    @staticmethod
    def _drain(socket, handle):
        """Hands every message waiting on `socket` to `handle`."""
        while True:
            try:
                parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handle(parts)

    def _heartbeat(self):
        by_epoch: dict[int, list] = {}
        for job, epoch in list(self._waiting.items()):
            by_epoch.setdefault(epoch, []).append(job)
        for epoch, jobs in by_epoch.items():
            env = tessera_pb2.Envelope()
            env.client_heartbeat.job_ids.extend(sorted(jobs)[:HEARTBEAT_JOBS])
            env.epoch = epoch
            self._socket.send_multipart(_wire.encode(env))

    def _file(self, parts):
        try:
            env = _wire.decode_header(_wire._view(parts[0]))
        except ProtocolError:
            return  # not ours to answer; the scheduler never sends such a thing
        if env.epoch:
            self.epoch = env.epoch
        body = env.WhichOneof("body")
        if body == "pong":
            q = self._tagged.get(env.pong.nonce)
            if q is not None:
                q.put(env)
        elif body == "job_accepted":
            acc = env.job_accepted
            self._jobs[acc.job_id] = queue.Queue()
            self._waiting[acc.job_id] = env.epoch
            q = self._tagged.get(acc.client_tag)
            if q is not None:
                q.put(env)
        elif body in ("ingest_plan", "ingest_committed", "ingest_aborted"):
            q = self._tagged.get(getattr(env, body).client_tag)
            if q is not None:
                q.put(env)
        elif body == "error":
            err = env.error
            if err.client_tag and err.client_tag in self._tagged:
                self._tagged[err.client_tag].put(env)
            elif err.job_id in self._jobs:
                self._waiting.pop(err.job_id, None)
                self._jobs[err.job_id].put((env, []))
        elif body in ("job_results", "job_finished"):
            job = getattr(env, body).job_id
            q = self._jobs.get(job)
            if q is None:
                return
            if body == "job_results" and env.job_results.locations:
                self._take(job, env.job_results.locations)
            if body == "job_finished":
                self._waiting.pop(job, None)
            q.put((env, parts))
        elif body == "status_reply":
            self._status.put(env.status_reply)

    # -- direct results (I/O thread) -------------------------------------------------------------

    def _take(self, job: int, locations) -> None:
        """Asks each worker for the values of `job` it holds for this client (it drops each once sent)."""
        by_worker: dict = {}
        for loc in locations:
            # Each take presents the job's secret, which only its client learns.
            by_worker.setdefault((*self._take_endpoint(loc.worker), loc.take_token), []).append(loc.key)
        for (endpoint, key, token), keys in by_worker.items():
            peer = self._peers.get((endpoint, key))
            if peer is None:
                peer = self._ctx.socket(zmq.DEALER)
                peer.linger = 0
                peer.rcvhwm = 0
                peer.sndhwm = 0
                if self.credentials is not None and key:
                    peer.curve_serverkey = key.encode()
                    peer.curve_publickey = self.credentials.public_key
                    peer.curve_secretkey = self.credentials.secret_key
                peer.connect(endpoint)
                self._peers[(endpoint, key)] = peer
                self._poller.register(peer, zmq.POLLIN)
            request = next(self._take_ids)
            self._takes[request] = job
            env = tessera_pb2.Envelope()
            env.fetch_request.request_id = request
            env.fetch_request.keys.extend(keys)
            env.fetch_request.take = True
            env.fetch_request.take_token = token
            peer.send_multipart(_wire.encode(env))

    def _take_endpoint(self, worker):
        """Where to take a worker's results: its same-host socket when this process can open it
        (this host, the worker's Unix user: no CURVE needed), else its peer endpoint."""
        local = worker.local_endpoint
        if self.same_host_results and local.startswith("ipc://"):
            path = local[len("ipc://"):]
            if os.path.exists(path) and os.access(path, os.R_OK | os.W_OK):
                return local, ""
        return worker.endpoint, worker.public_key

    def _file_take(self, parts) -> None:
        try:
            env = _wire.decode_header(_wire._view(parts[0]))
        except ProtocolError:
            return
        if env.WhichOneof("body") != "fetch_reply":
            return
        job = self._takes.pop(env.fetch_reply.request_id, None)
        q = self._jobs.get(job) if job is not None else None
        if q is not None:
            q.put((env, parts))
