/// How urgent a job is. Ready tasks run by class first: every ready interactive task before any
/// normal one, every normal one before any batch one.
public enum PriorityClass: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// A person (or the portal) waits on a small answer.
    case interactive = 0
    /// The default: a notebook's or the command line's question.
    case normal = 1
    /// Scripted, overnight: runs in what the others leave.
    case batch = 2

    public init(_ wire: Tessera_V1_PriorityClass) {
        switch wire {
        case .priorityInteractive: self = .interactive
        case .priorityBatch: self = .batch
        case .priorityNormal, .UNRECOGNIZED: self = .normal
        }
    }

    public var wire: Tessera_V1_PriorityClass {
        switch self {
        case .interactive: .priorityInteractive
        case .normal: .priorityNormal
        case .batch: .priorityBatch
        }
    }

    public var description: String {
        switch self {
        case .interactive: "interactive"
        case .normal: "normal"
        case .batch: "batch"
        }
    }

    public init?(name: String) {
        guard let c = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = c
    }
}
