import Testing
import TesseraCompute
import TesseraProtocol

func run(_ op: TaskOperator, arg: Int64 = 0, inputs: [Value] = [], numbers: [String: Double] = [:],
         strings: [String: String] = [:], isCancelled: @escaping @Sendable () -> Bool = { false }) throws(OperatorError) -> Value {
    var p = Tessera_V1_OperatorParams()
    p.numbers = numbers
    p.strings = strings
    return try op.run(OperatorContext(arg: arg, params: p, inputs: inputs, isCancelled: isCancelled))
}

func column(_ v: Value, sourceLocation: SourceLocation = #_sourceLocation) -> [Double] {
    guard case .float64Column(let c) = v else {
        Issue.record("expected float64 column, got \(v)", sourceLocation: sourceLocation)
        return []
    }
    return c
}

@Suite("Builtin operators")
struct BuiltinOperatorTests {
    // MARK: inc

    @Test func incWithoutInputsIsArgPlusOne() throws {
        #expect(try run(BuiltinOperators.inc, arg: 41) == .int64(42))
        #expect(try run(BuiltinOperators.inc, arg: -1) == .int64(0))
        #expect(try run(BuiltinOperators.inc, arg: .max) == .int64(.min)) // wraps, does not trap
    }

    @Test func incWithInputsIsSumPlusOne() throws {
        #expect(try run(BuiltinOperators.inc, arg: 100, inputs: [.int64(2), .int64(3)]) == .int64(6))
        #expect(try run(BuiltinOperators.inc, inputs: [.int64Column([1, 2, 3])]) == .int64(7))
        #expect(try run(BuiltinOperators.inc, inputs: [.int64(1), .float64(0.5)]) == .float64(2.5))
        #expect(throws: OperatorError.self) { try run(BuiltinOperators.inc, inputs: [.bytes([1])]) }
    }

    @Test func incSleepsForSleepUs() throws {
        let clock = ContinuousClock()
        let start = clock.now
        #expect(try run(BuiltinOperators.inc, arg: 1, numbers: ["sleep_us": 30_000]) == .int64(2))
        #expect(clock.now - start >= .milliseconds(29))
    }

    @Test func incSleepHonoursCancellationImmediately() throws {
        let clock = ContinuousClock()
        let start = clock.now
        let err = #expect(throws: OperatorError.self) {
            try run(BuiltinOperators.inc, arg: 1, numbers: ["sleep_us": 60_000_000], isCancelled: { true })
        }
        #expect(clock.now - start < .milliseconds(500))
        #expect(err?.operatorName == "inc")
        #expect(err?.message.contains("cancel") == true)
    }

    @Test func incSleepStopsSoonAfterCancellationDuringTheSleep() throws {
        let clock = ContinuousClock()
        let start = clock.now
        let cancelAt = start + .milliseconds(50)
        #expect(throws: OperatorError.self) {
            try run(BuiltinOperators.inc, numbers: ["sleep_us": 60_000_000], isCancelled: { ContinuousClock().now >= cancelAt })
        }
        let elapsed = clock.now - start
        #expect(elapsed >= .milliseconds(45))
        #expect(elapsed < .seconds(2), "took \(elapsed) to notice cancellation")
    }

    // MARK: sum

    @Test func sumOfIntegersStaysInteger() throws {
        #expect(try run(BuiltinOperators.sum, arg: 9) == .int64(9))
        #expect(try run(BuiltinOperators.sum, inputs: [.int64(1), .int64Column([2, 3, 4]), .empty]) == .int64(10))
        #expect(try run(BuiltinOperators.sum, inputs: [.int64(.max), .int64(1)]) == .int64(.min)) // wraps
    }

    @Test func sumPromotesToFloatWhenAnyInputIsFloat() throws {
        #expect(try run(BuiltinOperators.sum, inputs: [.int64(1), .float64(0.25)]) == .float64(1.25))
        #expect(try run(BuiltinOperators.sum, inputs: [.int64Column([1, 2]), .float64Column([0.5, 0.5])]) == .float64(4))
        #expect(try run(BuiltinOperators.sum, inputs: [.float64Column([])]) == .float64(0))
        #expect(try run(BuiltinOperators.sum, inputs: [.moments(Moments(of: [1.0, 2, 3]))]) == .float64(6))
        #expect(throws: OperatorError.self) { try run(BuiltinOperators.sum, inputs: [.bytes([])]) }
    }

    // MARK: arange

    @Test func arangeDefaultsAndParameters() throws {
        #expect(column(try run(BuiltinOperators.arange, arg: 5)) == [0, 1, 2, 3, 4])
        #expect(column(try run(BuiltinOperators.arange, arg: 4, numbers: ["start": 10, "step": -2.5])) == [10, 7.5, 5, 2.5])
        #expect(column(try run(BuiltinOperators.arange, arg: 0)) == [])
    }

    @Test func arangeRejectsBadLengths() {
        #expect(throws: OperatorError.self) { try run(BuiltinOperators.arange, arg: -1) }
        #expect(throws: OperatorError.self) { try run(BuiltinOperators.arange, arg: (1 << 28) + 1) }
    }

    // MARK: random_normal

    @Test func randomNormalIsDeterministicPerSeed() throws {
        let a = column(try run(BuiltinOperators.randomNormal, arg: 1001, numbers: ["seed": 7]))
        let b = column(try run(BuiltinOperators.randomNormal, arg: 1001, numbers: ["seed": 7]))
        let c = column(try run(BuiltinOperators.randomNormal, arg: 1001, numbers: ["seed": 8]))
        #expect(a.count == 1001) // odd length handled
        #expect(a == b)
        #expect(a != c)
        #expect(a.allSatisfy { $0.isFinite })
        // A prefix request gives the same prefix.
        let short = column(try run(BuiltinOperators.randomNormal, arg: 10, numbers: ["seed": 7]))
        #expect(short == Array(a.prefix(10)))
    }

    @Test func randomNormalHasRequestedMeanAndSigma() throws {
        let n = 200_000
        let x = column(try run(BuiltinOperators.randomNormal, arg: Int64(n), numbers: ["seed": 123, "mean": 5, "sigma": 2]))
        let m = Moments(of: x)
        #expect(abs(m.mean - 5) < 0.02, "mean \(m.mean)")
        #expect(abs(m.standardDeviation - 2) < 0.02, "std \(m.standardDeviation)")
        let std = Moments(of: column(try run(BuiltinOperators.randomNormal, arg: Int64(n), numbers: ["seed": 1])))
        #expect(abs(std.mean) < 0.01)
        #expect(abs(std.standardDeviation - 1) < 0.01)
        // Roughly 68% within one sigma.
        let within = x.filter { abs($0 - 5) < 2 }.count
        #expect(abs(Double(within) / Double(n) - 0.6827) < 0.01)
    }

    @Test func randomNormalRejectsBadLengths() {
        #expect(throws: OperatorError.self) { try run(BuiltinOperators.randomNormal, arg: -5) }
    }

    // MARK: count, mean, moments

    @Test func countSkipsNaN() throws {
        let inputs: [Value] = [
            .float64Column([1, .nan, 3, .nan]), .int64Column([1, 2, 3]), .float64(.nan), .float64(2),
            .int64(9), .empty, .moments(Moments(of: [1.0, 2, 3, 4])),
        ]
        #expect(try run(BuiltinOperators.count, inputs: inputs) == .int64(2 + 3 + 0 + 1 + 1 + 0 + 4))
        #expect(try run(BuiltinOperators.count) == .int64(0))
        #expect(throws: OperatorError.self) { try run(BuiltinOperators.count, inputs: [.bytes([1])]) }
    }

    @Test func meanOfMixedInputsSkipsNaN() throws {
        #expect(try run(BuiltinOperators.mean, inputs: [.float64Column([1, .nan, 3]), .int64Column([5]), .int64(11)]) == .float64(5))
        guard case .float64(let m) = try run(BuiltinOperators.mean, inputs: [.float64Column([.nan])]) else {
            Issue.record("mean must be float64"); return
        }
        #expect(m.isNaN)
        guard case .float64(let e) = try run(BuiltinOperators.mean) else { Issue.record("kind"); return }
        #expect(e.isNaN)
    }

    @Test func columnSumSkipsNaN() throws {
        #expect(try run(BuiltinOperators.columnSum, inputs: [.float64Column([1, .nan, 2.5]), .int64(1)]) == .float64(4.5))
    }

    @Test func momentsThenMergeMomentsEqualsWhole() throws {
        let x = (0..<1000).map { Double($0 % 37) * 0.5 - 3 }
        let whole = Moments(of: x)
        let chunks = stride(from: 0, to: x.count, by: 137).map { Array(x[$0..<min($0 + 137, x.count)]) }
        var partials: [Value] = []
        for c in chunks { partials.append(try run(BuiltinOperators.moments, inputs: [.float64Column(c)])) }
        guard case .moments(let merged) = try run(BuiltinOperators.mergeMoments, inputs: partials.reversed()) else {
            Issue.record("merge_moments must return moments"); return
        }
        #expect(merged.count == whole.count)
        #expect(abs(merged.mean - whole.mean) <= 1e-12 * abs(whole.mean) + 1e-15)
        #expect(abs(merged.variance - whole.variance) <= 1e-9 * whole.variance)
        #expect(merged.min == whole.min && merged.max == whole.max)
        // merge_moments also accepts raw columns and scalars alongside moments.
        guard case .moments(let mixed) = try run(BuiltinOperators.mergeMoments,
                                                 inputs: [partials[0], .float64Column(Array(x[137...]))]) else {
            Issue.record("kind"); return
        }
        #expect(mixed.count == 1000)
        #expect(abs(mixed.mean - whole.mean) < 1e-12)
        #expect(throws: OperatorError.self) { try run(BuiltinOperators.moments, inputs: [.bytes([0])]) }
    }

    @Test func momentsOfIntegerInputs() throws {
        #expect(try run(BuiltinOperators.moments, inputs: [.int64Column([1, 2, 3]), .int64(4)]) == .moments(Moments(of: [1.0, 2, 3, 4])))
    }

    // MARK: fail, noop

    @Test func failThrowsWithMessageParameter() {
        let err = #expect(throws: OperatorError.self) { try run(BuiltinOperators.fail, strings: ["message": "disk on fire"]) }
        #expect(err == OperatorError("fail", "disk on fire"))
        #expect(err?.description == "operator `fail`: disk on fire")
        let dflt = #expect(throws: OperatorError.self) { try run(BuiltinOperators.fail) }
        #expect(dflt?.operatorName == "fail")
        #expect(dflt?.message.isEmpty == false)
    }

    @Test func noopReturnsEmpty() throws {
        #expect(try run(BuiltinOperators.noop, arg: 5, inputs: [.int64(1)]) == .empty)
    }

    // MARK: Registry

    @Test func standardRegistryHasTheBuiltins() throws {
        let r = OperatorRegistry.standard
        for name in ["noop", "inc", "sum", "arange", "random_normal", "count", "column_sum", "mean", "moments", "merge_moments", "fail"] {
            let op = try #require(r[name], "missing \(name)")
            #expect(op.name == name)
            #expect(!op.summary.isEmpty)
        }
        #expect(r.names == r.names.sorted())
        #expect(r.names.count == BuiltinOperators.all.count + CatalogOperators.all.count + ImageOperators.all.count + HiPSOperators.all.count)
        #expect(r["catalog_scan"] != nil && r["catalog_merge"] != nil && r["image_cutout"] != nil && r["forced_phot"] != nil && r["hips_patch"] != nil)
        #expect(r["no_such_operator"] == nil)
        #expect(try r["inc"]?.run(OperatorContext(arg: 1)) == .int64(2))
    }

    @Test func registryRegistrationReplacesByName() throws {
        var r = OperatorRegistry()
        #expect(r.names.isEmpty)
        r.register(TaskOperator("x", "first") { _ in .int64(1) })
        r.register(TaskOperator("x", "second") { _ in .int64(2) })
        #expect(r.names == ["x"])
        #expect(r["x"]?.summary == "second")
        #expect(try r["x"]?.run(OperatorContext()) == .int64(2))
    }

    @Test func splitMix64IsDeterministicAndUniformish() {
        var a = SplitMix64(seed: 42), b = SplitMix64(seed: 42)
        let xs = (0..<1000).map { _ in a.next() }
        #expect(xs == (0..<1000).map { _ in b.next() })
        #expect(Set(xs).count == 1000)
        var u = SplitMix64(seed: 1)
        let us = (0..<100_000).map { _ in u.nextUnit() }
        #expect(us.allSatisfy { $0 >= 0 && $0 < 1 })
        #expect(abs(us.reduce(0, +) / 100_000 - 0.5) < 0.01)
        // Reference value for seed 0 (SplitMix64's published first output).
        var z = SplitMix64(seed: 0)
        #expect(z.next() == 0xE220_A839_7B1D_CDAF)
    }
}

#if canImport(Glibc)
import Glibc
#endif

@Suite("Builtin operators: hostile parameters")
struct HostileParameterTests {
    /// Parameters come from the client. A `seed` that is not representable as Int64 (1e19, NaN,
    /// infinity) must not bring the worker down: `Int64(ctx.number("seed", ...))` traps.
    @Test func randomNormalWithUnrepresentableSeedDoesNotTrap() async {
        await #expect(processExitsWith: .success) {
            var p = Tessera_V1_OperatorParams()
            p.numbers["seed"] = 1e19
            do {
                _ = try BuiltinOperators.randomNormal.run(OperatorContext(arg: 4, params: p))
            } catch {
                // Rejecting the parameter is fine too.
            }
            exit(0)
        }
    }

    @Test func randomNormalWithNegativeAndFractionalSeedsIsDeterministic() throws {
        let a = column(try run(BuiltinOperators.randomNormal, arg: 8, numbers: ["seed": -3]))
        let b = column(try run(BuiltinOperators.randomNormal, arg: 8, numbers: ["seed": -3]))
        #expect(a == b)
        #expect(a.count == 8)
    }
}
