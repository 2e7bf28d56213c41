"""Users' Python functions run on the workers holding each shard (map_partitions, reduce), and
what happens when they fail, run too long, grow too large, or are not allowed."""
import glob
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

import cloudpickle
import tessera
from conftest import LANDLOCK, ROWS, SANDBOX_ARGS, alive, ingest, mag

# The functions below use this module's helpers, which the workers cannot import (their
# executors run in a scratch folder, not here): they travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_map_partitions_dataframes_are_concatenated(client, reference):
    def bright(df):
        return df[df.r_psfFlux > 10 ** (-0.4 * (20 - 31.4))][["objectId", "r_psfFlux"]]

    got = client.catalog("object").map_partitions(bright, columns=["objectId", "r_psfFlux"])
    assert isinstance(got, pd.DataFrame)
    want = reference[reference.r_psfFlux > 10 ** (-0.4 * (20 - 31.4))]
    assert sorted(got.objectId) == sorted(want.objectId)


def test_map_partitions_other_values_come_as_a_list_in_shard_order(client, reference):
    q = client.catalog("object").cone(60, -35, 3)
    lengths = q.map_partitions(len, columns=["coord_ra"])
    assert isinstance(lengths, list) and len(lengths) > 1
    assert sum(lengths) == q.count()
    # Each shard's rows come in spatial-index order, and shards in shard order.
    firsts = q.map_partitions(lambda df: int(df._healpix_29.iloc[0]) if len(df) else None, columns=["_healpix_29"])
    starts = [f for f in firsts if f is not None]
    assert starts == sorted(starts)


def test_the_function_sees_numpy_columns_of_the_stored_types(client):
    kinds = client.catalog("object").map_partitions(
        lambda df: {c: str(df[c].dtype) for c in df.columns}, columns=["objectId", "coord_ra", "detect_isPrimary"])
    assert kinds[0] == {"objectId": "int64", "coord_ra": "float64", "detect_isPrimary": "bool"}


def test_reduce_folds_partials_in_the_tree(client, reference):
    def moments(df):
        m = -2.5 * np.log10(df.r_psfFlux.where(df.r_psfFlux > 0).astype("float64")) + 31.4
        m = m.dropna()
        return (len(m), m.sum(), (m * m).sum())

    def combine(a, b):
        return tuple(x + y for x, y in zip(a, b))

    n, s, s2 = client.catalog("object").reduce(moments, combine, columns=["r_psfFlux"])
    m = pd.Series(mag(reference.r_psfFlux)).dropna()
    assert n == len(m)
    assert s == pytest.approx(m.sum(), rel=1e-9)
    assert s2 == pytest.approx((m * m).sum(), rel=1e-9)
    # An empty region reduces to None.
    assert client.catalog("object").cone(200, 60, 0.1).reduce(len, lambda a, b: a + b) is None


def test_an_exception_comes_back_with_traceback_shard_and_worker(client):
    def broken(df):
        return 1 / 0

    with pytest.raises(tessera.PythonFunctionError) as e:
        client.catalog("object").map_partitions(broken, columns=["coord_ra"])
    msg = str(e.value)
    assert "ZeroDivisionError" in msg and "Traceback" in msg and "in broken" in msg
    assert "on shard object/" in msg and "on worker local-" in msg


def test_a_missing_module_names_the_module_and_the_worker(client):
    def needs_missing(df):
        import tessera_no_such_module  # noqa: F401
        return 0

    with pytest.raises(tessera.PythonFunctionError) as e:
        client.catalog("object").map_partitions(needs_missing, columns=["coord_ra"])
    assert "module `tessera_no_such_module` is not installed on worker local-" in str(e.value)


def test_a_function_past_its_deadline_is_killed(client):
    t0 = time.monotonic()
    with pytest.raises(tessera.PythonFunctionError, match="ran past its deadline of 1 s: killed"):
        client.catalog("object").map_partitions(lambda df: time.sleep(60), columns=["coord_ra"], timeout=1)
    assert time.monotonic() - t0 < 30
    # The workers start fresh executors for the next call.
    assert sum(client.catalog("object").map_partitions(len, columns=["coord_ra"])) == ROWS


def test_a_value_over_the_limit_is_refused_by_name(client):
    # It used to be cut off by the worker's socket, and the call ended only at its deadline.
    t0 = time.monotonic()
    with pytest.raises(tessera.PythonFunctionError, match=r"value is 268435\d\d\d bytes pickled, over the limit of 268435456"):
        client.catalog("object").map_partitions(lambda df: b"x" * ((256 << 20) + 1), columns=["coord_ra"], timeout=120)
    assert time.monotonic() - t0 < 60
    assert sum(client.catalog("object").map_partitions(len, columns=["coord_ra"])) == ROWS


def test_a_function_over_its_memory_limit_is_killed(bins, catalog_files, tmp_path):
    from conftest import ingest

    with tessera.LocalCluster(workers=1, threads=1, data=str(tmp_path), bin_dir=bins, extra_args=["--python-memory-mb", "300", *SANDBOX_ARGS]) as c:
        ingest(bins, c, "object", catalog_files[:1], 30000)
        with tessera.Client(c, progress=False) as client:
            def hog(df):
                blocks = [np.ones(50_000_000, dtype=np.uint8) for _ in range(40)]  # 2 GB, touched
                return len(blocks)

            # Killed when the worker sees it resident past the limit, or refused first by the
            # address-space limit (it touches 50 MB at a time, faster than the 100 ms check).
            with pytest.raises(tessera.PythonFunctionError, match=r"over its memory limit of 300 MiB: killed|more memory than it may map"):
                client.catalog("object").map_partitions(hog, columns=["coord_ra"])

            # One allocation far past it (not touched, so resident memory never shows it): refused
            # by the executor's address-space limit: what it maps once started, 2 × 300 MiB and 256 MiB more.
            def grab(df):
                return np.empty(4 << 30, dtype=np.uint8).size

            with pytest.raises(tessera.PythonFunctionError, match=r"more memory than it may map \(\d+ MiB of address space; 300 MiB resident\)"):
                client.catalog("object").map_partitions(grab, columns=["coord_ra"])
            # What it forks counts too: each child may map up to the address-space limit, so ten
            # would hold ten times the limit. Eight children of 40 MB each while their parent
            # waits (the executor maps some 1.5 GB already: each has little room of its own).
            def fork_hog(df):
                for _ in range(8):
                    if os.fork() == 0:
                        block = np.ones(40_000_000, dtype=np.uint8)
                        time.sleep(60 + block[0])
                        os._exit(0)
                time.sleep(60)

            with pytest.raises(tessera.PythonFunctionError, match=r"with what it forked\), over its memory limit of 300 MiB: killed"):
                client.catalog("object").map_partitions(fork_hog, columns=["coord_ra"], timeout=30)
            # Files in its scratch folder (its TMPDIR: on a tmpfs they are memory no process's
            # resident size shows) count too: 400 MB of them, written and kept open, with no
            # name (TemporaryFile), and then with one.
            def file_hog(df):
                import tempfile
                kept = []
                for _ in range(8):
                    f = tempfile.TemporaryFile()
                    f.write(b"x" * 50_000_000)
                    f.flush()
                    kept.append(f)
                time.sleep(60)

            def named_file_hog(df):
                import tempfile
                for _ in range(8):
                    with tempfile.NamedTemporaryFile(delete=False) as f:
                        f.write(b"x" * 50_000_000)
                time.sleep(60)

            def mapped_file_hog(df):
                import mmap
                import tempfile
                with tempfile.TemporaryFile() as f:
                    for _ in range(8):
                        f.write(b"x" * 50_000_000)
                    f.flush()
                    kept = mmap.mmap(f.fileno(), 0)  # the mapping alone holds it once closed
                time.sleep(60 + len(kept))

            for hog in (file_hog, named_file_hog, mapped_file_hog):
                with pytest.raises(tessera.PythonFunctionError, match=r"MiB of it in files of its scratch folder or held open \(its TMPDIR is often memory\)\), over its memory limit of 300 MiB: killed"):
                    client.catalog("object").map_partitions(hog, columns=["coord_ra"], timeout=30)
            assert client.catalog("object").map_partitions(len, columns=["coord_ra"]) == [30000]


def test_python_needs_an_authenticated_user(bins, tmp_path):
    with tessera.LocalCluster(workers=1, data=str(tmp_path), bin_dir=bins, insecure=True) as c:
        with tessera.Client(c, progress=False) as client:
            with pytest.raises(tessera.NotAllowed, match="only for authenticated users"):
                client.catalog("object").map_partitions(len)


def test_workers_may_refuse_python(bins, tmp_path):
    with tessera.LocalCluster(workers=1, data=str(tmp_path), bin_dir=bins, allow_python=False) as c:
        with tessera.Client(c, progress=False) as client:
            with pytest.raises(tessera.NotAllowed, match="no worker of this cluster allows Python"):
                client.catalog("object").map_partitions(len)


def test_ctrl_c_cancels_the_job_and_frees_the_workers(client, function_dir):
    """A KeyboardInterrupt during a call cancels the job: the executors running the function are
    killed, and the scheduler sees no job running."""
    marks = function_dir / "pids"
    marks.mkdir()

    def slow(df, marks=str(marks)):
        open(os.path.join(marks, str(os.getpid())), "w").close()
        time.sleep(120)

    main = threading.main_thread().ident

    def interrupt_when_running():
        while len(os.listdir(marks)) < 2:
            time.sleep(0.02)
        signal.pthread_kill(main, signal.SIGINT)  # what Ctrl-C does

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    t_call = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        client.catalog("object").map_partitions(slow, columns=["coord_ra"], timeout=300)
    assert time.monotonic() - t_call < 60, "the call did not stop at the interrupt"
    t0 = time.monotonic()
    pids = [int(p) for p in os.listdir(marks)]
    while any(alive(p) for p in pids) or any(j.state == 0 for j in client.status().jobs):
        assert time.monotonic() - t0 < 20, "the workers were still busy 20 s after Ctrl-C"
        time.sleep(0.02)
    print(f"workers idle {time.monotonic() - t0:.3f} s after Ctrl-C")
    assert sum(client.catalog("object").map_partitions(len, columns=["coord_ra"])) == ROWS


def test_a_slow_reader_keeps_its_job_alive(bins, catalog_files, tmp_path):
    """The client's I/O thread heartbeats while the notebook's own thread does something else
    between two items of a stream: the scheduler here cancels a job whose client is silent for
    2 s, and the job runs for longer than that while the reader sleeps."""
    from conftest import ingest

    with tessera.LocalCluster(workers=1, threads=1, data=str(tmp_path), bin_dir=bins, extra_args=["--client-timeout-s", "2", *SANDBOX_ARGS]) as c:
        ingest(bins, c, "object", catalog_files[:1], 6000)
        with tessera.Client(c, progress=False) as client:
            q = client.catalog("object")
            lengths = []
            for part in q.stream("map_partitions", lambda df: (time.sleep(0.5), len(df))[1], columns=["coord_ra"]):
                lengths.append(part.value)
                time.sleep(2.5)  # longer than the client timeout, with no call into the client
            assert len(lengths) > 3 and sum(lengths) == 30000
            assert client.status().jobs_abandoned == 0


def test_executors_serve_one_user_each(cluster, bins):
    """A function can change its process (here a builtin left behind; it could as well replace
    `cloudpickle.dumps`, and the next caller's client would unpickle what it chose). A worker
    keeps an executor for its user alone: another user's functions never see the change."""
    import subprocess

    keys = os.path.dirname(cluster.key_path)
    for user in ("mallory", "victor"):
        subprocess.run([os.path.join(bins, "tessera"), "keys", "add-user", user, "--dir", keys], check=True, capture_output=True)

    def leave(df):
        import builtins
        builtins._left_behind = "mallory"
        return len(df)

    def look(df):
        import builtins
        return getattr(builtins, "_left_behind", None)

    with tessera.Client(cluster, key=os.path.join(keys, "user-mallory.key"), progress=False) as mallory, \
            tessera.Client(cluster, key=os.path.join(keys, "user-victor.key"), progress=False) as victor:
        assert mallory.user == "mallory" and victor.user == "victor"
        assert sum(mallory.catalog("object").map_partitions(leave, columns=["coord_ra"])) == ROWS
        assert set(victor.catalog("object").map_partitions(look, columns=["coord_ra"])) == {None}
        # Mallory's own executors are kept for her, change and all.
        assert "mallory" in set(mallory.catalog("object").map_partitions(look, columns=["coord_ra"]))


def _attempt(f):
    """What a function's attempt at `f()` came to: "allowed", or the name of its OSError."""
    try:
        f()
        return "allowed"
    except OSError as e:
        return type(e).__name__


@pytest.mark.skipif(not LANDLOCK, reason="this kernel has no Landlock: functions write where the worker may")
def test_each_users_functions_write_in_their_own_folder(cluster, bins, functions_folder):
    """In a --python-write folder each user's functions get a folder of their own: Mallory's
    cannot read, list or write Victor's, nor the shared folder itself."""
    keys = os.path.dirname(cluster.key_path)
    for user in ("mallory", "victor"):
        subprocess.run([os.path.join(bins, "tessera"), "keys", "add-user", user, "--dir", keys], check=True, capture_output=True)
    shared = str(functions_folder)

    def write(df):
        import os
        mine = os.path.join(shared, "victor")
        with open(os.path.join(mine, "notes.txt"), "w") as f:
            f.write("victor's")
        return len(df)

    def pry(df):
        import os

        attempt = _attempt
        return (attempt(lambda: open(os.path.join(shared, "victor", "notes.txt")).read()),
                attempt(lambda: os.listdir(os.path.join(shared, "victor"))),
                attempt(lambda: open(os.path.join(shared, "victor", "planted.txt"), "w").write("x")),
                attempt(lambda: open(os.path.join(shared, "planted.txt"), "w").write("x")),
                attempt(lambda: open(os.path.join(shared, "mallory", "mine.txt"), "w").write("x")))

    with tessera.Client(cluster, key=os.path.join(keys, "user-mallory.key"), progress=False) as mallory, \
            tessera.Client(cluster, key=os.path.join(keys, "user-victor.key"), progress=False) as victor:
        assert sum(victor.catalog("object").map_partitions(write, columns=["coord_ra"])) == ROWS
        for answer in mallory.catalog("object").map_partitions(pry, columns=["coord_ra"]):
            assert answer == ("PermissionError",) * 4 + ("allowed",), answer
    assert open(os.path.join(shared, "victor", "notes.txt")).read() == "victor's"


def _take_from_worker_socket(path, key=(1 << 32) | 1, token=b"", detail=False):
    """A take of a direct result (by default a made-up one) from a worker's same-host socket:
    what it answers (with `detail`, also the keys it sent and those it reported missing)."""
    import zmq
    from tessera import _wire
    from tessera.v1 import tessera_pb2

    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect("ipc://" + path)
    env = tessera_pb2.Envelope()
    env.fetch_request.request_id = 1
    env.fetch_request.keys.append(key)
    env.fetch_request.take = True
    env.fetch_request.take_token = token
    s.send_multipart(_wire.encode(env))
    answer, sent, missing = "no answer", [], []
    if s.poll(5000):
        reply = _wire.decode_header(_wire._view(s.recv_multipart()[0]))
        answer = reply.WhichOneof("body") + (": " + reply.error.message if reply.WhichOneof("body") == "error" else "")
        if answer == "fetch_reply":
            sent, missing = [v.key for v in reply.fetch_reply.values], list(reply.fetch_reply.missing)
    s.close()
    return (answer, sent, missing) if detail else answer


def test_a_take_needs_its_jobs_token(cluster):
    """A process that knows where a job's direct result waits (worker and key) but not the job's
    token, which only its client learns, takes nothing; with the token it takes it."""
    with tessera.Client(cluster, progress=False) as c:
        held = []
        # This client leaves its results on the workers and keeps where they are.
        c._conn._take = lambda job, locations: held.extend(locations)
        threading.Thread(target=lambda: c.catalog("object").select("objectId").to_pandas(), daemon=True).start()
        by = time.monotonic() + 30
        while not held and time.monotonic() < by:
            time.sleep(0.05)
        assert held, "no direct result was located within 30 s"
        loc = held[0]
        assert len(loc.take_token) == 16
        path = loc.worker.local_endpoint[len("ipc://"):]
        wrong = bytes(b ^ 1 for b in loc.take_token)
        for token in (b"", wrong, loc.take_token[:8]):
            assert _take_from_worker_socket(path, loc.key, token, detail=True) == ("fetch_reply", [], [loc.key])
        assert _take_from_worker_socket(path, loc.key, loc.take_token, detail=True) == ("fetch_reply", [loc.key], [])


def test_a_function_may_not_take_results_from_its_worker(client, function_dir):
    """Users' functions run as the worker's Unix user, who may open its same-host socket: a take
    by guessed keys would hand them other users' results (and remove them). The worker refuses
    its own descendants there; other processes of the user (this test) are served."""
    def probe(df):
        import os
        return os.getppid(), _take_from_worker_socket(f"/tmp/tessera-{os.getuid()}/worker-{os.getppid()}.sock")

    probes = client.catalog("object").map_partitions(probe, columns=["coord_ra"])
    answers = {answer for _, answer in probes}
    assert len(answers) == 1 and "may not take direct results" in answers.pop()
    workers = {worker for worker, _ in probes}

    # Nor a process it forked twice, whose middle process is gone: re-parented away from the
    # worker, it keeps the executor's process group and environment. (The call waits for it:
    # what a call forked ends with the call.)
    out = str(function_dir / "grandchild.txt")

    def escape(df):
        path = f"/tmp/tessera-{os.getuid()}/worker-{os.getppid()}.sock"
        mine = f"{out}.{os.getpid()}"
        child = os.fork()
        if child == 0:
            if os.fork() == 0:
                time.sleep(0.5)
                answer = _take_from_worker_socket(path)
                # A file of its own first: the function runs on every shard, and a grandchild
                # truncating a shared one under another's rename left the test an empty file.
                with open(mine + ".part", "w") as f:
                    f.write(answer)
                os.rename(mine + ".part", mine)
                os.rename(mine, out)
            os._exit(0)
        os.waitpid(child, 0)
        written_by = time.monotonic() + 15
        while os.path.exists(mine + ".part") or not os.path.exists(out):
            if time.monotonic() > written_by:
                break
            time.sleep(0.05)
        return 1

    client.catalog("object").map_partitions(escape, columns=["coord_ra"], timeout=60)
    assert "may not take direct results" in open(out).read()
    # This process, not a worker's: served (the made-up key is reported missing).
    for worker in workers:
        assert _take_from_worker_socket(f"/tmp/tessera-{os.getuid()}/worker-{worker}.sock") == "fetch_reply"


def _ignore_errors(call):
    try:
        call()
    except Exception:  # noqa: BLE001 - the call's worker is killed under it
        pass


def _running(pid):
    """Alive and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_function_takes_what_it_forked_with_it(client, function_dir):
    marker = str(function_dir / "child.pid")

    def forks(df):
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        with open(marker, "w") as f:
            f.write(str(child))
        time.sleep(60)

    with pytest.raises(tessera.PythonFunctionError, match="deadline of 1 s"):
        client.catalog("object").map_partitions(forks, columns=["coord_ra"], timeout=1)
    child = int(open(marker).read())
    gone_by = time.monotonic() + 10
    while _running(child) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not _running(child)


def test_what_a_call_forked_ends_with_the_call(client, function_dir):
    """A process a function forks and leaves running would outlive the call, past its deadline
    and its memory check: when the call ends, the executor kills and reaps everything it
    forked, a grandchild whose parent is gone and one that left the process group too."""
    marker = str(function_dir / "left")

    def leaves_children(df):
        pids = []
        child = os.fork()
        if child == 0:
            time.sleep(300)
            os._exit(0)
        pids.append(child)
        # A grandchild, orphaned when its parent exits at once.
        r, w = os.pipe()
        middle = os.fork()
        if middle == 0:
            grandchild = os.fork()
            if grandchild == 0:
                time.sleep(300)
                os._exit(0)
            os.write(w, str(grandchild).encode())
            os._exit(0)
        os.waitpid(middle, 0)
        pids.append(int(os.read(r, 32)))
        # A child that leaves the process group.
        loner = os.fork()
        if loner == 0:
            os.setsid()
            time.sleep(300)
            os._exit(0)
        pids.append(loner)
        with open(f"{marker}-{os.getpid()}-{len(df)}", "w") as f:
            f.write(" ".join(map(str, pids)))
        return "returned"

    answers = client.catalog("object").map_partitions(leaves_children, columns=["coord_ra"], timeout=30)
    assert set(answers) == {"returned"}
    left = [int(p) for path in glob.glob(marker + "-*") for p in open(path).read().split()]
    assert len(left) == 3 * len(answers)
    assert not [p for p in left if _running(p)], "processes a call forked outlived it"


def test_a_forked_child_that_returns_does_not_answer_for_the_executor(client, function_dir):
    """A function that forks and whose child returns (or raises) instead of calling os._exit
    brought a second process into the executor's loop, on the same ZeroMQ socket: the child
    now ends there, and the parent's answer is the one the client gets."""
    marker = str(function_dir / "children")

    def forks_and_returns(df):
        child = os.fork()
        if child == 0:
            with open(f"{marker}-{os.getpid()}", "w") as f:
                f.write("child")
            return "from the child"
        os.waitpid(child, 0)
        return "from the parent"

    answers = client.catalog("object").map_partitions(forks_and_returns, columns=["coord_ra"], timeout=20)
    assert set(answers) == {"from the parent"}
    children = [int(p.rsplit("-", 1)[1]) for p in glob.glob(marker + "-*")]
    assert len(children) == len(answers)
    assert not any(_running(p) for p in children)
    # The executors answer on afterwards.
    assert sum(client.catalog("object").map_partitions(len, columns=["coord_ra"])) == ROWS


def test_what_a_function_forked_ends_when_its_worker_is_killed(bins, catalog_files, tmp_path):
    """An executor ends when its worker does (it watches its parent); the processes its
    functions forked have no such watch, and outlived a worker killed at once. The executor
    takes its process group with it."""
    marker = tmp_path / "shared"
    marker.mkdir()
    with tessera.LocalCluster(workers=1, threads=1, data=str(tmp_path / "data"), bin_dir=bins,
                              extra_args=["--python-write", str(marker), *SANDBOX_ARGS]) as c:
        ingest(bins, c, "object", catalog_files[:1], 30000)
        with tessera.Client(c, progress=False) as client:
            out = str(marker / client.user) if LANDLOCK else str(marker)

            def fork_and_wait(df):
                child = os.fork()
                if child == 0:
                    time.sleep(300)
                    os._exit(0)
                with open(os.path.join(out, "child.part"), "w") as f:
                    f.write(f"{child} {os.getppid()}")
                os.rename(os.path.join(out, "child.part"), os.path.join(out, "child"))
                time.sleep(120)

            # The call is still running (and its child with it) when its worker is killed.
            def call():
                with tessera.Client(c, progress=False) as other:
                    other.catalog("object").map_partitions(fork_and_wait, columns=["coord_ra"], timeout=200)

            pending = threading.Thread(target=lambda: _ignore_errors(call), daemon=True)
            pending.start()
            started_by = time.monotonic() + 60
            while not os.path.exists(os.path.join(out, "child")) and time.monotonic() < started_by:
                time.sleep(0.1)
            child, worker = map(int, open(os.path.join(out, "child")).read().split())
            assert _running(child)
            os.kill(worker, signal.SIGKILL)
            gone_by = time.monotonic() + 15
            while _running(child) and time.monotonic() < gone_by:
                time.sleep(0.1)
            assert not _running(child), "a process a function forked outlived its killed worker by 15 s"


def test_a_long_exception_message_is_cut_to_its_start_and_end(client):
    """A failure's message travels in the worker's report with other tasks' news; one of tens
    of megabytes (the user's to choose) made the scheduler drop the whole report. Its start and
    end are kept, within 64 KiB."""
    def shouts(df):
        raise ValueError("start " + "x" * 2_000_000 + " end")

    with pytest.raises(tessera.PythonFunctionError, match=r"bytes cut") as failed:
        client.catalog("object").map_partitions(shouts, columns=["coord_ra"])
    text = str(failed.value)
    assert "ValueError: start xxx" in text and "xxx end" in text
    assert len(text) < 100_000
    assert sum(client.catalog("object").map_partitions(len, columns=["coord_ra"])) == ROWS


def test_a_function_that_prints_without_end_is_killed(client):
    def chatty(df):
        line = "x" * 1_000_000
        for _ in range(1_000):
            print(line)
        return 1

    with pytest.raises(tessera.PythonFunctionError, match="printed over 64 MiB: killed"):
        client.catalog("object").map_partitions(chatty, columns=["coord_ra"])
    assert sum(client.catalog("object").map_partitions(len, columns=["coord_ra"])) == ROWS


def _probe_access(paths, port, writable):
    """What a function may do on its worker: read each of `paths`, connect to `port` on
    loopback, signal its worker, write in its scratch folder, in `writable` and in /tmp."""
    def probe(df):
        import os
        import socket
        import tempfile

        attempt = _attempt

        out = {p: attempt(lambda p=p: open(p, "rb").read(1)) for p in paths}
        out["tcp"] = attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close())
        # Landlock governs TCP only: MPTCP and UDP sockets are refused by the seccomp filter.
        out["mptcp"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close())
        out["udp"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
        # Nor does it govern metadata: a shard's mode (set to what it is) and the worker's
        # environment (a root worker's capabilities passed Landlock's check of it).
        out["chmod"] = attempt(lambda: os.chmod(paths[0], os.stat(paths[0]).st_mode & 0o777))
        # Nor by a descriptor: any file the function may open for reading and its user owns
        # (the test takes one of its own; as root it could be /etc/shadow).

        def by_descriptor(change):
            with tempfile.TemporaryFile() as f:
                change(f.fileno())
        out["fchmod"] = attempt(lambda: by_descriptor(lambda fd: os.fchmod(fd, 0o600)))
        out["fchown"] = attempt(lambda: by_descriptor(lambda fd: os.fchown(fd, -1, -1)))
        out["fsetxattr"] = attempt(lambda: by_descriptor(lambda fd: os.setxattr(fd, "user.tessera", b"1")))
        out["worker environ"] = attempt(lambda: open(f"/proc/{os.getppid()}/environ", "rb").read(1))
        # The host's password hashes, which a worker run as root could read in /etc.
        out["/etc/shadow"] = attempt(lambda: open("/etc/shadow", "rb").read(1))
        # An executor's socket is gone from the file system once it answered (its argument).
        import sys
        own = sys.argv[-1][len("ipc://"):]
        out["own socket"] = os.path.exists(own) if own.endswith(".sock") else "no socket argument"
        out["signal worker"] = attempt(lambda: os.kill(os.getppid(), 0))
        # A memory file's pages are in no process's resident size until mapped.
        out["memfd"] = attempt(lambda: os.close(os.memfd_create("probe")))
        # System V shared memory outlives the process that made it (ctypes: Python has no shmget).
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)

        def shmget():
            segment = libc.shmget(0, 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
            if segment < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            libc.shmctl(segment, 0, None)  # IPC_RMID: not left behind
        out["sysv shm"] = attempt(shmget)
        out["scratch"] = attempt(lambda: tempfile.TemporaryFile().write(b"x"))
        out["writable"] = attempt(lambda: open(os.path.join(writable, f"{os.getpid()}.txt"), "w").write("x"))
        probe_file = f"/tmp/tessera-probe-{os.getpid()}"
        out["/tmp"] = attempt(lambda: open(probe_file, "w").write("x"))
        if out["/tmp"] == "allowed":
            os.remove(probe_file)
        return out
    return probe


def _secrets(data):
    """Files of a local cluster's folder a function must not read: shards, keys, the registry."""
    files = [p for p in glob.glob(os.path.join(data, "**", "*"), recursive=True) if os.path.isfile(p)]
    shards = [p for p in files if "/worker-" in p and p.endswith(".shard")][:2]
    keys = [p for p in files if p.endswith(".key")][:3]
    assert shards and keys, f"no shards or keys found in {data}: {files[:20]}"
    return shards + keys


@pytest.mark.skipif(not LANDLOCK, reason="this kernel has no Landlock: the workers' sandbox cannot run here")
def test_functions_are_confined(cluster, client, function_dir):
    """With the workers' default sandbox (Landlock), a function reads no shard or key of the
    cluster, opens no TCP connection (not even to the scheduler), signals no process outside
    its sandbox, and writes only in its scratch folder and the folders it was given."""
    secrets = _secrets(cluster.data)
    probe = _probe_access(secrets, cluster.port, str(function_dir))
    for answer in client.catalog("object").map_partitions(probe, columns=["coord_ra"]):
        for p in secrets:
            assert answer[p] == "PermissionError", (p, answer)
        for what in ("tcp", "mptcp", "udp", "chmod", "fchmod", "fchown", "fsetxattr", "worker environ", "signal worker", "memfd", "sysv shm"):
            assert answer[what] == "PermissionError", (what, answer)
        assert answer["own socket"] is False, answer
        assert answer["/tmp"] == "PermissionError" and answer["/etc/shadow"] == "PermissionError", answer
        assert answer["scratch"] == "allowed" and answer["writable"] == "allowed", answer


def _forkserver_process(df):
    import multiprocessing

    p = multiprocessing.get_context("forkserver").Process(target=abs, args=(-1,))
    p.start()
    p.join()
    return p.exitcode


def test_without_the_sandbox_a_function_has_the_workers_access(bins, catalog_files, tmp_path):
    """The same probe on a worker started with --python-sandbox none reads the shards and keys:
    what the sandbox takes away (and proof the probe can see it)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    with tessera.LocalCluster(workers=1, threads=1, data=str(tmp_path / "data"), bin_dir=bins,
                              extra_args=["--python-sandbox", "none"]) as c:
        ingest(bins, c, "object", catalog_files[:1], 30000)
        secrets = _secrets(c.data)
        with tessera.Client(c, progress=False) as client:
            answers = client.catalog("object").map_partitions(_probe_access(secrets, c.port, str(shared)), columns=["coord_ra"])
            # multiprocessing's forkserver (the sandbox refuses it: it chmods its socket) and
            # resource tracker outlive a call in the executor that started them: stopped with the
            # call's other processes, they start afresh for the next call (killed and reaped
            # under it, the next call's forkserver failed on their pid).
            for _ in range(2):
                assert set(client.catalog("object").map_partitions(_forkserver_process, columns=["coord_ra"], timeout=60)) == {0}
    for answer in answers:
        assert all(answer[p] == "allowed" for p in secrets), answer
        for what in ("tcp", "udp", "chmod", "fchmod", "fchown", "worker environ", "signal worker", "memfd", "sysv shm"):
            assert answer[what] == "allowed", (what, answer)
        # Run as root, as CI runs it, a worker reads the host's password hashes.
        assert answer["/etc/shadow"] == ("allowed" if os.geteuid() == 0 and os.path.exists("/etc/shadow") else "PermissionError"), answer


def test_an_executor_must_be_the_process_the_worker_started(bins, catalog_files, tmp_path):
    """The worker hands calls to whoever answers first on a new executor's socket: a function
    of another executor could connect there first and be handed the next user's function and
    data. The worker checks the answering process is the one it started: here a wrapper's
    child answers, and no call is handed to it."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\n{sys.executable} \"$@\" &\nwait\n")
    wrapper.chmod(0o755)
    with tessera.LocalCluster(workers=1, threads=1, data=str(tmp_path / "data"), bin_dir=bins, python=str(wrapper),
                              extra_args=SANDBOX_ARGS) as c:
        ingest(bins, c, "object", catalog_files[:1], 30000)
        with tessera.Client(c, progress=False) as client:
            with pytest.raises(tessera.PythonFunctionError, match="a process other than the executor"):
                client.catalog("object").map_partitions(len, columns=["coord_ra"])


def _squat(df):
    """Connects to the next executor socket that appears on this host (/proc/net/unix lists
    them) before its executor does, and holds the connection a while."""
    import time as t

    import zmq

    def sockets():
        with open("/proc/net/unix") as f:
            return {line.split()[-1] for line in f.read().splitlines()[1:] if line.split()[-1].endswith(".sock")}

    before = sockets()
    deadline = t.monotonic() + 30
    while t.monotonic() < deadline:
        new = [p for p in sockets() - before if "/executor-" in p]
        if new:
            s = zmq.Context.instance().socket(zmq.PAIR)
            s.connect("ipc://" + new[0])
            t.sleep(8)
            s.close(0)
            return new[0]
        t.sleep(0.005)
    return None


def test_a_function_cannot_take_another_executors_socket(bins, catalog_files, tmp_path):
    """Mallory's function connects to the socket of the executor starting for Victor before
    that executor can: only the process the worker started is let in (ZAP, by the peer's pid),
    so Victor's executor starts and answers while she holds her connection."""
    with tessera.LocalCluster(workers=1, threads=2, data=str(tmp_path / "data"), bin_dir=bins, extra_args=SANDBOX_ARGS) as c:
        ingest(bins, c, "object", catalog_files[:1], 30000)
        keys = os.path.dirname(c.key_path)
        for user in ("mallory", "victor"):
            subprocess.run([os.path.join(bins, "tessera"), "keys", "add-user", user, "--dir", keys], check=True, capture_output=True)
        with tessera.Client(c, key=os.path.join(keys, "user-mallory.key"), progress=False) as mallory, \
                tessera.Client(c, key=os.path.join(keys, "user-victor.key"), progress=False) as victor:
            squatted = []
            attacker = threading.Thread(target=lambda: squatted.extend(mallory.catalog("object").map_partitions(_squat, columns=["coord_ra"], timeout=60)))
            attacker.start()
            time.sleep(3)  # her executor started and her function watches for the next socket
            assert victor.catalog("object").map_partitions(len, columns=["coord_ra"], timeout=60) == [30000]
            attacker.join()
            assert squatted and squatted[0] is not None and "/executor-" in squatted[0], squatted


def test_a_worker_refuses_a_function_folder_within_its_data(bins, tmp_path):
    """--python-read of a folder inside the worker's data folder would hand functions its
    shards: the worker does not start, and says why."""
    data = tmp_path / "data"
    (data / "shards").mkdir(parents=True)
    out = subprocess.run([os.path.join(bins, "tessera-worker"), "--insecure", "--data", str(data),
                          "--python-read", str(data / "shards")], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "lies within" in out.stderr and "data folder" in out.stderr, out.stderr


def test_the_sandbox_keeps_private_paths_out_of_granted_folders(tmp_path):
    """Landlock only adds access: a granted folder holding a private path is granted entry by
    entry around it; a granted path inside a private one is dropped."""
    from tessera import _sandbox

    for p in ("a/x", "a/b/c/secret", "a/b/d", "a/b/c/also"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text("x")
    granted, dropped = _sandbox.rules([str(tmp_path / "a"), str(tmp_path / "a/b/c/also")], [str(tmp_path / "a/b/c")])
    assert sorted(granted) == sorted(str(tmp_path / p) for p in ("a/x", "a/b/d"))
    assert dropped == [str(tmp_path / "a/b/c"), str(tmp_path / "a/b/c/also")]


def test_the_sandbox_on_older_kernels():
    """Before Landlock's ABI 6 (Linux 6.12) signals are not scoped: the sandbox refuses unless
    the worker's operator accepts it; before ABI 3 (Linux 6.2) the filter refuses truncate."""
    from tessera import _sandbox

    assert _sandbox.signal_scope_problem(6, False, "6.12") is None
    assert _sandbox.signal_scope_problem(5, True, "6.10") is None
    problem = _sandbox.signal_scope_problem(5, False, "6.10")
    assert "landlock-unscoped-signals" in problem and "ABI 5" in problem

    def denied(machine, abi):
        return {k for code, _, _, k in _sandbox.seccomp_program(machine, abi) if code == 0x15}

    for machine, truncate in (("x86_64", 76), ("aarch64", 45)):
        assert truncate in denied(machine, 2)
        assert truncate not in denied(machine, 3)
        assert denied(machine, 2) - denied(machine, 3) == {truncate}


@pytest.mark.skipif(not LANDLOCK, reason="this kernel has no Landlock")
def test_the_sandbox_refuses_when_a_thread_already_runs(tmp_path):
    """Landlock confines the calling thread and what it starts later: with another thread
    running, confining would leave it free, so the executor refuses."""
    code = ("import threading, time; threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
            "from tessera import _sandbox\n"
            "try:\n    _sandbox.confine(scratch=%r)\nexcept _sandbox.SandboxUnavailable as e:\n    print('refused:', e)\n" % str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "refused: 2 threads run before the sandbox" in out.stdout, out.stdout + out.stderr
