// A cone search: the brightest objects within a radius of a position, rows back to the client.
// Only the shards and row groups the cone touches are read.
//
//   swift run ConeSearch [ENDPOINT] [DATASET] [RA DEC RADIUS_DEG]
import TesseraClient

let args = CommandLine.arguments
let client = TesseraClient(endpoint: args.count > 1 ? args[1] : "tcp://127.0.0.1:7700")
let dataset = args.count > 2 ? args[2] : "demo_object"
let (ra, dec, radius) = args.count > 5 ? (Double(args[3]) ?? 60, Double(args[4]) ?? -35, Double(args[5]) ?? 0.2) : (60.0, -35.0, 0.2)

let rows = try await client.catalog(dataset)
    .region(.cone(ra: ra, dec: dec, radius: radius))
    .select(["objectId", "coord_ra", "coord_dec", "mag(r_psfFlux)"])
    .sorted(by: "mag(r_psfFlux)")
    .limit(10)
    .result()
let t = rows.table
print(t.names.joined(separator: "\t"))
for r in 0..<t.rowCount { print((0..<t.names.count).map { t.text(row: r, column: $0) }.joined(separator: "\t")) }
print("\(rows.rowsMatched) objects in the cone; \(rows.rowsScanned) rows read from \(rows.shards) shard(s)")
