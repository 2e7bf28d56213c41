import CZeroMQ

/// Waits on several sockets and plain file descriptors (an eventfd, a signal pipe) at once.
///
/// Built once per event loop; `wait` fills in which entries are ready.
public struct Poller: ~Copyable {
    private var items: [zmq_pollitem_t] = []

    public init() {}

    /// Adds a socket to watch for incoming messages. Returns its index.
    @discardableResult
    public mutating func add(_ socket: Socket) -> Int {
        items.append(zmq_pollitem_t(socket: socket.handle, fd: -1, events: Int16(ZMQ_POLLIN), revents: 0))
        return items.count - 1
    }

    /// Adds a file descriptor to watch for readability. Returns its index.
    @discardableResult
    public mutating func add(fileDescriptor fd: Int32) -> Int {
        items.append(zmq_pollitem_t(socket: nil, fd: fd, events: Int16(ZMQ_POLLIN), revents: 0))
        return items.count - 1
    }

    /// Waits until something is readable or `timeoutMs` passes (-1 forever, 0 just checks).
    /// - Returns: the number of ready entries.
    @discardableResult
    public mutating func wait(timeoutMs: Int) throws(ZeroMQError) -> Int {
        let n = items.count
        return Int(try items.withUnsafeMutableBufferPointer { buf throws(ZeroMQError) in
            try zmqCheck("poll") { zmq_poll(buf.baseAddress, Int32(n), timeoutMs) }
        })
    }

    /// True when entry `index` was readable at the last `wait`.
    public func isReadable(_ index: Int) -> Bool { items[index].revents & Int16(ZMQ_POLLIN) != 0 }
}
