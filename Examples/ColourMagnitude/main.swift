// A colour–magnitude diagram of point sources, computed where the catalog's shards are, with
// partial diagrams arriving while the workers read.
//
//   tessera local &                      # a cluster (tessera demo has ingested `demo_object`)
//   swift run ColourMagnitude [ENDPOINT] [DATASET]
import TesseraClient

let args = CommandLine.arguments
let client = TesseraClient(endpoint: args.count > 1 ? args[1] : "tcp://127.0.0.1:7700")
let dataset = args.count > 2 ? args[2] : "demo_object"

// g−r from −1 to 2 in 60 bins, r from 16 to 24 in 80 bins (numpy's bins).
let cmd = client.catalog(dataset)
    .filter("refExtendedness == 0 and r_psfFlux > 0 and g_psfFlux > 0")
    .histogram2D(x: "mag(g_psfFlux) - mag(r_psfFlux)", bins: 60, range: -1...2,
                 y: "mag(r_psfFlux)", bins: 80, range: 16...24)
    .progressive(every: 0.1)

for try await update in cmd.updates() {
    let counts = update.result.histogram
    if !update.isFinal {
        print("partial: \(update.result.shards) shards, \(counts.reduce(0, +)) sources so far")
        continue
    }
    print("\(counts.reduce(0, +)) point sources from \(update.result.shards) shards in \(update.seconds) s")
    // r down the page (2 mag per row), g−r across (0.1 per column): darker where denser.
    let shades = Array(" .:-=+*#%@")
    let peak = Double(counts.max() ?? 1)
    for ry in stride(from: 0, to: 80, by: 10) {
        var line = "r \(16 + ry / 10) |"
        for gx in stride(from: 0, to: 60, by: 2) {
            var n: UInt64 = 0
            for dy in 0..<10 { for dx in 0..<2 { n += counts[(gx + dx) * 80 + ry + dy] } }
            line.append(shades[min(shades.count - 1, Int((Double(n) / (peak * 20)).squareRoot() * Double(shades.count)))])
        }
        print(line)
    }
}
