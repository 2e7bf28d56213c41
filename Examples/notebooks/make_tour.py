"""Writes tour.ipynb (cells without outputs): edit the cells here, run this, commit both."""
import os
import nbformat as nbf
nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
md("""# A tour of Tessera from Python

Tessera answers questions of a sky catalog next to the data: the question travels to the workers
that hold each piece of the sky, and only the answer comes back. This notebook walks through the
Python client:

1. connecting (here, to a local cluster this notebook starts),
2. listing datasets,
3. a cone search into pandas,
4. a colour–magnitude diagram from `histogram2d`,
5. a HEALPix density map,
6. a group-by,
7. your own Python function on every shard with `map_partitions` and `reduce`.

It needs the `tessera` command (`swift build`, then the build folder on `PATH` or in
`$TESSERA_BIN_DIR`) and the client (`pip install ./Clients/python matplotlib`)."""),
code("""import glob, os, subprocess
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import tessera

data = os.environ.get("TESSERA_TOUR_DATA", "tessera-data")
cluster = tessera.LocalCluster(workers=2, data=data)   # a scheduler and 2 workers, as real processes
client = tessera.Client(cluster)                        # or tessera.Client("tcp://host:7700") for a shared cluster
client"""),
md("""## Datasets

A fresh cluster has none: the next cell makes a synthetic LSST-like object catalog (200,000 rows)
and ingests it, sharded by HEALPix pixel over both workers, each shard stored twice."""),
code("""if "object" not in set(client.datasets().name):
    tessera_cmd = tessera.cluster.find_tessera()
    subprocess.run([tessera_cmd, "generate", "catalog", "--rows", "200000", "--out", f"{data}/generated"],
                   check=True, capture_output=True)
    subprocess.run([tessera_cmd, "ingest", "object", *sorted(glob.glob(f"{data}/generated/*.fits")),
                    "--scheduler", cluster.endpoint, "--key", cluster.key_path, "--max-rows-per-shard", "20000"],
                   check=True, capture_output=True)
client.datasets()"""),
code("""obj = client.catalog("object")
obj.columns"""),
md("""## A cone search into pandas

`cone(ra, dec, radius)` in degrees, `where(...)` in Tessera's expression language (`mag()` turns a
flux in nJy into an AB magnitude). Only the shards the cone touches are read."""),
code("""stars = obj.cone(60, -35, 2.0).where("refExtendedness == 0 and mag(r_psfFlux) < 24")
print(stars.count(), "stars in the cone")
df = stars.select("objectId", "coord_ra", "coord_dec", r_mag="mag(r_psfFlux)", gr="mag(g_psfFlux) - mag(r_psfFlux)").to_pandas()
df.describe()"""),
md("""## A colour–magnitude diagram

The 2-D histogram is computed on the workers (each shard bins its rows; the partial histograms are
added up in a reduction tree), so only 60 × 80 counts come back, whatever the catalog's size."""),
code("""counts, xedges, yedges = obj.where("refExtendedness == 0").histogram2d(
    "mag(g_psfFlux) - mag(r_psfFlux)", "mag(r_psfFlux)", bins=(60, 80), range=((-1, 2), (16, 24)))
fig, ax = plt.subplots(figsize=(5, 6))
ax.imshow(np.log10(counts.T + 1), origin="lower", aspect="auto", cmap="viridis",
          extent=(xedges[0], xedges[-1], yedges[0], yedges[-1]))
ax.invert_yaxis()
ax.set_xlabel("g - r"); ax.set_ylabel("r"); ax.set_title("point sources: colour-magnitude")
plt.show()"""),
md("""## A HEALPix density map

`sky_map(order)` counts rows per HEALPix pixel (NESTED ordering, as healpy reads it). With healpy
installed it is drawn with `mollview`; otherwise the non-empty pixels are drawn at their centres."""),
code("""order = 7
density = obj.sky_map(order=order)
try:
    import healpy as hp
    hp.mollview(density, nest=True, title="objects per pixel")
except ImportError:
    from astropy import units as u
    from astropy_healpix import HEALPix
    hpx = HEALPix(nside=2 ** order, order="nested")
    lon, lat = hpx.healpix_to_lonlat(np.flatnonzero(density))
    ra = np.linspace(lon.deg.max() + 1, lon.deg.min() - 1, 500)   # RA grows to the left
    dec = np.linspace(lat.deg.min() - 1, lat.deg.max() + 1, 500)
    grid_ra, grid_dec = np.meshgrid(ra, dec)
    image = density[hpx.lonlat_to_healpix(grid_ra * u.deg, grid_dec * u.deg)]
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(image, origin="lower", extent=(ra[0], ra[-1], dec[0], dec[-1]), cmap="magma")
    ax.set_xlabel("RA (deg)"); ax.set_ylabel("Dec (deg)"); ax.set_title(f"objects per order-{order} pixel")
    fig.colorbar(im, ax=ax)
plt.show()"""),
md("""## A group-by

Per 1° cell: counts, mean and spread of the r magnitude, as a DataFrame indexed by the key."""),
code("""cells = obj.group_by("cell").agg(n="count", r_mean="mean(mag(r_psfFlux))", r_std="std(mag(r_psfFlux))")
cells.sort_values("n", ascending=False).head()"""),
md("""## Your own Python, next to the data

`map_partitions(fn, columns=[...])` runs `fn` on each shard's rows (a pandas DataFrame) on the
worker that holds that shard; DataFrames come back concatenated. `reduce(map_fn, combine_fn)`
is for your own mergeable aggregates: partials are combined on the cluster."""),
code("""def colour_per_shard(df):
    g = -2.5 * np.log10(df.g_psfFlux.where(df.g_psfFlux > 0).astype("float64")) + 31.4
    r = -2.5 * np.log10(df.r_psfFlux.where(df.r_psfFlux > 0).astype("float64")) + 31.4
    return pd.DataFrame({"ra": [df.coord_ra.mean()], "dec": [df.coord_dec.mean()],
                         "rows": [len(df)], "median_gr": [np.nanmedian(g - r)]})

per_shard = obj.map_partitions(colour_per_shard, columns=["coord_ra", "coord_dec", "g_psfFlux", "r_psfFlux"])
per_shard.head()"""),
code("""def flux_sums(df):
    return np.array([len(df), df.r_psfFlux.astype("float64").sum()])

n, total = obj.reduce(flux_sums, lambda a, b: a + b, columns=["r_psfFlux"])
print(f"{int(n)} rows, mean r flux {total / n:.1f} nJy")"""),
code("""client.close()
cluster.close()"""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tour.ipynb"))
