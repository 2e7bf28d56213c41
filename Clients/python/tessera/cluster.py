"""`LocalCluster`: a scheduler and workers on this machine, like Dask's LocalCluster.

It runs `tessera local` (the Swift daemons: one tessera-scheduler and N tessera-worker
processes, restarted if one dies) and stops it on `close()` or at the end of a `with` block. The
`tessera` command is found in `bin_dir`, else `$TESSERA_BIN_DIR`, else on PATH.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

from .errors import TesseraError


def _free_port_pair() -> int:
    """A port P with P and P + 1 free on 127.0.0.1 (the client and worker ports)."""
    for _ in range(200):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65534:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise TesseraError("no two adjacent free ports on 127.0.0.1")


def _free_port() -> int:
    with socket.socket() as a:
        a.bind(("127.0.0.1", 0))
        return a.getsockname()[1]


def find_tessera(bin_dir: Optional[str] = None) -> str:
    for d in (bin_dir, os.environ.get("TESSERA_BIN_DIR")):
        if d:
            path = os.path.join(d, "tessera")
            if os.access(path, os.X_OK):
                return path
            raise TesseraError(f"no `tessera` executable in {d}: build it (swift build) or point bin_dir at the build folder")
    path = shutil.which("tessera")
    if path is None:
        raise TesseraError("cannot find the `tessera` command: put the build folder on PATH, set TESSERA_BIN_DIR, "
                           "or pass LocalCluster(bin_dir=...)")
    return path


class LocalCluster:
    """A Tessera cluster of real processes on loopback.

    - `workers`: worker processes; `threads`: executor threads each (default: one per core).
    - `data`: folder of the registry, shards and keys (a cluster started again on the same
      folder finds its datasets); `port`: the client port (default: a free one).
    - `insecure`: no CURVE keys (loopback only; users' Python functions are then refused).
    - `python`: the interpreter the workers run users' functions with (default: this one, so
      the functions see the same packages); `allow_python=False` turns that off.
    - `http`: start the HTTP gateway (TAP, VOSI) on a free port, its base URL then in
      `tap_url`; `anonymous` lets requests without a token in. Tokens: `create_token(user)`.
    """

    def __init__(self, workers: int = 2, *, data: str = "tessera-data", port: Optional[int] = None,
                 threads: Optional[int] = None, bin_dir: Optional[str] = None, python: Optional[str] = None,
                 allow_python: bool = True, insecure: bool = False, timeout: float = 60.0, extra_args=(),
                 http: bool = True, anonymous: bool = False):
        self.workers = workers
        self.data = os.path.abspath(data)
        self.port = port or _free_port_pair()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.log: list = []
        self.insecure = insecure or "--insecure" in extra_args
        exe = find_tessera(bin_dir)
        self._exe = exe
        args = [exe, "local", "--workers", str(workers), "--port", str(self.port), "--data", self.data,
                "--exit-with-parent", str(os.getpid())]
        self.tap_url: Optional[str] = None
        if http:
            http_port = _free_port()
            self.tap_url = f"http://127.0.0.1:{http_port}/tap"
            args += ["--http", f"127.0.0.1:{http_port}"]
            if anonymous:
                args += ["--anonymous"]
        else:
            args += ["--no-http"]
        if threads:
            args += ["--threads", str(threads)]
        if insecure:
            args += ["--insecure"]
        if allow_python:
            args += ["--python", python or sys.executable]
        else:
            args += ["--no-python"]
        args += list(extra_args)
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         start_new_session=True)
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            self._wait(timeout)
        except BaseException:
            self.close()
            raise

    def create_token(self, user: str) -> str:
        """A new bearer token for the gateway, acting as `user` (`tessera token create`)."""
        out = subprocess.run([self._exe, "token", "create", user, "--tokens", os.path.join(self.data, "gateway-tokens")],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    @property
    def key_path(self) -> Optional[str]:
        """The local admin user's key (`tessera local` makes it), which clients of this cluster use
        (None when it runs without keys)."""
        if self.insecure:
            return None
        path = os.path.join(self.data, "keys", "user-local.key")
        return path if os.path.exists(path) else None

    def _drain(self):
        for line in self._process.stdout:
            self.log.append(line.rstrip("\n"))
            if "Press Ctrl-C to stop" in line:
                self._ready.set()
        self._ready.set()

    def _wait(self, timeout: float):
        deadline = time.monotonic() + timeout
        self._ready.wait(timeout)
        if self._process.poll() is not None or not self._ready.is_set():
            raise TesseraError("the local cluster did not start:\n" + "\n".join(self.log[-30:]))
        from .client import Client

        with Client(self, progress=False, timeout=max(1.0, deadline - time.monotonic())) as c:
            while True:
                live = len(c.status().workers)
                if live >= self.workers:
                    break
                if time.monotonic() > deadline:
                    raise TesseraError(f"only {live} of {self.workers} workers registered within {timeout:g} s:\n"
                                       + "\n".join(self.log[-30:]))
                time.sleep(0.1)
        if self.tap_url is None:
            return
        # The gateway binds on its own thread: wait until VOSI answers.
        import urllib.request
        while True:
            try:
                with urllib.request.urlopen(self.tap_url + "/availability", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self._process.poll() is not None:
                raise TesseraError(f"the HTTP gateway did not answer at {self.tap_url} within {timeout:g} s:\n" + "\n".join(self.log[-30:]))
            time.sleep(0.1)

    def client(self, **kwargs):
        from .client import Client

        return Client(self, **kwargs)

    def close(self, timeout: float = 15.0) -> None:
        """Stops every process the cluster started (their data stays in `data`)."""
        p = self._process
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close(timeout=5)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"tessera.LocalCluster({self.endpoint!r}, workers={self.workers}, data={self.data!r})"
