/// Python's own spelling of the values the plain-data table (``PlainData``) converts, computed from what the pickle
/// holds, without Python: `str(path)` of a pathlib path, `.isoformat()` of a `datetime` value, `.tolist()` of a numpy
/// value. Pure functions of their inputs.
enum PlainDecoders {
    // MARK: - pathlib

    /// `str(cls(*args))` for a pathlib class called with `args`, as `PurePath.__reduce__` pickles it: the normalised
    /// parts (Python <= 3.12: `('/', 'a', 'b')`) or the raw arguments (3.13+: `('/a//b',)`). Joined as
    /// `posixpath.join`/`ntpath.join` join them, then normalised as pathlib parses a path: empty and `.` parts out,
    /// `..` kept, POSIX's two leading slashes kept (three or more are one), a Windows UNC drive always with its root.
    /// (CPython Lib/pathlib.py `_parse_parts`/`_format_parsed_parts`, Lib/ntpath.py `join`/`splitroot`.)
    static func pathString(_ args: [String], windows: Bool) -> String {
        windows ? windowsPath(args) : posixPath(args)
    }

    private static func posixPath(_ args: [String]) -> String {
        var joined = ""
        for a in args {
            if a.hasPrefix("/") || joined.isEmpty { joined = a } else if joined.hasSuffix("/") { joined += a } else { joined += "/" + a }
        }
        var root = ""
        if joined.hasPrefix("//") && !joined.hasPrefix("///") { root = "//" } else if joined.hasPrefix("/") { root = "/" }
        let parts = joined.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        let s = root + parts.joined(separator: "/")
        return s.isEmpty ? "." : s
    }

    /// `ntpath.splitroot` (3.12) with `/` already turned into `\`: drive, root, tail.
    private static func windowsSplitRoot(_ p: String) -> (drive: String, root: String, tail: String) {
        let c = Array(p)
        if c.first == "\\" {
            if c.count > 1 && c[1] == "\\" {
                // UNC: \\server\share\rest
                guard let i1 = c[2...].firstIndex(of: "\\") else { return (p, "", "") }
                let i2 = c[(i1 + 1)...].firstIndex(of: "\\") ?? c.count
                return (String(c[..<i2]), i2 < c.count ? "\\" : "", i2 < c.count ? String(c[(i2 + 1)...]) : "")
            }
            return ("", "\\", String(c.dropFirst()))
        }
        if c.count >= 2 && c[1] == ":" {
            if c.count >= 3 && c[2] == "\\" { return (String(c[..<2]), "\\", String(c[3...])) }
            return (String(c[..<2]), "", String(c[2...]))
        }
        return ("", "", p)
    }

    private static func windowsPath(_ args: [String]) -> String {
        var drive = "", root = "", path = ""
        for (i, raw) in args.enumerated() {
            let p = raw.replacingOccurrences(of: "/", with: "\\")
            let (d, r, t) = windowsSplitRoot(p)
            if i == 0 { (drive, root, path) = (d, r, t); continue }
            if !r.isEmpty {
                if !d.isEmpty || drive.isEmpty { drive = d }
                root = r
                path = t
                continue
            } else if !d.isEmpty && d != drive {
                if d.lowercased() != drive.lowercased() {
                    (drive, root, path) = (d, r, t)
                    continue
                }
                drive = d
            }
            if !path.isEmpty && !path.hasSuffix("\\") { path += "\\" }
            path += t
        }
        if drive.hasPrefix("\\\\") { root = "\\" }  // pathlib: a UNC drive always has a root
        let parts = path.split(separator: "\\", omittingEmptySubsequences: true).filter { $0 != "." }
        let s = drive + root + parts.joined(separator: "\\")
        return s.isEmpty ? "." : s
    }

    // MARK: - datetime

    /// `date.isoformat()` of `date`'s pickled state (year as 2 bytes big-endian, month, day).
    static func isoDate(_ b: [UInt8]) -> String? {
        guard b.count == 4 else { return nil }
        let year = Int(b[0]) << 8 | Int(b[1]), month = Int(b[2]), day = Int(b[3])
        guard (1...12).contains(month), (1...31).contains(day) else { return nil }
        return pad(year, 4) + "-" + pad(month, 2) + "-" + pad(day, 2)
    }

    /// `time.isoformat()` of `time`'s pickled state (hour with the fold bit 128, minute, second, microseconds as 3
    /// bytes big-endian), then the UTC offset as `isoformat` writes it (see ``isoOffset(microseconds:)``).
    static func isoTime(_ b: [UInt8], offset: Int64?) -> String? {
        guard b.count == 6 else { return nil }
        return clock(hour: Int(b[0] & 0x7F), minute: Int(b[1]), second: Int(b[2]),
                     micro: Int(b[3]) << 16 | Int(b[4]) << 8 | Int(b[5])).map { $0 + (offset.map(isoOffset) ?? "") }
    }

    /// `datetime.isoformat()` of `datetime`'s pickled state (the date's 4 bytes, the month carrying the fold bit, then
    /// hour, minute, second, microseconds as 3 bytes), with the UTC offset when it has a `timezone`.
    static func isoDateTime(_ b: [UInt8], offset: Int64?) -> String? {
        guard b.count == 10, let date = isoDate([b[0], b[1], b[2] & 0x7F, b[3]]),
              let time = clock(hour: Int(b[4]), minute: Int(b[5]), second: Int(b[6]),
                               micro: Int(b[7]) << 16 | Int(b[8]) << 8 | Int(b[9]))
        else { return nil }
        return date + "T" + time + (offset.map(isoOffset) ?? "")
    }

    private static func clock(hour: Int, minute: Int, second: Int, micro: Int) -> String? {
        guard hour < 24, minute < 60, second < 60, micro < 1_000_000 else { return nil }
        return pad(hour, 2) + ":" + pad(minute, 2) + ":" + pad(second, 2) + (micro != 0 ? "." + pad(micro, 6) : "")
    }

    /// A UTC offset as `isoformat` writes it (CPython Lib/_pydatetime.py `_format_offset`): `+HH:MM`, then `:SS` and
    /// `.ffffff` only when they are not zero.
    static func isoOffset(microseconds: Int64) -> String {
        let sign = microseconds < 0 ? "-" : "+"
        let total = microseconds.magnitude
        let us = Int(total % 1_000_000), seconds = Int(total / 1_000_000)
        var s = sign + pad(seconds / 3600, 2) + ":" + pad(seconds % 3600 / 60, 2)
        if seconds % 60 != 0 || us != 0 {
            s += ":" + pad(seconds % 60, 2)
            if us != 0 { s += "." + pad(us, 6) }
        }
        return s
    }

    private static func pad(_ v: Int, _ width: Int) -> String {
        let s = String(v)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }

    // MARK: - numpy

    /// The Python values `.tolist()` gives for the elements of a numpy value of dtype `code` (`f8`, `i4`, `u1`, `b1`,
    /// `c16`, `U5`, `S3`) stored in `raw`: `int` for integer dtypes (beyond Int64 a big int), `float` for floating
    /// ones, `bool`, `complex` (as a `builtins.complex(re, im)` call, which weights_only loads), `str` for `U` (UCS-4,
    /// trailing NULs out) and `bytes` for `S` (trailing NULs out). Nil for other dtypes (longdouble, datetime64,
    /// structured, object).
    static func numpyElements(_ raw: [UInt8], code: String, bigEndian: Bool, in g: inout PickleGraph) -> [PickleNode]? {
        guard let kind = code.first, let n = Int(code.dropFirst()), n > 0 else { return nil }
        let size = kind == "U" ? 4 * n : n
        guard raw.count % size == 0 else { return nil }
        let order: ByteCursor.Endianness = bigEndian ? .big : .little
        var out: [PickleNode] = []
        out.reserveCapacity(raw.count / size)
        var c = ByteCursor(raw)
        func uint(_ w: Int) -> UInt64? { try? c.uint(width: w, order) }
        while !c.isAtEnd {
            switch (kind, size) {
            case ("b", 1):
                guard let u = uint(1) else { return nil }
                out.append(.bool(u != 0))
            case ("i", 1...8):
                guard let u = uint(size) else { return nil }
                let shift = UInt64(64 - 8 * size)
                out.append(.int(Int64(bitPattern: u << shift) >> Int64(shift)))
            case ("u", 1...8):
                guard let u = uint(size) else { return nil }
                if u <= UInt64(Int64.max) { out.append(.int(Int64(u))) } else {
                    out.append(BigInt.node(littleEndian: (0..<8).map { UInt8(truncatingIfNeeded: u >> (8 * UInt64($0))) } + [0]))
                }
            case ("f", 2), ("f", 4), ("f", 8):
                guard let v = float(&c, size, order) else { return nil }
                out.append(.float(v))
            case ("c", 8), ("c", 16):
                guard let re = float(&c, size / 2, order), let im = float(&c, size / 2, order) else { return nil }
                let args = g.add(.tuple([g.add(.float(re)), g.add(.float(im))]))
                out.append(.object(PickleObject(construction: .reduce,
                                                callable: g.add(.global(module: "builtins", name: "complex")), args: args)))
            case ("U", _):
                var scalars = String.UnicodeScalarView()
                for _ in 0..<n {
                    guard let u = uint(4), let s = Unicode.Scalar(UInt32(u)) else { return nil }
                    scalars.append(s)
                }
                var text = String(scalars)
                while text.unicodeScalars.last == "\0" { text.unicodeScalars.removeLast() }
                out.append(.string(text))
            case ("S", _):
                guard let slice = try? c.bytes(size) else { return nil }
                var b = Array(slice)
                while b.last == 0 { b.removeLast() }
                out.append(.bytes(b))
            default:
                return nil
            }
        }
        return out
    }

    private static func float(_ c: inout ByteCursor, _ size: Int, _ order: ByteCursor.Endianness) -> Double? {
        guard let u = try? c.uint(width: size, order) else { return nil }
        switch size {
        case 8: return Double(bitPattern: u)
        case 4: return Double(Float(bitPattern: UInt32(u)))
        case 2: return Double(halfToFloat(UInt16(u)))
        default: return nil
        }
    }

    /// numpy's name of a dtype code (`f4` is `float32`, `U5` is `str_`), for the summary.
    static func numpyTypeName(_ code: String) -> String {
        guard let kind = code.first, let n = Int(code.dropFirst()) else { return code }
        switch kind {
        case "b": return "bool"
        case "i": return "int\(8 * n)"
        case "u": return "uint\(8 * n)"
        case "f": return "float\(8 * n)"
        case "c": return "complex\(8 * n)"
        case "U": return "str_"
        case "S": return "bytes_"
        case "O": return "object"
        default: return code
        }
    }

    /// Row-major (C order) nesting of `items` into lists of `shape` (`.tolist()`); `fortran`: `items` are in column-major
    /// order (the array's flag in its pickled state), as numpy stores a Fortran-ordered array's bytes.
    static func nest(_ items: [NodeID], shape: [Int], fortran: Bool, in g: inout PickleGraph) -> NodeID? {
        let count = shape.reduce(1, *)
        guard items.count == count, shape.allSatisfy({ $0 >= 0 }) else { return nil }
        var ordered = items
        if fortran && shape.count > 1 {
            // The element at C-order position i: its index in each dimension, then its column-major position.
            ordered = (0..<count).map { i in
                var rest = i, f = 0, step = 1
                var idx = [Int](repeating: 0, count: shape.count)
                for d in stride(from: shape.count - 1, through: 0, by: -1) { idx[d] = rest % shape[d]; rest /= shape[d] }
                for d in 0..<shape.count { f += idx[d] * step; step *= shape[d] }
                return items[f]
            }
        }
        func build(_ dim: Int, _ start: Int) -> NodeID {
            if dim == shape.count { return ordered[start] }
            let inner = shape[(dim + 1)...].reduce(1, *)
            return g.add(.list((0..<shape[dim]).map { build(dim + 1, start + $0 * inner) }))
        }
        return build(0, 0)
    }
}
