// A HEALPix density map (nested, order 6: 0.92° pixels) with the mean r magnitude per pixel,
// written as CSV for healpy or TOPCAT.
//
//   swift run SkyDensity [ENDPOINT] [DATASET] [OUT.csv]
import Foundation
import TesseraClient

let args = CommandLine.arguments
let client = TesseraClient(endpoint: args.count > 1 ? args[1] : "tcp://127.0.0.1:7700")
let dataset = args.count > 2 ? args[2] : "demo_object"
let out = args.count > 3 ? args[3] : "density.csv"

let map = try await client.catalog(dataset).skyMap(order: 6, mean: "mag(r_psfFlux)").result()
let table = map.table
var csv = table.names.joined(separator: ",") + "\n"
for r in 0..<table.rowCount {
    csv += (0..<table.names.count).map { table.text(row: r, column: $0) }.joined(separator: ",") + "\n"
}
try csv.write(toFile: out, atomically: true, encoding: .utf8)
let counts = table.numbers("count") ?? []
print("\(table.rowCount) pixels, \(Int(counts.reduce(0, +))) objects, densest pixel \(Int(counts.max() ?? 0)); wrote \(out)")
