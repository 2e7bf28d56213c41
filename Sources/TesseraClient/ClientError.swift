import TesseraProtocol

/// Why a client call failed, in words a user can act on.
public enum ClientError: Error, CustomStringConvertible {
    /// Nothing answered at the endpoint in time.
    case noScheduler(endpoint: String, seconds: Double)
    /// The scheduler refused the request.
    case rejected(code: Tessera_V1_ErrorCode, message: String)
    /// The scheduler went quiet in the middle of a job.
    case timedOut(String)
    /// A reply could not be decoded.
    case protocolError(ProtocolError)
    /// The job ended without completing.
    case jobEnded(state: Tessera_V1_JobState, message: String)
    /// A socket error.
    case transport(String)
    /// A catalog question that cannot be answered as asked (e.g. more rows than the row cap).
    case invalidQuery(String)
    /// The scheduler restarted after accepting the job, which was lost with it.
    case schedulerRestarted(job: JobID, message: String)
    /// The connection's ``SchedulerConnection/isInterrupted`` turned true (Ctrl-C): these jobs of
    /// its were cancelled on the cluster (`confirmed`: the scheduler said each had ended).
    case interrupted(jobs: [JobID], confirmed: Bool)

    public var description: String {
        switch self {
        case .noScheduler(let ep, let s):
            "no scheduler answered at \(ep) within \(s) s: start one (`tessera local`, or tessera-scheduler), check the endpoint, or — if it requires keys — give yours (--key FILE or $TESSERA_KEY)"
        case .rejected(let code, let m): "the scheduler refused the request (\(code)): \(m)"
        case .timedOut(let what): "timed out: \(what)"
        case .protocolError(let e): "bad reply from the scheduler: \(e)"
        case .jobEnded(let state, let m): "job \(state == .jobCancelled ? "was cancelled" : "failed"): \(m)"
        case .transport(let m): "transport error: \(m)"
        case .invalidQuery(let m): m
        case .schedulerRestarted(_, let m): m
        case .interrupted(let jobs, let confirmed):
            jobs.isEmpty ? (confirmed ? "interrupted (no job was running)"
                            : "interrupted before the scheduler accepted the job (it stops once this client is silent for its client timeout)")
                : "interrupted: \(jobs.count == 1 ? "job" : "jobs") \(jobs.map { "\($0)" }.joined(separator: ", ")) "
                    + (confirmed ? "cancelled on the cluster" : "cancelled, but the scheduler did not confirm every cancellation in time (a job it did not hear of stops once this client has been silent for its client timeout)")
        }
    }
}
