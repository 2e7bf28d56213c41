"""A real cluster for the Python tests: `tessera local` (a tessera-scheduler and two
tessera-worker processes on loopback, with CURVE keys), a generated catalog ingested into it, and
the same rows read independently with astropy as the reference every answer is checked against.

The Swift binaries come from $TESSERA_BIN_DIR (scripts/test.sh sets it), else `swift build
--show-bin-path` of this repository."""
import glob
import os
import signal
import subprocess

import numpy as np
import pandas as pd
import pytest

import tessera

# scripts/test-python.sh runs pytest in the background (so that a signal to the script reaches
# it), and a non-interactive shell starts background commands with SIGINT ignored, which Python
# then keeps: the Ctrl-C tests need the handler a terminal or a notebook has.
signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
ROWS = 60_000
# Whether this kernel has Landlock, which the workers' Python sandbox needs (where it has not,
# the session's cluster runs functions unconfined and the sandbox's own tests are skipped).
LANDLOCK_ABI = __import__("tessera._sandbox", fromlist=["abi_version"]).abi_version()
LANDLOCK = LANDLOCK_ABI > 0
# Before ABI 6 (Linux 6.12) Landlock cannot scope signals, and the workers refuse to confine
# functions unless told to accept that.
SANDBOX_ARGS = ([] if LANDLOCK_ABI >= 6 else ["--python-sandbox", "landlock-unscoped-signals"]) if LANDLOCK else ["--python-sandbox", "none"]
ZP = 31.4


def bin_dir() -> str:
    d = os.environ.get("TESSERA_BIN_DIR")
    if d:
        return d
    return subprocess.run(["swift", "build", "--show-bin-path"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def mag(flux):
    """The engine's mag(): AB magnitude of a flux in nJy, in float64; NaN where not positive."""
    f = np.asarray(flux, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(f > 0, -2.5 * np.log10(np.where(f > 0, f, 1.0)) + ZP, np.nan)


def alive(pid: int) -> bool:
    """Whether process `pid` still exists."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="session")
def bins():
    return bin_dir()


@pytest.fixture(scope="session")
def catalog_files(tmp_path_factory, bins):
    out = tmp_path_factory.mktemp("fits")
    subprocess.run([os.path.join(bins, "tessera"), "generate", "catalog", "--rows", str(ROWS), "--rows-per-file", "30000",
                    "--seed", "7", "--out", str(out)], check=True, capture_output=True)
    return sorted(glob.glob(str(out / "*.fits")))


@pytest.fixture(scope="session")
def reference(catalog_files) -> pd.DataFrame:
    """The catalog as astropy reads the generated FITS files (not through Tessera)."""
    from astropy.table import Table, vstack

    t = vstack([Table.read(f) for f in catalog_files])
    return t.to_pandas()


def ingest(bins, cluster, name, files, max_rows_per_shard):
    env = dict(os.environ, TESSERA_KEY=cluster.key_path or "")
    subprocess.run([os.path.join(bins, "tessera"), "ingest", name, *files, "--scheduler", cluster.endpoint,
                    "--max-rows-per-shard", str(max_rows_per_shard), "--replace"],
                   env=env, check=True, capture_output=True)


@pytest.fixture(scope="session")
def functions_folder(tmp_path_factory):
    """A folder users' functions on the session's cluster may write (`--python-write`): the
    workers' sandbox lets them write nowhere else but their scratch folder."""
    return tmp_path_factory.mktemp("functions")


@pytest.fixture
def function_dir(functions_folder, client, request):
    """A folder of this test's own where the session client's functions may write: in the
    user's own folder of `functions_folder` (each user's functions write only in theirs)."""
    d = functions_folder / client.user / request.node.name
    d.mkdir(parents=True)
    return d


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, bins, catalog_files, functions_folder):
    data = tmp_path_factory.mktemp("cluster")
    with tessera.LocalCluster(workers=2, threads=2, data=str(data), bin_dir=bins,
                              extra_args=["--python-write", str(functions_folder), *SANDBOX_ARGS]) as c:
        ingest(bins, c, "object", catalog_files, 4000)
        # The same rows sharded otherwise: answers must not depend on the sharding.
        ingest(bins, c, "object_coarse", catalog_files, 25000)
        yield c


@pytest.fixture(scope="session")
def client(cluster):
    with tessera.Client(cluster, progress=False) as c:
        yield c
