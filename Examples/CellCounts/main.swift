// Number counts per 1°×1° cell: galaxies brighter than r = 24, with their mean and median
// magnitude per cell (a group-by computed shard by shard and merged).
//
//   swift run CellCounts [ENDPOINT] [DATASET]
import TesseraClient

let args = CommandLine.arguments
let client = TesseraClient(endpoint: args.count > 1 ? args[1] : "tcp://127.0.0.1:7700")
let dataset = args.count > 2 ? args[2] : "demo_object"

let cells = try await client.catalog(dataset)
    .filter("refExtendedness == 1 and mag(r_psfFlux) < 24")
    .groupBy("cell")
    .aggregate(.count(), .mean("mag(r_psfFlux)"), .median("mag(r_psfFlux)"))
    .result()
let t = cells.table
let keys = t.numbers("cell") ?? [], counts = t.numbers("count") ?? [], means = t.numbers("mean(mag(r_psfFlux))") ?? []
print("\(t.rowCount) cells, \(cells.rowsMatched) galaxies")
for k in counts.indices.sorted(by: { counts[$0] > counts[$1] }).prefix(10) {
    print("cell \(Int(keys[k])): \(Int(counts[k])) galaxies, mean r \(means[k])")
}
