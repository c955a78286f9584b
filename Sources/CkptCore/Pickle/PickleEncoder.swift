/// Writes a ``PickleGraph`` as a protocol 2 pickle the way CPython's `pickle.Pickler(protocol=2)`
/// writes the same objects: memo entries for every container, string and global, BINGET for an
/// object met again, and only the opcodes `torch.load(weights_only=True)` accepts for the
/// values torch's allow-list covers (bytes via `_codecs.encode`, sets via `builtins.set`).
public struct PickleEncoder {
    private let graph: PickleGraph
    private var out: [UInt8] = []
    private var memo: [NodeID: Int] = [:]
    private var globalMemo: [String: Int] = [:]
    private var latin1Memo: Int?
    private var memoCount = 0
    private var inProgress = Set<NodeID>()
    private let maxNesting: Int

    /// Encodes the graph from its root.
    public static func encode(_ graph: PickleGraph, maxNesting: Int = PickleLimits().maxNesting)
        throws(PickleError) -> [UInt8]
    {
        var e = PickleEncoder(graph: graph, maxNesting: maxNesting)
        e.out.reserveCapacity(graph.nodes.count * 8)
        e.out += [Opcode.proto.rawValue, 2]
        try e.save(graph.root, depth: 0)
        e.out.append(Opcode.stop.rawValue)
        return e.out
    }

    private init(graph: PickleGraph, maxNesting: Int) {
        self.graph = graph
        self.maxNesting = maxNesting
    }

    // MARK: - Primitives

    private mutating func op(_ o: Opcode) { out.append(o.rawValue) }

    private mutating func le32(_ v: UInt32) {
        out += [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)]
    }

    private mutating func put() -> Int {
        let idx = memoCount
        memoCount += 1
        if idx < 256 { out += [Opcode.binPut.rawValue, UInt8(idx)] } else { op(.longBinPut); le32(UInt32(idx)) }
        return idx
    }

    private mutating func get(_ idx: Int) {
        if idx < 256 { out += [Opcode.binGet.rawValue, UInt8(idx)] } else { op(.longBinGet); le32(UInt32(idx)) }
    }

    private mutating func memoize(_ id: NodeID) { memo[id] = put() }

    private mutating func writeInt(_ v: Int64) {
        if v >= 0 && v < 256 {
            out += [Opcode.binInt1.rawValue, UInt8(v)]
        } else if v >= 0 && v < 65536 {
            out += [Opcode.binInt2.rawValue, UInt8(v & 0xFF), UInt8(v >> 8)]
        } else if v >= Int64(Int32.min) && v <= Int64(Int32.max) {
            op(.binInt); le32(UInt32(bitPattern: Int32(v)))
        } else {
            writeLong(BigInt.littleEndianBytes(v))
        }
    }

    private mutating func writeLong(_ bytes: [UInt8]) {
        if bytes.count < 256 { out += [Opcode.long1.rawValue, UInt8(bytes.count)] } else { op(.long4); le32(UInt32(bytes.count)) }
        out += bytes
    }

    private mutating func writeUnicode(_ s: String) {
        let u = Array(s.utf8)
        op(.binUnicode); le32(UInt32(u.count)); out += u
    }

    /// GLOBAL and INST end each name at a newline, so a name holding one (possible only through protocol 4's
    /// STACK_GLOBAL) cannot be written as protocol 2 without turning into other opcodes.
    private func checkGlobalText(_ module: String, _ name: String) throws(PickleError) {
        guard !module.utf8.contains(0x0A), !name.utf8.contains(0x0A) else {
            throw .unencodable("global name \(String(reflecting: module + "." + name)) contains a newline")
        }
    }

    private mutating func writeGlobal(_ module: String, _ name: String) {
        let key = module + "\n" + name
        if let idx = globalMemo[key] { get(idx); return }
        op(.global); out += Array(module.utf8); out.append(0x0A); out += Array(name.utf8); out.append(0x0A)
        globalMemo[key] = put()
    }

    /// `_codecs.encode(latin1_text, 'latin1')`, the protocol 2 spelling of bytes.
    private mutating func writeBytes(_ b: [UInt8]) {
        if b.isEmpty {
            writeGlobal("__builtin__", "bytes"); op(.emptyTuple); op(.reduce)
            return
        }
        writeGlobal("_codecs", "encode")
        writeUnicode(String(String.UnicodeScalarView(b.map { Unicode.Scalar($0) }))); _ = put()
        if let l = latin1Memo { get(l) } else { writeUnicode("latin1"); latin1Memo = put() }
        op(.tuple2); _ = put()
        op(.reduce)
    }

    /// `builtins.set([...])` and the like: callable, one list argument, REDUCE.
    private mutating func writeReduceOfList(_ module: String, _ name: String, _ items: [NodeID], depth: Int) throws(PickleError) {
        writeGlobal(module, name)
        op(.emptyList); _ = put()
        try batch(items, depth: depth, one: .append, many: .appends)
        op(.tuple1); _ = put()
        op(.reduce)
    }

    private mutating func batch(_ items: [NodeID], depth: Int, one: Opcode, many: Opcode) throws(PickleError) {
        var i = 0
        while i < items.count {
            let n = min(1000, items.count - i)
            if n > 1 {
                op(.mark)
                for id in items[i..<(i + n)] { try save(id, depth: depth + 1) }
                op(many)
            } else {
                try save(items[i], depth: depth + 1)
                op(one)
            }
            i += n
        }
    }

    private mutating func batchItems(_ entries: [DictEntry], depth: Int) throws(PickleError) {
        var i = 0
        while i < entries.count {
            let n = min(1000, entries.count - i)
            if n > 1 { op(.mark) }
            for e in entries[i..<(i + n)] {
                try save(e.key, depth: depth + 1)
                try save(e.value, depth: depth + 1)
            }
            op(n > 1 ? .setItems : .setItem)
            i += n
        }
    }

    // MARK: - Nodes

    private mutating func save(_ id: NodeID, depth: Int) throws(PickleError) {
        guard depth <= maxNesting else {
            throw .limitExceeded(what: "levels of nesting", limit: maxNesting, offset: 0)
        }
        if let idx = memo[id] { get(idx); return }
        switch graph[id] {
        case .none: op(.none)
        case .bool(let b): op(b ? .newTrue : .newFalse)
        case .int(let v): writeInt(v)
        case .bigInt(let b): writeLong(b)
        case .float(let d):
            op(.binFloat)
            let bits = d.bitPattern
            for s in stride(from: 56, through: 0, by: -8) { out.append(UInt8((bits >> UInt64(s)) & 0xFF)) }
        case .string(let s):
            writeUnicode(s); memoize(id)
        case .bytes(let b):
            writeBytes(b); memoize(id)
        case .bytearray(let b):
            writeGlobal("__builtin__", "bytearray")
            if b.isEmpty { op(.emptyTuple) } else {
                writeBytes(b); _ = put()
                op(.tuple1); _ = put()
            }
            op(.reduce); memoize(id)
        case .global(let m, let n):
            try checkGlobalText(m, n)
            writeGlobal(m, n)
            memo[id] = globalMemo[m + "\n" + n]
        case .tuple(let items):
            if items.isEmpty { op(.emptyTuple); return }
            guard inProgress.insert(id).inserted else { throw .unencodable("a tuple contains itself") }
            if items.count <= 3 {
                for item in items { try save(item, depth: depth + 1) }
                inProgress.remove(id)
                if let idx = memo[id] {
                    // Memoized while saving its items (only through a recursive container).
                    for _ in items { op(.pop) }
                    get(idx)
                    return
                }
                op([Opcode.tuple1, .tuple2, .tuple3][items.count - 1])
            } else {
                op(.mark)
                for item in items { try save(item, depth: depth + 1) }
                inProgress.remove(id)
                op(.tuple)
            }
            memoize(id)
        case .list(let items):
            op(.emptyList); memoize(id)
            try batch(items, depth: depth, one: .append, many: .appends)
        case .dict(let entries):
            op(.emptyDict); memoize(id)
            try batchItems(entries, depth: depth)
        case .set(let items):
            try writeReduceOfList("__builtin__", "set", items, depth: depth); memoize(id)
        case .frozenset(let items):
            try writeReduceOfList("__builtin__", "frozenset", items, depth: depth); memoize(id)
        case .persistent(let pid):
            try save(pid, depth: depth + 1)
            op(.binPersID)
        case .object(let o):
            try saveObject(id, o, depth: depth)
        }
    }

    private mutating func saveObject(_ id: NodeID, _ o: PickleObject, depth: Int) throws(PickleError) {
        guard inProgress.insert(id).inserted else { throw .unencodable("an object is its own constructor argument") }
        switch o.construction {
        case .reduce:
            try save(o.callable, depth: depth + 1)
            try save(o.args, depth: depth + 1)
            op(.reduce)
        case .newObj:
            try save(o.callable, depth: depth + 1)
            try save(o.args, depth: depth + 1)
            op(.newObj)
        case .newObjEx:
            try save(o.callable, depth: depth + 1)
            try save(o.args, depth: depth + 1)
            try save(o.kwargs ?? NodeID(0), depth: depth + 1)
            op(.newObjEx)
        case .inst:
            guard case .global(let m, let n) = graph[o.callable] else { throw .unencodable("INST without a class name") }
            try checkGlobalText(m, n)
            op(.mark)
            for a in graph.sequence(o.args) ?? [] { try save(a, depth: depth + 1) }
            op(.inst); out += Array(m.utf8) + [0x0A] + Array(n.utf8) + [0x0A]
        case .obj:
            op(.mark)
            try save(o.callable, depth: depth + 1)
            for a in graph.sequence(o.args) ?? [] { try save(a, depth: depth + 1) }
            op(.obj)
        }
        inProgress.remove(id)
        memoize(id)
        try batch(o.listItems, depth: depth, one: .append, many: .appends)
        try batchItems(o.dictItems, depth: depth)
        if let s = o.state {
            try save(s, depth: depth + 1)
            op(.build)
        }
    }
}
