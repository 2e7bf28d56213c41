#if canImport(Glibc)
import Glibc
#endif

/// Checks every header of a FITS file before cfitsio parses any: each card printable ASCII (as
/// the standard requires), and string values of the keywords cfitsio copies into fixed buffers
/// quoted. Debian's cfitsio 4.2 overflows a 70-byte buffer on an unquoted 70-character `TTYPEn`
/// (found by fuzzing; glibc aborts the process), so such a file is refused here with a message
/// instead. The walk reads only the headers: data units are skipped by the sizes the headers give.
enum FITSHeaderCheck {
    static let block = 2880
    /// Most header-and-data units and header blocks looked at (far beyond real catalogs).
    static let maxUnits = 1_000
    static let maxHeaderBlocks = 1_000

    /// Keywords whose string values cfitsio copies into fixed-size buffers.
    static func isStringKeyword(_ k: String) -> Bool {
        let stem = String(k.prefix { !$0.isNumber })
        return ["TTYPE", "TFORM", "TUNIT", "TDISP", "TDIM", "XTENSION", "EXTNAME"].contains(stem)
    }

    static func validate(path: String) throws(FITSError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }  // cfitsio reports the open error in its own words
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return }
        let size = Int(st.st_size)
        func refuse(_ why: String) -> FITSError { .cfitsio(path: path, operation: "check the header", status: 0, message: why) }
        var offset = 0
        var buffer = [UInt8](repeating: 0, count: block)
        var unit = 0
        while offset < size {
            // cfitsio walks every unit at open: one past the limit is refused, not left unchecked.
            guard unit < maxUnits else { throw refuse("the file has more than \(maxUnits) header-and-data units") }
            defer { unit += 1 }
            var ints: [String: Int] = [:]
            var randomGroups = false
            var ended = false
            var blocks = 0
            while !ended {
                guard blocks < maxHeaderBlocks else { throw refuse("header \(unit) has no END within \(maxHeaderBlocks) blocks") }
                let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, block, off_t(offset + blocks * block)) }
                // A short last block is checked as far as it goes; cfitsio then reports it truncated.
                guard got > 0 else { return }
                blocks += 1
                for c in 0..<(got / 80) {
                    let card = buffer[(c * 80)..<(c * 80 + 80)]
                    guard card.allSatisfy({ $0 >= 0x20 && $0 <= 0x7E }) else {
                        throw refuse("header \(unit), card \(c + 1) of block \(blocks) holds bytes that are not printable ASCII")
                    }
                    // Keywords are left-justified: ` END` is not the end (cfitsio reads on), so
                    // only trailing spaces are dropped.
                    var keyword = String(decoding: card.prefix(8), as: UTF8.self)
                    while keyword.last == " " { keyword.removeLast() }
                    if keyword == "END" { ended = true; break }
                    guard card.count >= 10, card[card.startIndex + 8] == UInt8(ascii: "="), card[card.startIndex + 9] == UInt8(ascii: " ") else { continue }
                    let value = String(decoding: card.dropFirst(10), as: UTF8.self).trimmingSpaces
                    if keyword == "GROUPS" {
                        randomGroups = value.hasPrefix("T")
                    } else if isStringKeyword(keyword) {
                        // A quoted string, closed on this card: at most 68 characters.
                        guard value.hasPrefix("'"), value.dropFirst().contains("'") else {
                            throw refuse("header \(unit): \(keyword) must be a quoted string")
                        }
                    } else if ["BITPIX", "NAXIS", "PCOUNT", "GCOUNT"].contains(keyword) || (keyword.hasPrefix("NAXIS") && Int(keyword.dropFirst(5)) != nil) {
                        let number = value.prefix { $0 != "/" && $0 != " " }
                        guard let n = Int(number) else { throw refuse("header \(unit): \(keyword) = \(value.prefix(20)) is not an integer") }
                        ints[keyword] = n
                    }
                }
                if got < block { return }
            }
            // Skip the data unit: |BITPIX|/8 × GCOUNT × (PCOUNT + NAXIS1 × … × NAXISn), in blocks.
            // Every way this walk and cfitsio's could disagree on where the next header starts
            // is refused: random groups (sized without NAXIS1), an overflowing size (cfitsio's
            // own product wraps), a data unit past the end of the file.
            guard !randomGroups else { throw refuse("header \(unit): random groups (GROUPS = T) are not supported") }
            let naxis = ints["NAXIS"] ?? 0
            guard naxis >= 0, naxis <= 999 else { throw refuse("header \(unit): NAXIS = \(naxis)") }
            var elements = naxis == 0 ? 0 : 1
            for k in stride(from: 1, through: naxis, by: 1) {
                let n = ints["NAXIS\(k)"] ?? 0
                guard n >= 0 else { throw refuse("header \(unit): NAXIS\(k) = \(n)") }
                let (p, o) = elements.multipliedReportingOverflow(by: n)
                guard !o else { throw refuse("header \(unit): the data size overflows") }
                elements = p
            }
            let bitpix = ints["BITPIX"] ?? 8, pcount = ints["PCOUNT"] ?? 0, gcount = ints["GCOUNT"] ?? 1
            guard [8, 16, 32, 64, -32, -64].contains(bitpix), pcount >= 0, gcount >= 0 else {
                throw refuse("header \(unit): BITPIX, PCOUNT or GCOUNT out of range (BITPIX is one of 8, 16, 32, 64, -32, -64)")
            }
            let (withHeap, o1) = elements.addingReportingOverflow(naxis == 0 ? 0 : pcount)
            let (groups, o2) = withHeap.multipliedReportingOverflow(by: gcount)
            let (bytes, o3) = groups.multipliedReportingOverflow(by: abs(bitpix) / 8)
            guard !o1, !o2, !o3 else { throw refuse("header \(unit): the data size overflows") }
            let dataStart = offset + blocks * block
            guard bytes <= size - dataStart else {
                throw refuse("header \(unit): its data unit of \(bytes) bytes runs past the end of the file (\(size - dataStart) bytes left)")
            }
            offset += blocks * block + (bytes + block - 1) / block * block
        }
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}
