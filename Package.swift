// swift-tools-version:6.0
import Foundation
import PackageDescription

/// Release builds target the build host's processor level, to the compiler a CPU name:
/// - x86-64-v3 (AVX2, FMA, BMI2, F16C, MOVBE, LZCNT; the floor RHEL 10 adopted; "haswell"): the
///   scans' kernels (magnitudes, filters, moments, histograms) run four lanes of Float64 wide
///   instead of two, measured 1.3× faster on one core;
/// - x86-64-v4 (v3 and AVX-512 F, CD, BW, DQ, VL; "skylake-avx512", which prefers 256-bit vectors
///   as v3 does): comparisons into mask registers, conversions between Float64 and Int64 lanes,
///   measured 10–20% faster again on the catalog's group-by and histograms, 3% on forced
///   photometry (README, Catalogs).
/// The programs refuse to start, with a message, on a processor without the level's features
/// (`TesseraBuildTarget`, itself built for the baseline). TESSERA_TARGET_CPU=x86-64 builds for
/// any x86-64, TESSERA_TARGET_CPU=x86-64-v3 or x86-64-v4 for that level whatever the host (unset
/// or empty: the host's; valgrind runs v3 builds, not v4). Debug builds (the tests) always use the baseline.
let releaseTarget: (cpu: String, level: String)? = {
    #if arch(x86_64)
    let v3 = (cpu: "haswell", level: "TESSERA_X86_64_V3"), v4 = (cpu: "skylake-avx512", level: "TESSERA_X86_64_V4")
    switch ProcessInfo.processInfo.environment["TESSERA_TARGET_CPU"] {
    case "x86-64": return nil
    case "x86-64-v3": return v3
    case "x86-64-v4": return v4
    case nil, ""?: break   // the build host's level
    case let other?: fatalError("TESSERA_TARGET_CPU=\(other): use x86-64 (any x86-64), x86-64-v3 or x86-64-v4")
    }
    #if os(Linux)
    guard let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let flags = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return nil }
    let have = Set(flags.split(separator: " ").map(String.init))
    // The lists `BuildTarget.x86_64_v3` and `x86_64_v4` check at start: change both together.
    let v3Features = ["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "popcnt", "xsave"]
    let v4Features = v3Features + ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"]
    if v4Features.allSatisfy(have.contains) { return v4 }
    return v3Features.allSatisfy(have.contains) ? v3 : nil
    #else
    return nil
    #endif
    #else
    return nil
    #endif
}()

let package = Package(
    name: "Tessera",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tessera", targets: ["tessera"]),
        .executable(name: "tessera-scheduler", targets: ["TesseraSchedulerMain"]),
        .executable(name: "tessera-worker", targets: ["TesseraWorkerMain"]),
        .library(name: "TesseraClient", targets: ["TesseraClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.28.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // System libraries from Debian, each wrapped once.
        .systemLibrary(name: "CZeroMQ", pkgConfig: "libzmq", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CFITSIO", pkgConfig: "cfitsio", providers: [.apt(["libcfitsio-dev"])]),
        // libxml2's pull parser, for VOTables users upload (FoundationXML's XMLParser traps and
        // dereferences NULL on hostile documents).
        .systemLibrary(name: "CLibXML2", pkgConfig: "libxml-2.0", providers: [.apt(["libxml2-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        .target(name: "ZeroMQ", dependencies: ["CZeroMQ"]),
        // Whether this processor can run this build: checked first by every program.
        .target(name: "TesseraBuildTarget"),
        .target(
            name: "TesseraProtocol",
            dependencies: ["CLZ4", .product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        .target(name: "TesseraSky"),
        .target(
            name: "TesseraStorage",
            dependencies: [
                "TesseraProtocol", "TesseraSky", "CFITSIO", "CZlib", "CLibXML2",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .target(name: "TesseraCompute", dependencies: ["TesseraProtocol", "TesseraStorage", "TesseraSky", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        .target(name: "TesseraSurvey", dependencies: ["TesseraStorage", "TesseraCompute", "TesseraSky", "TesseraProtocol"]),
        .target(
            name: "TesseraScheduler",
            dependencies: [
                "TesseraProtocol", "TesseraStorage", "TesseraSky", "TesseraCompute", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "TesseraWorker",
            dependencies: [
                "TesseraProtocol", "TesseraCompute", "TesseraStorage", "TesseraSky", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // CURVE key files, access lists and credentials: shared by daemons, clients and commands.
        .target(name: "TesseraSecurity", dependencies: ["ZeroMQ", "TesseraProtocol"]),
        // The socket loops around the engines: the only code above ZeroMQ that knows about it.
        .target(
            name: "TesseraDaemon",
            dependencies: [
                "ZeroMQ", "TesseraProtocol", "TesseraScheduler", "TesseraWorker", "TesseraCompute", "TesseraStorage", "TesseraSecurity",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "TesseraClient", dependencies: ["ZeroMQ", "TesseraProtocol", "TesseraSecurity", "TesseraCompute", "TesseraStorage", "TesseraSky", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        // ADQL (the IVOA's SQL for sky catalogs): parsed by a grammar, translated to catalog plans.
        .target(name: "TesseraADQL", dependencies: ["TesseraProtocol", "TesseraCompute"]),
        // The HTTP gateway: TAP, VOSI, TAP_SCHEMA and bearer tokens, a client of the scheduler.
        .target(
            name: "TesseraGateway",
            dependencies: [
                "TesseraADQL", "TesseraClient", "TesseraProtocol", "TesseraCompute", "TesseraSecurity", "TesseraSky", "TesseraStorage",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                // TAP UPLOAD of a table by URL.
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ]
        ),
        .target(name: "TesseraCluster", dependencies: ["TesseraClient", "TesseraProtocol", "TesseraSecurity"]),
        // The whole cluster in one thread, in simulated time: the real engines through an
        // in-memory network, faults and all, from one seed (`tessera-sim`, SimulationTests).
        .target(
            name: "TesseraSimulation",
            dependencies: [
                "TesseraScheduler", "TesseraWorker", "TesseraCompute", "TesseraProtocol", "TesseraStorage",
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        .executableTarget(
            name: "tessera-sim",
            dependencies: ["TesseraSimulation", "TesseraBuildTarget", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Simulator"
        ),
        .executableTarget(
            name: "tessera",
            dependencies: [
                "TesseraBuildTarget",
                "TesseraClient", "TesseraCluster", "TesseraProtocol", "TesseraCompute", "TesseraSurvey", "TesseraStorage", "TesseraScheduler", "TesseraSecurity", "ZeroMQ",
                "TesseraGateway",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // The HTTP load of `tessera bench tap`.
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .executableTarget(
            name: "TesseraSchedulerMain",
            dependencies: [
                "TesseraDaemon", "TesseraSecurity", "TesseraBuildTarget",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Scheduler"
        ),
        .executableTarget(
            name: "TesseraWorkerMain",
            dependencies: [
                "TesseraDaemon", "TesseraSecurity", "TesseraBuildTarget",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Worker"
        ),
        .executableTarget(name: "SumOfSquares", dependencies: ["TesseraClient", "TesseraCluster"], path: "Examples/SumOfSquares"),
        .executableTarget(name: "ColourMagnitude", dependencies: ["TesseraClient"], path: "Examples/ColourMagnitude"),
        .executableTarget(name: "SkyDensity", dependencies: ["TesseraClient"], path: "Examples/SkyDensity"),
        .executableTarget(name: "CellCounts", dependencies: ["TesseraClient"], path: "Examples/CellCounts"),
        .executableTarget(name: "ConeSearch", dependencies: ["TesseraClient"], path: "Examples/ConeSearch"),

        // Fuzzing: the harnesses (a library, so tests replay every corpus), and the executable
        // that libFuzzer drives when built with -sanitize=fuzzer -DFUZZING (scripts/fuzz.sh).
        .target(
            name: "TesseraFuzzHarness",
            dependencies: [
                "TesseraProtocol", "TesseraCompute", "TesseraScheduler", "TesseraWorker", "TesseraStorage", "TesseraSky", "TesseraSurvey", "TesseraADQL",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Fuzz/Harness"
        ),
        .executableTarget(name: "tessera-fuzz", dependencies: ["TesseraFuzzHarness", "TesseraBuildTarget"], path: "Fuzz/Main"),

        .target(name: "TesseraTestKit", dependencies: ["TesseraCluster", "TesseraClient", "TesseraProtocol", "TesseraCompute", "TesseraSecurity", "ZeroMQ"], path: "Tests/TesseraTestKit"),
        .testTarget(name: "ZeroMQTests", dependencies: ["ZeroMQ"]),
        .testTarget(name: "FuzzRegressionTests", dependencies: ["TesseraFuzzHarness", "TesseraTestKit"]),
        .testTarget(name: "TesseraProtocolTests", dependencies: ["TesseraProtocol", "TesseraCompute", "TesseraBuildTarget"]),
        .testTarget(name: "TesseraComputeTests", dependencies: ["TesseraCompute", "TesseraTestKit", "TesseraStorage", "TesseraSky", "TesseraSurvey", "TesseraProtocol", .product(name: "SwiftProtobuf", package: "swift-protobuf")], exclude: ["Fixtures"]),
        .testTarget(name: "TesseraSkyTests", dependencies: ["TesseraSky"], exclude: ["Fixtures"]),
        .testTarget(name: "TesseraStorageTests", dependencies: ["TesseraStorage", "TesseraTestKit", "TesseraSky", "TesseraProtocol", "TesseraSurvey",
                                                             .product(name: "SwiftProtobuf", package: "swift-protobuf")], exclude: ["Fixtures"]),
        .testTarget(name: "TesseraADQLTests", dependencies: ["TesseraADQL", "TesseraProtocol", "TesseraCompute"]),
        .testTarget(name: "TesseraGatewayTests", dependencies: ["TesseraGateway", "TesseraTestKit", "TesseraADQL", "TesseraCompute", "TesseraStorage", "TesseraProtocol",
                                                             .product(name: "NIOCore", package: "swift-nio")], exclude: ["Fixtures"]),
        .testTarget(name: "TesseraSchedulerTests", dependencies: ["TesseraScheduler", "TesseraTestKit", "TesseraProtocol", "TesseraCompute", "TesseraStorage", "TesseraSky",
                                                               .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        .testTarget(name: "SimulationTests", dependencies: ["TesseraSimulation"]),
        .testTarget(name: "TesseraWorkerTests", dependencies: ["TesseraWorker", "TesseraTestKit", "TesseraCompute", "TesseraProtocol", "TesseraStorage", "TesseraSky", "TesseraDaemon"]),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "TesseraTestKit", "TesseraClient", "TesseraCluster", "TesseraProtocol", "TesseraCompute", "ZeroMQ",
                "TesseraStorage", "TesseraSurvey", "TesseraSecurity",
                "tessera", "TesseraSchedulerMain", "TesseraWorkerMain",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            exclude: ["Fixtures"]
        ),
    ]
)

// One line of policy for every target.
for target in package.targets where target.type != .system {
    target.swiftSettings = (target.swiftSettings ?? []) + [
        .enableUpcomingFeature("ExistentialAny"),
        .enableUpcomingFeature("MemberImportVisibility"),
    ]
    if let (cpu, level) = releaseTarget {
        target.swiftSettings! += [.define(level, .when(configuration: .release))]
        // The processor check is built for the baseline, so that it runs on what it refuses.
        if target.name != "TesseraBuildTarget" {
            target.swiftSettings! += [.unsafeFlags(["-Xfrontend", "-target-cpu", "-Xfrontend", cpu], .when(configuration: .release))]
        }
    }
}
