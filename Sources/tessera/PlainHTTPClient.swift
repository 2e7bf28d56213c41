import Foundation
import Glibc
import TesseraStorage

/// A minimal HTTP/1.1 keep-alive client over a blocking loopback socket, for load generation:
/// a GET, then its answer read whole (Content-Length or chunked). A bench's load generator
/// shares the machine's two cores with the gateway and the cluster it measures; a full client
/// (AsyncHTTPClient's pool, tracing and state machines) costs about as much CPU per small
/// request as the gateway itself, as `wrk` and the like avoid on purpose. Not for hostile
/// servers: it trusts the gateway it started.
final class PlainHTTPClient {
    private let fd: Int32
    private let host: String
    private var buffer: [UInt8] = []
    private var start = 0

    struct Failure: Error, CustomStringConvertible { let description: String }

    init(port: Int) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: "connect to 127.0.0.1:\(port): \(message)")
        }
        self.fd = fd
        host = "127.0.0.1:\(port)"
    }

    deinit { close(fd) }

    /// GETs `target` (path and query, already percent-encoded); returns the status and the
    /// body's length in bytes.
    func get(_ target: String) throws -> (status: Int, bytes: Int) {
        let request = Array("GET \(target) HTTP/1.1\r\nHost: \(host)\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: "send: \(String(cString: strerror(errno)))") }
            sent += n
        }
        let head = try line(untilBlank: true)
        guard head.hasPrefix("HTTP/1.1 "), let status = Int(head.dropFirst(9).prefix(3)) else { throw Failure(description: "bad status line: \(head.prefix(80))") }
        var length: Int?
        var chunked = false
        for field in head.split(separator: "\r\n").dropFirst() {
            let parts = field.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let name = parts[0].lowercased(), value = parts[1].trimmingCharacters(in: .whitespaces)
            if name == "content-length" { length = Int(value).flatMap { $0 >= 0 ? $0 : nil } }
            if name == "transfer-encoding" && value.lowercased().contains("chunked") { chunked = true }
        }
        if chunked {
            var total = 0
            while true {
                let sizeLine = try line(untilBlank: false)
                // Hex digits only (Int's parser takes a sign), and few enough that the total stays an Int.
                let digits = sizeLine.split(separator: ";").first ?? ""
                guard digits.count <= 12, digits.allSatisfy(\.isHexDigit), let size = Int(digits, radix: 16) else {
                    throw Failure(description: "bad chunk size: \(sizeLine.prefix(40))")
                }
                if size == 0 {
                    _ = try line(untilBlank: false)  // no trailers are sent: the blank line
                    return (status, total)
                }
                try skip(size)
                _ = try line(untilBlank: false)
                total += size
            }
        }
        guard let length else { throw Failure(description: "an answer without Content-Length or chunked encoding") }
        try skip(length)
        return (status, length)
    }

    /// The next line (without its CRLF) or, with `untilBlank`, every line up to a blank one; at
    /// most 64 KiB of them.
    private func line(untilBlank: Bool) throws -> String {
        let terminator: [UInt8] = untilBlank ? [13, 10, 13, 10] : [13, 10]
        while true {
            if let end = buffer.firstIndex(of: terminator, from: start) {
                let text = String(decoding: buffer[start..<end], as: UTF8.self)
                start = end + terminator.count
                return text
            }
            guard buffer.count - start <= 65_536 else { throw Failure(description: "a header or chunk line over 64 KiB") }
            try fill()
        }
    }

    private func skip(_ count: Int) throws {
        var left = count
        while left > 0 {
            if start == buffer.count { try fill() }
            let take = min(left, buffer.count - start)
            start += take
            left -= take
        }
    }

    private func fill() throws {
        if start > 0 {
            buffer.removeSubrange(0..<start)
            start = 0
        }
        // Straight into the buffer's spare room (no scratch array per read).
        let kept = buffer.count
        var received = 0
        buffer.append(contentsOf: repeatElement(0, count: 65_536))
        buffer.withUnsafeMutableBytes { received = recv(fd, $0.baseAddress! + kept, 65_536, 0) }
        buffer.removeLast(65_536 - max(received, 0))
        guard received > 0 else { throw Failure(description: received == 0 ? "the server closed the connection" : "recv: \(String(cString: strerror(errno)))") }
    }
}
