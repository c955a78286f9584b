/// Plain values in a checkpoint: numbers, strings, bytes, and numpy scalars and arrays
/// (YOLOv5's `best_fitness`), read from the graph without numpy.
extension PickleGraph {
    /// The bytes of a bytes node, or of protocol 2's `_codecs.encode(text, 'latin1')` spelling.
    public func bytesValue(_ id: NodeID) -> [UInt8]? {
        bytesValue(id, depth: 0)
    }

    private func bytesValue(_ id: NodeID, depth: Int) -> [UInt8]? {
        guard depth < 2 else { return nil }  // `bytearray(bytes)`: one call around one value
        switch self[id] {
        case .bytes(let b), .bytearray(let b): return b
        case .object(let o):
            guard o.construction == .reduce, let fn = globalName(o.callable) else { return nil }
            let args = sequence(o.args) ?? []
            if fn == "_codecs.encode", args.count == 2, let text = string(args[0]),
               let enc = string(args[1]), enc == "latin1" || enc == "latin-1" {
                var out: [UInt8] = []
                out.reserveCapacity(text.unicodeScalars.count)
                for u in text.unicodeScalars {
                    guard u.value < 256 else { return nil }
                    out.append(UInt8(u.value))
                }
                return out
            }
            if (fn == "__builtin__.bytes" || fn == "builtins.bytes"), args.isEmpty { return [] }
            if (fn == "__builtin__.bytearray" || fn == "builtins.bytearray") {
                return args.isEmpty ? [] : bytesValue(args[0], depth: depth + 1)
            }
            return nil
        default:
            return nil
        }
    }

    /// A numpy dtype node: `numpy.dtype('f8', False, True)` with state `(3, '<', ...)`.
    /// Returns its type code (`f8`, `i4`, `b1`) and whether it is big-endian.
    func numpyDType(_ id: NodeID) -> (code: String, bigEndian: Bool)? {
        guard case .object(let o) = self[id], let fn = globalName(o.callable), fn.hasSuffix(".dtype"),
              fn.hasPrefix("numpy"), let args = sequence(o.args), let code = args.first.flatMap({ string($0) })
        else { return nil }
        var big = false
        if let s = o.state, let st = sequence(s), st.count > 1, let order = string(st[1]) { big = order == ">" }
        return (code, big)
    }

    /// Decodes little numbers of a numpy dtype from raw bytes.
    func numpyNumbers(_ raw: [UInt8], code: String, bigEndian: Bool) -> [Double]? {
        // Numbers of 1 to 8 bytes (numpy's longdouble and complex types are not read).
        guard let kind = code.first, let size = Int(code.dropFirst()), (1...8).contains(size) else { return nil }
        guard raw.count % size == 0 else { return nil }
        var out: [Double] = []
        out.reserveCapacity(raw.count / size)
        var c = ByteCursor(raw)
        while !c.isAtEnd {
            guard let u = try? c.uint(width: size, bigEndian ? .big : .little) else { return nil }
            switch (kind, size) {
            case ("f", 8): out.append(Double(bitPattern: u))
            case ("f", 4): out.append(Double(Float(bitPattern: UInt32(u))))
            case ("f", 2): out.append(Double(halfToFloat(UInt16(u))))
            case ("i", _):
                let shift = UInt64(64 - 8 * size)
                out.append(Double(Int64(bitPattern: u << shift) >> Int64(shift)))
            case ("u", _), ("b", 1): out.append(Double(u))
            default: return nil
            }
        }
        return out
    }

    /// A numpy array (`numpy.core.multiarray._reconstruct` + BUILD) or scalar
    /// (`numpy.core.multiarray.scalar`): shape and values as doubles.
    public func numpyValue(_ id: NodeID) -> (shape: [Int], values: [Double])? {
        guard case .object(let o) = self[id], let fn = globalName(o.callable), fn.hasPrefix("numpy") else {
            return nil
        }
        let args = sequence(o.args) ?? []
        if fn.hasSuffix("multiarray.scalar"), args.count == 2, let dt = numpyDType(args[0]),
           let raw = bytesValue(args[1]), let v = numpyNumbers(raw, code: dt.code, bigEndian: dt.bigEndian) {
            return ([], v)
        }
        if fn.hasSuffix("multiarray._reconstruct"), let s = o.state, let st = sequence(s), st.count == 5,
           let shapeIDs = sequence(st[1]), let dt = numpyDType(st[2]), let raw = bytesValue(st[4]),
           let v = numpyNumbers(raw, code: dt.code, bigEndian: dt.bigEndian) {
            let shape = shapeIDs.compactMap { int($0) }.map { Int($0) }
            return (shape, v)
        }
        return nil
    }

    /// A scalar as JSON: int, float, bool, a big int, or a numpy value of exactly one element.
    public func scalarJSON(_ id: NodeID) -> JSONValue? {
        switch self[id] {
        case .int(let v): return .int(v)
        case .bigInt(let b):
            // Past CPython's digit limit, as Python itself does: the conversion would take quadratic time.
            return b.count <= BigInt.maxDecimalBytes ? .bigInt(BigInt.decimal(littleEndian: b)) : nil
        case .float(let d): return .double(d)
        case .bool(let b): return .bool(b)
        default:
            if let (_, values) = numpyValue(id), values.count == 1 { return .double(values[0]) }
            return nil
        }
    }
}

/// IEEE half to float, exact.
func halfToFloat(_ h: UInt16) -> Float { Float(Float16(bitPattern: h)) }
