import Foundation
import TesseraStorage

/// A `multipart/form-data` body (RFC 7578), as TAP clients send an `UPLOAD`: its parts by name.
struct MultipartForm {
    /// Parts that are not files, as text (names upper-cased, as every parameter's).
    var fields: [String: [String]] = [:]
    /// Every part's bytes, by its name as sent (an `UPLOAD`'s `param:NAME` names one).
    var parts: [String: [UInt8]] = [:]

    /// The most parts one body may hold.
    static let maxParts = 64

    /// Parses `body` sent with `contentType` (`multipart/form-data; boundary=…`).
    static func parse(_ body: [UInt8], contentType: String) throws(TAPError) -> MultipartForm {
        guard let boundary = boundary(contentType) else {
            throw TAPError(400, "a multipart body needs a boundary in its Content-Type (multipart/form-data; boundary=…)")
        }
        // Each part follows CRLF--boundary (the first may start the body) and ends at the next.
        let delimiter = Array("\r\n--\(boundary)".utf8)
        var form = MultipartForm()
        var at: Int
        if body.starts(with: delimiter.dropFirst(2)) {
            at = delimiter.count - 2
        } else if let first = body.firstIndex(of: delimiter, from: 0) {
            at = first + delimiter.count
        } else {
            throw TAPError(400, "the multipart body holds no part starting with its boundary `\(boundary)`")
        }
        var count = 0
        while true {
            // After a delimiter: `--` ends the body; else the rest of the line, then the part.
            if body[at...].starts(with: [45, 45]) { return form }
            guard let lineEnd = body.firstIndex(of: [13, 10], from: at) else { throw TAPError(400, "the multipart body ends inside a boundary line") }
            guard let headerEnd = body.firstIndex(of: [13, 10, 13, 10], from: lineEnd) else {
                throw TAPError(400, "a part of the multipart body has no end to its headers (a blank line)")
            }
            let contentStart = headerEnd + 4
            guard let next = nextDelimiter(delimiter, in: body, from: headerEnd + 2) else {
                throw TAPError(400, "the multipart body ends without its closing boundary `--\(boundary)--`")
            }
            count += 1
            guard count <= maxParts else { throw TAPError(400, "the multipart body has more than \(maxParts) parts") }
            // (A part may go straight to its blank line: no headers, then refused below.)
            let headers = headerEnd >= lineEnd + 2 ? String(decoding: body[(lineEnd + 2)..<headerEnd], as: UTF8.self) : ""
            let (name, isFile) = try disposition(headers)
            let content = contentStart <= next ? Array(body[contentStart..<next]) : []
            guard form.parts[name] == nil else { throw TAPError(400, "the multipart body has two parts named `\(name.prefix(60))`") }
            form.parts[name] = content
            if !isFile { form.fields[name.uppercased(), default: []].append(String(decoding: content, as: UTF8.self)) }
            at = next + delimiter.count
        }
    }

    /// The boundary of a `multipart/…` Content-Type, quoted or not (RFC 2046: 1–70 characters).
    static func boundary(_ contentType: String) -> String? {
        for parameter in contentType.split(separator: ";").dropFirst() {
            let kv = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard kv.count == 2, kv[0].lowercased() == "boundary" else { continue }
            var b = kv[1]
            if b.count >= 2, b.hasPrefix("\""), b.hasSuffix("\"") { b = String(b.dropFirst().dropLast()) }
            return (1...70).contains(b.utf8.count) && !b.contains("\r") && !b.contains("\n") ? b : nil
        }
        return nil
    }

    /// A part's name and whether it is a file, from its `Content-Disposition: form-data` header.
    static func disposition(_ headers: String) throws(TAPError) -> (name: String, isFile: Bool) {
        for line in headers.split(separator: "\r\n") {
            let kv = line.split(separator: ":", maxSplits: 1)
            guard kv.count == 2, kv[0].trimmingCharacters(in: .whitespaces).lowercased() == "content-disposition" else { continue }
            var name: String?
            var isFile = false
            for parameter in kv[1].split(separator: ";").dropFirst() {
                let p = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard p.count == 2 else { continue }
                var value = p[1]
                if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
                switch p[0].lowercased() {
                case "name": name = value
                case "filename", "filename*": isFile = true
                default: break
                }
            }
            guard let name, !name.isEmpty, name.utf8.count <= 128 else {
                throw TAPError(400, "a part of the multipart body has no name (or one over 128 bytes) in its Content-Disposition")
            }
            return (name, isFile)
        }
        throw TAPError(400, "a part of the multipart body has no Content-Disposition header")
    }

    /// Where the next delimiter starts: `delimiter` followed by `--` (the last) or by optional
    /// spaces and CRLF, not merely text that begins like it.
    static func nextDelimiter(_ delimiter: [UInt8], in body: [UInt8], from: Int) -> Int? {
        var at = from
        while let hit = body.firstIndex(of: delimiter, from: at) {
            var after = hit + delimiter.count
            if body[after...].starts(with: [45, 45]) { return hit }
            while after < body.count, body[after] == 32 || body[after] == 9 { after += 1 }
            if body[after...].starts(with: [13, 10]) { return hit }
            at = hit + 1
        }
        return nil
    }
}
