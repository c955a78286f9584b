import Foundation

/// Limits that keep a hostile pickle from exhausting memory or the stack.
public struct PickleLimits: Sendable {
    /// Most MARKs open at once.
    public var maxMarkDepth = 10_000
    /// Most memo entries.
    public var maxMemo = 1 << 24
    /// Most nodes in the graph.
    public var maxNodes = 1 << 26
    /// Longest string, bytes or big integer, in bytes.
    public var maxStringLength = 1 << 30
    /// How deep any walk over the graph may go (nesting of containers).
    public var maxNesting = 1_000
    public init() {}
}

/// Decodes a pickle (protocols 0 to 5) into a ``PickleGraph``. Nothing named in the pickle is
/// imported or called: globals become names, REDUCE and NEWOBJ become ``PickleObject`` records.
public struct PickleDecoder {
    private let data: [UInt8]
    private var pos: Int
    private var graph = PickleGraph()
    /// One flat stack; `marks` holds where each open MARK began (the items above the last mark are the current
    /// frame, and pop/top never reach below it). Flat, it grows once instead of once per MARK.
    private var stack: [NodeID] = []
    private var marks: [Int] = []
    /// The memo: indices below `denseMemo.count` live in the array (-1 = empty), which is where every pickler puts
    /// them (0, 1, 2, ...); others, which only a hand-made pickle has, in `sparseMemo`.
    private var denseMemo: [Int] = []
    private var sparseMemo: [Int: NodeID] = [:]
    private var memoCount = 0
    private let limits: PickleLimits
    private var opStart = 0
    private var op: Opcode = .stop

    /// Decodes one pickle from `data`, starting at `offset`.
    public static func decode(_ data: [UInt8], offset: Int = 0, limits: PickleLimits = PickleLimits())
        throws(PickleError) -> PickleGraph
    {
        var d = PickleDecoder(data: data, pos: offset, limits: limits)
        return try d.run().graph
    }

    /// Decodes one pickle from `data` at `offset` and returns the graph and the offset just past STOP
    /// (legacy torch files hold several pickles back to back).
    public static func decodePrefix(_ data: [UInt8], offset: Int, limits: PickleLimits = PickleLimits())
        throws(PickleError) -> (graph: PickleGraph, end: Int)
    {
        var d = PickleDecoder(data: data, pos: offset, limits: limits)
        return try d.run()
    }

    private init(data: [UInt8], pos: Int, limits: PickleLimits) {
        self.data = data
        self.pos = pos
        self.limits = limits
        graph.nodes.reserveCapacity(max(16, data.count / 8))
    }

    // MARK: - Reading primitives

    private mutating func byte() throws(PickleError) -> UInt8 {
        guard pos < data.count else { throw .truncated(offset: pos) }
        let b = data[pos]
        pos += 1
        return b
    }

    private mutating func bytes(_ n: Int) throws(PickleError) -> ArraySlice<UInt8> {
        guard n >= 0 else { throw bad("negative length") }
        guard n <= limits.maxStringLength else {
            throw .limitExceeded(what: "bytes in one value", limit: limits.maxStringLength, offset: opStart)
        }
        guard n <= data.count - pos else { throw .truncated(offset: data.count) }
        defer { pos += n }
        return data[pos..<(pos + n)]
    }

    /// A little-endian unsigned integer of `n` bytes: 1, 2, 4 or 8.
    private mutating func uint(_ n: Int) throws(PickleError) -> UInt64 {
        guard n <= data.count - pos else { throw .truncated(offset: data.count) }
        let at = pos
        pos += n
        return data.withUnsafeBytes { raw in
            switch n {
            case 1: UInt64(raw[at])
            case 2: UInt64(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: at, as: UInt16.self)))
            case 4: UInt64(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: at, as: UInt32.self)))
            default: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: at, as: UInt64.self))
            }
        }
    }

    private mutating func length(_ n: Int) throws(PickleError) -> Int {
        let v = try uint(n)
        guard v <= UInt64(limits.maxStringLength) else {
            throw .limitExceeded(what: "bytes in one value", limit: limits.maxStringLength, offset: opStart)
        }
        return Int(v)
    }

    private mutating func line() throws(PickleError) -> ArraySlice<UInt8> {
        guard let nl = data[pos...].firstIndex(of: 0x0A) else { throw .truncated(offset: data.count) }
        defer { pos = nl + 1 }
        return data[pos..<nl]
    }

    private func bad(_ reason: String) -> PickleError {
        .badArgument(opcode: op.name, offset: opStart, reason: reason)
    }

    private func badStack(_ reason: String) -> PickleError {
        .badStack(opcode: op.name, offset: opStart, reason: reason)
    }

    private func utf8(_ b: ArraySlice<UInt8>) throws(PickleError) -> String {
        guard let s = String(validating: b, as: UTF8.self) else { throw bad("text is not valid UTF-8") }
        return s
    }

    // MARK: - Stack

    private mutating func push(_ node: consuming PickleNode) throws(PickleError) {
        guard graph.nodes.count < limits.maxNodes else {
            throw .limitExceeded(what: "objects", limit: limits.maxNodes, offset: opStart)
        }
        graph.nodes.append(node)
        stack.append(NodeID(graph.nodes.count - 1))
    }

    /// Takes a node out of the graph (leaving None) so that growing its arrays does not copy them: APPENDS and
    /// SETITEMS come in batches of 1,000, and copying the list on each batch would be quadratic.
    private mutating func take(_ id: NodeID) -> PickleNode {
        let node = graph.nodes[id.index]
        graph.nodes[id.index] = .none
        return node
    }

    /// Where the current frame (the items above the last MARK) begins.
    private var frameStart: Int { marks.last ?? 0 }

    private mutating func pop() throws(PickleError) -> NodeID {
        guard stack.count > frameStart else { throw badStack("stack is empty") }
        return stack.removeLast()
    }

    private func top() throws(PickleError) -> NodeID {
        guard stack.count > frameStart, let v = stack.last else { throw badStack("stack is empty") }
        return v
    }

    private mutating func popMark() throws(PickleError) -> [NodeID] {
        guard let start = marks.popLast() else { throw badStack("no MARK before it") }
        let items = Array(stack[start...])
        stack.removeSubrange(start...)
        return items
    }

    private mutating func memoPut(_ index: Int) throws(PickleError) {
        guard index >= 0 else { throw bad("negative memo index") }
        let value = try top().index
        if index == denseMemo.count, sparseMemo.isEmpty {  // what picklers write: 0, 1, 2, ...
            try countMemoEntry()
            denseMemo.append(value)
        } else if index < denseMemo.count {
            if denseMemo[index] < 0 { try countMemoEntry() }
            denseMemo[index] = value
        } else if index < denseMemo.count + 1024, sparseMemo.isEmpty {
            // The dense part grows only by small steps, so a hostile index cannot make it allocate much; once an index
            // went to `sparseMemo` it stops growing, so no index is ever in both.
            try countMemoEntry()
            while denseMemo.count < index { denseMemo.append(-1) }
            denseMemo.append(value)
        } else {
            if sparseMemo[index] == nil { try countMemoEntry() }
            sparseMemo[index] = NodeID(value)
        }
    }

    private mutating func countMemoEntry() throws(PickleError) {
        guard memoCount < limits.maxMemo else {
            throw .limitExceeded(what: "memo entries", limit: limits.maxMemo, offset: opStart)
        }
        memoCount += 1
    }

    private mutating func memoGet(_ index: Int) throws(PickleError) {
        if index >= 0, index < denseMemo.count, denseMemo[index] >= 0 {
            stack.append(NodeID(denseMemo[index]))
            return
        }
        guard let id = sparseMemo[index] else { throw .missingMemo(index: index, offset: opStart) }
        stack.append(id)
    }

    // MARK: - Main loop

    private mutating func run() throws(PickleError) -> (graph: PickleGraph, end: Int) {
        while true {
            opStart = pos
            let b = try byte()
            guard let o = Opcode(rawValue: b) else { throw .unknownOpcode(b, offset: opStart) }
            op = o
            switch o {
            case .proto:
                let v = try byte()
                guard v <= 5 else { throw bad("protocol \(v) is newer than 5") }
            case .frame:
                _ = try uint(8)
            case .stop:
                let root = try pop()
                graph.root = root
                return (graph, pos)
            case .mark:
                guard marks.count < limits.maxMarkDepth else {
                    throw .limitExceeded(what: "nested MARKs", limit: limits.maxMarkDepth, offset: opStart)
                }
                marks.append(stack.count)
            case .pop:
                if stack.count == frameStart { _ = try popMark() } else { _ = try pop() }
            case .popMark:
                _ = try popMark()
            case .dup:
                stack.append(try top())

            // Numbers
            case .none: try push(.none)
            case .newTrue: try push(.bool(true))
            case .newFalse: try push(.bool(false))
            case .binInt: try push(.int(Int64(Int32(bitPattern: UInt32(try uint(4))))))
            case .binInt1: try push(.int(Int64(try byte())))
            case .binInt2: try push(.int(Int64(try uint(2))))
            case .int:
                let text = try ascii(try line())
                if text == "00" { try push(.bool(false)) } else if text == "01" { try push(.bool(true)) } else {
                    try push(try integer(decimal: text))
                }
            case .long:
                var text = try ascii(try line())
                if text.hasSuffix("L") { text.removeLast() }
                try push(try integer(decimal: text))
            case .long1:
                let n = Int(try byte())
                try push(BigInt.node(littleEndian: Array(try bytes(n))))
            case .long4:
                let n = Int(Int32(bitPattern: UInt32(try uint(4))))
                guard n >= 0 else { throw bad("negative length") }
                try push(BigInt.node(littleEndian: Array(try bytes(n))))
            case .float:
                let text = try ascii(try line())
                guard let v = Double(text.trimmingCharacters(in: .whitespaces)) else { throw bad("bad float text") }
                try push(.float(v))
            case .binFloat:
                try push(.float(Double(bitPattern: UInt64(bigEndian: try uint(8)))))

            // Strings and bytes
            // Python 2 `str`: bytes that torch.load decodes with its `encoding` argument, UTF-8 unless the caller
            // says otherwise (torch/serialization.py `load`), strictly: other bytes make torch.load fail.
            case .string:
                try push(.string(try python2Str(try pythonStringLiteral(try line()))))
            case .binString:
                let n = Int(Int32(bitPattern: UInt32(try uint(4))))
                guard n >= 0 else { throw bad("negative length") }
                try push(.string(try python2Str(try bytes(n))))
            case .shortBinString:
                try push(.string(try python2Str(try bytes(Int(try byte())))))
            case .unicode:
                try push(.string(try rawUnicodeEscape(try line())))
            case .binUnicode: try push(.string(try utf8(try bytes(try length(4)))))
            case .shortBinUnicode: try push(.string(try utf8(try bytes(Int(try byte())))))
            case .binUnicode8: try push(.string(try utf8(try bytes(try length(8)))))
            case .binBytes: try push(.bytes(Array(try bytes(try length(4)))))
            case .shortBinBytes: try push(.bytes(Array(try bytes(Int(try byte())))))
            case .binBytes8: try push(.bytes(Array(try bytes(try length(8)))))
            case .byteArray8: try push(.bytearray(Array(try bytes(try length(8)))))
            case .nextBuffer, .readonlyBuffer, .ext1, .ext2, .ext4:
                throw .unsupported(opcode: o.name, offset: opStart)

            // Containers
            case .emptyTuple: try push(.tuple([]))
            case .tuple: try push(.tuple(try popMark()))
            case .tuple1:
                let a = try pop()
                try push(.tuple([a]))
            case .tuple2:
                let b2 = try pop(), a = try pop()
                try push(.tuple([a, b2]))
            case .tuple3:
                let c = try pop(), b2 = try pop(), a = try pop()
                try push(.tuple([a, b2, c]))
            case .emptyList: try push(.list([]))
            case .list: try push(.list(try popMark()))
            case .emptyDict: try push(.dict([]))
            case .dict:
                try push(.dict(try pairs(try popMark())))
            case .emptySet: try push(.set([]))
            case .frozenSet: try push(.frozenset(try popMark()))
            case .append:
                let v = try pop()
                try appendItems([v])
            case .appends:
                let items = try popMark()
                try appendItems(items)
            case .setItem:
                let v = try pop(), k = try pop()
                try setItems([DictEntry(key: k, value: v)])
            case .setItems:
                try setItems(try pairs(try popMark()))
            case .addItems:
                let items = try popMark()
                let target = try top()
                guard var s = takeSet(target) else { throw badStack("ADDITEMS target is not a set") }
                s += items
                graph[target] = .set(s)

            // Memo
            case .put: try memoPut(try decimalInt(try line()))
            case .binPut: try memoPut(Int(try byte()))
            case .longBinPut: try memoPut(Int(try uint(4)))
            case .memoize: try memoPut(memoCount)
            case .get: try memoGet(try decimalInt(try line()))
            case .binGet: try memoGet(Int(try byte()))
            case .longBinGet: try memoGet(Int(try uint(4)))

            // Names and objects
            case .global:
                let module = try utf8(try line()), name = try utf8(try line())
                try push(.global(module: module, name: name))
            case .stackGlobal:
                let n = try pop(), m = try pop()
                guard let name = graph.string(n), let module = graph.string(m) else {
                    throw badStack("STACK_GLOBAL operands are not plain strings")
                }
                try push(.global(module: module, name: name))
            case .reduce:
                let args = try pop(), callable = try pop()
                try push(.object(PickleObject(construction: .reduce, callable: callable, args: args)))
            case .newObj:
                let args = try pop(), cls = try pop()
                try push(.object(PickleObject(construction: .newObj, callable: cls, args: args)))
            case .newObjEx:
                let kwargs = try pop(), args = try pop(), cls = try pop()
                try push(.object(PickleObject(construction: .newObjEx, callable: cls, args: args, kwargs: kwargs)))
            case .inst:
                let module = try utf8(try line()), name = try utf8(try line())
                let items = try popMark()
                let cls = graph.add(.global(module: module, name: name))
                let args = graph.add(.tuple(items))
                try push(.object(PickleObject(construction: .inst, callable: cls, args: args)))
            case .obj:
                let items = try popMark()
                guard let cls = items.first else { throw badStack("OBJ without a class") }
                let args = graph.add(.tuple(Array(items.dropFirst())))
                try push(.object(PickleObject(construction: .obj, callable: cls, args: args)))
            case .build:
                let state = try pop()
                let target = try top()
                guard case .object(var o) = graph[target] else { throw badStack("BUILD target is not an object") }
                guard o.state == nil else { throw badStack("object is built twice") }
                o.state = state
                graph[target] = .object(o)
            case .persID:
                let pid = graph.add(.string(try ascii(try line())))
                try push(.persistent(pid: pid))
            case .binPersID:
                let pid = try pop()
                try push(.persistent(pid: pid))
            }
        }
    }

    private func pairs(_ items: [NodeID]) throws(PickleError) -> [DictEntry] {
        guard items.count % 2 == 0 else { throw badStack("odd number of items for a dict") }
        return stride(from: 0, to: items.count, by: 2).map { DictEntry(key: items[$0], value: items[$0 + 1]) }
    }

    // The container is taken out of the graph while it grows, so that its array is uniquely referenced and
    // grows in place: one APPEND or SETITEM at a time (protocols 0 and 1) must stay linear, not quadratic.
    private mutating func takeList(_ id: NodeID) -> [NodeID]? {
        guard case .list(let l) = graph[id] else { return nil }
        graph[id] = .none
        return l
    }

    private mutating func takeDict(_ id: NodeID) -> [DictEntry]? {
        guard case .dict(let d) = graph[id] else { return nil }
        graph[id] = .none
        return d
    }

    private mutating func takeSet(_ id: NodeID) -> [NodeID]? {
        guard case .set(let s) = graph[id] else { return nil }
        graph[id] = .none
        return s
    }

    private mutating func takeObject(_ id: NodeID) -> PickleObject? {
        guard case .object(let o) = graph[id] else { return nil }
        graph[id] = .none
        return o
    }

    private mutating func appendItems(_ items: [NodeID]) throws(PickleError) {
        let target = try top()
        if var l = takeList(target) {
            l += items
            graph[target] = .list(l)
        } else if var o = takeObject(target) {
            o.listItems += items
            graph[target] = .object(o)
        } else {
            throw badStack("append target is not a list")
        }
    }

    private mutating func setItems(_ entries: [DictEntry]) throws(PickleError) {
        let target = try top()
        if var d = takeDict(target) {
            d += entries
            graph[target] = .dict(d)
        } else if var o = takeObject(target) {
            o.dictItems += entries
            graph[target] = .object(o)
        } else {
            throw badStack("setitem target is not a dict")
        }
    }

    // MARK: - Text arguments (protocol 0)

    private func ascii(_ b: ArraySlice<UInt8>) throws(PickleError) -> String {
        guard b.allSatisfy({ $0 < 0x80 }) else { throw bad("text argument is not ASCII") }
        return String(decoding: b, as: UTF8.self)
    }

    private func decimalInt(_ b: ArraySlice<UInt8>) throws(PickleError) -> Int {
        guard let v = Int(try ascii(b)), v >= 0 else { throw bad("bad memo index") }
        return v
    }

    private func integer(decimal text: String) throws(PickleError) -> PickleNode {
        if let v = Int64(text) { return .int(v) }
        // CPython refuses longer integer text (sys.int_info.default_max_str_digits); the conversion is quadratic.
        guard text.utf8.count <= BigInt.maxDecimalDigits + 2 else {
            throw bad("integer text is longer than \(BigInt.maxDecimalDigits) digits")
        }
        guard let bytes = BigInt.littleEndianBytes(decimal: text) else { throw bad("bad integer text") }
        return BigInt.node(littleEndian: bytes)
    }

    private func latin1(_ b: ArraySlice<UInt8>) -> String { Self.latin1(b) }

    private func rawUnicodeEscape(_ b: ArraySlice<UInt8>) throws(PickleError) -> String {
        guard let s = Self.rawUnicodeEscape(b) else { throw bad("bad \\u escape") }
        return s
    }

    private func python2Str(_ b: ArraySlice<UInt8>) throws(PickleError) -> String {
        guard let s = Self.python2Str(b) else {
            throw bad("Python 2 str is not UTF-8, and torch.load decodes it as UTF-8 (it fails on this file)")
        }
        return s
    }

    /// A Python 2 `str` as torch.load decodes it: UTF-8, strictly; nil when it is not UTF-8.
    static func python2Str(_ b: ArraySlice<UInt8>) -> String? { String(validating: b, as: UTF8.self) }

    private func pythonStringLiteral(_ b: ArraySlice<UInt8>) throws(PickleError) -> ArraySlice<UInt8> {
        switch Self.pythonStringLiteral(b) {
        case .success(let s): return s
        case .failure(let reason): throw bad(reason.text)
        }
    }

    /// Text read as Latin-1, one scalar a byte (BINSTRING, SHORT_BINSTRING).
    static func latin1(_ b: ArraySlice<UInt8>) -> String {
        String(String.UnicodeScalarView(b.map { Unicode.Scalar($0) }))
    }

    /// The UNICODE opcode's raw-unicode-escape text; nil on a bad `\\u` escape.
    static func rawUnicodeEscape(_ b: ArraySlice<UInt8>) -> String? {
        var out = String.UnicodeScalarView()
        var i = b.startIndex
        while i < b.endIndex {
            let c = b[i]
            if c == 0x5C, i + 1 < b.endIndex, b[i + 1] == 0x75 || b[i + 1] == 0x55 {
                let n = b[i + 1] == 0x75 ? 4 : 8
                guard i + 2 + n <= b.endIndex,
                      let v = UInt32(String(decoding: b[(i + 2)..<(i + 2 + n)], as: UTF8.self), radix: 16),
                      let scalar = Unicode.Scalar(v)
                else { return nil }
                out.append(scalar)
                i += 2 + n
            } else {
                out.append(Unicode.Scalar(c))
                i += 1
            }
        }
        return String(out)
    }

    struct LiteralError: Error { var text: String }

    /// The STRING opcode's quoted Python literal, as the bytes its escapes spell (`codecs.escape_decode`).
    static func pythonStringLiteral(_ b: ArraySlice<UInt8>) -> Result<ArraySlice<UInt8>, LiteralError> {
        guard b.count >= 2, let q = b.first, q == 0x27 || q == 0x22, b.last == q else {
            return .failure(LiteralError(text: "string is not quoted"))
        }
        let body = b.dropFirst().dropLast()
        var out: [UInt8] = []
        var i = body.startIndex
        while i < body.endIndex {
            let c = body[i]
            guard c == 0x5C, i + 1 < body.endIndex else { out.append(c); i += 1; continue }
            let e = body[i + 1]
            i += 2
            switch e {
            case 0x6E: out.append(0x0A)
            case 0x74: out.append(0x09)
            case 0x72: out.append(0x0D)
            case 0x30...0x37:
                var v = Int(e - 0x30), k = 0
                while k < 2, i < body.endIndex, (0x30...0x37).contains(body[i]) { v = v * 8 + Int(body[i] - 0x30); i += 1; k += 1 }
                out.append(UInt8(v & 0xFF))
            case 0x78:
                guard i + 2 <= body.endIndex, let v = UInt8(String(decoding: body[i..<(i + 2)], as: UTF8.self), radix: 16)
                else { return .failure(LiteralError(text: "bad \\x escape")) }
                out.append(v)
                i += 2
            case 0x5C, 0x27, 0x22: out.append(e)
            case 0x61: out.append(0x07)
            case 0x62: out.append(0x08)
            case 0x66: out.append(0x0C)
            case 0x76: out.append(0x0B)
            default: out.append(0x5C); out.append(e)
            }
        }
        return .success(out[...])
    }
}

/// Conversions for integers that do not fit Int64, kept as little-endian two's complement bytes.
public enum BigInt {
    /// The most digits converted between text and integers, as CPython's `sys.int_info.default_max_str_digits`.
    public static let maxDecimalDigits = 4300
    /// Bytes of the largest integer whose decimal text stays within ``maxDecimalDigits``.
    public static let maxDecimalBytes = 1785

    /// The node for a LONG1/LONG4 payload: `.int` when it fits Int64, else `.bigInt` with minimal bytes.
    public static func node(littleEndian bytes: [UInt8]) -> PickleNode {
        var b = bytes
        if b.isEmpty { return .int(0) }
        // Trim redundant sign bytes.
        while b.count > 1 {
            let top = b[b.count - 1], next = b[b.count - 2]
            if (top == 0x00 && next & 0x80 == 0) || (top == 0xFF && next & 0x80 != 0) { b.removeLast() } else { break }
        }
        if b.count <= 8 {
            var v: UInt64 = b.last! & 0x80 != 0 ? ~0 : 0
            for (i, x) in b.enumerated() {
                v &= ~(UInt64(0xFF) << (8 * UInt64(i)))
                v |= UInt64(x) << (8 * UInt64(i))
            }
            return .int(Int64(bitPattern: v))
        }
        return .bigInt(b)
    }

    /// Minimal little-endian two's complement bytes of an Int64 (CPython's `encode_long`).
    public static func littleEndianBytes(_ v: Int64) -> [UInt8] {
        if v == 0 { return [] }
        var out: [UInt8] = []
        var x = v
        repeat {
            out.append(UInt8(truncatingIfNeeded: x))
            x >>= 8
        } while !(x == 0 && out.last! & 0x80 == 0) && !(x == -1 && out.last! & 0x80 != 0)
        return out
    }

    /// Parses a decimal integer of any size.
    public static func littleEndianBytes(decimal text: String) -> [UInt8]? {
        var digits = Substring(text)
        var negative = false
        if digits.first == "-" { negative = true; digits = digits.dropFirst() } else if digits.first == "+" { digits = digits.dropFirst() }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        var mag: [UInt8] = []  // little-endian magnitude
        for ch in digits.utf8 {
            var carry = Int(ch - 0x30)
            for i in 0..<mag.count {
                let v = Int(mag[i]) * 10 + carry
                mag[i] = UInt8(v & 0xFF)
                carry = v >> 8
            }
            while carry > 0 { mag.append(UInt8(carry & 0xFF)); carry >>= 8 }
        }
        mag.append(0)  // room for the sign bit
        if negative {
            var carry = 1
            for i in 0..<mag.count {
                let v = Int(~mag[i]) + carry
                mag[i] = UInt8(v & 0xFF)
                carry = v >> 8
            }
        }
        return mag
    }

    /// The decimal text of little-endian two's complement bytes.
    public static func decimal(littleEndian bytes: [UInt8]) -> String {
        guard !bytes.isEmpty else { return "0" }
        var mag = bytes
        let negative = bytes.last! & 0x80 != 0
        if negative {
            var carry = 1
            for i in 0..<mag.count {
                let v = Int(~mag[i]) + carry
                mag[i] = UInt8(v & 0xFF)
                carry = v >> 8
            }
        }
        var digits: [UInt8] = []
        var big = Array(mag.reversed())  // big-endian
        while big.contains(where: { $0 != 0 }) {
            var rem = 0
            for i in 0..<big.count {
                let v = rem * 256 + Int(big[i])
                big[i] = UInt8(v / 10)
                rem = v % 10
            }
            digits.append(UInt8(rem) + 0x30)
        }
        if digits.isEmpty { digits = [0x30] }
        return (negative ? "-" : "") + String(decoding: digits.reversed(), as: UTF8.self)
    }
}
