/// One global a pickle names, with how often the pickle pushes it.
public struct ScannedGlobal: Sendable, Equatable {
    /// The module as written in the pickle (`__builtin__`, `torch._utils`).
    public var module: String
    /// The name as written (`eval`, `_rebuild_tensor_v2`; dotted for protocol-4 qualified names).
    public var name: String
    /// How many times the pickle pushes it: by GLOBAL, STACK_GLOBAL or INST, or from the memo.
    public var count: Int
    /// Byte offset of its first appearance in its pickle.
    public var offset: Int
    /// `module.name`.
    public var fullName: String { module + "." + name }
}

/// A global whose name a pickle computes instead of spelling out: a STACK_GLOBAL whose operands are
/// not plain strings, or an EXT opcode that names a global through `copyreg`'s extension registry.
public struct ComputedGlobal: Sendable, Equatable {
    public var opcode: String
    public var offset: Int
    public var detail: String
}

/// What a raw pass over one pickle's opcodes found. Nothing is resolved or executed.
public struct PickleScan: Sendable {
    /// Where the pickle came from (`best/data.pkl`, `legacy pickle 4`).
    public var label: String
    /// The PROTO operand, when there is one.
    public var protocolVersion: Int?
    /// Globals in order of first use.
    public var globals: [ScannedGlobal] = []
    /// Globals whose names are computed at load time.
    public var computed: [ComputedGlobal] = []
    /// Why `torch.load(weights_only=True)` would refuse this pickle (the first reason met), or nil.
    public var weightsOnlyRefusal: String?
    /// Opcodes read.
    public var opcodes = 0
    /// Offset just past STOP, or where reading stopped.
    public var end: Int
    /// Bytes in the buffer after STOP (not unpickled by torch).
    public var trailingBytes = 0
    /// Why the pass stopped before STOP. Everything met before the error is still reported: a
    /// pickle that fails halfway has already run what came before.
    public var error: PickleError?
}

/// Walks a pickle's opcodes and keeps a symbolic stack just precise enough to name every global the
/// pickle uses (following the memo), to tell plain-string STACK_GLOBAL operands from computed ones,
/// and to replay the checks of torch's weights_only unpickler. Bounded by ``PickleLimits``.
public struct PickleScanner {
    private enum Sym: Equatable {
        case other
        case string(String)
        /// A str that is not valid UTF-8 (CPython would accept some of these with surrogatepass).
        case undecodable
        case int
        case global(Int)
        case computedGlobal
        case list
        case dict
        /// A tuple; whether its first item is the string "storage" (torch's persistent ids).
        case tuple(storageID: Bool)
        /// What REDUCE or NEWOBJ made from a callable (the global's index, if it is one).
        case object(Int?)
    }

    private let data: [UInt8]
    private var pos: Int
    private let limits: PickleLimits
    private var stack: [Sym] = []
    private var marks: [[Sym]] = []
    private var memo: [Int: Sym] = [:]
    private var names: [String: Int] = [:]
    private var scan: PickleScan
    private var opStart = 0
    private var opName = ""

    /// Scans one pickle starting at `offset`.
    public static func scan(_ data: [UInt8], offset: Int = 0, label: String, limits: PickleLimits = PickleLimits()) -> PickleScan {
        var s = PickleScanner(data: data, pos: offset, limits: limits, label: label)
        s.run()
        s.scan.end = s.pos
        if s.scan.error == nil { s.scan.trailingBytes = max(0, data.count - s.pos) }
        return s.scan
    }

    /// Scans up to `count` pickles stored back to back (the legacy torch format), stopping quietly at the
    /// first that does not even start to parse after the first one.
    public static func scanSequence(_ data: [UInt8], count: Int, label: String, limits: PickleLimits = PickleLimits())
        -> [PickleScan]
    {
        var out: [PickleScan] = []
        var offset = 0
        for i in 0..<count {
            guard offset < data.count else { break }
            let s = scan(data, offset: offset, label: "\(label) \(i + 1)", limits: limits)
            if i > 0 && s.error != nil && s.globals.isEmpty && s.computed.isEmpty { break }
            out.append(s)
            if s.error != nil { break }
            offset = s.end
        }
        return out
    }

    private init(data: [UInt8], pos: Int, limits: PickleLimits, label: String) {
        self.data = data
        self.pos = pos
        self.limits = limits
        scan = PickleScan(label: label, end: pos)
    }

    // MARK: - Reading

    private struct Stop: Error {}

    private mutating func fail(_ e: PickleError) -> Stop {
        if scan.error == nil { scan.error = e }
        return Stop()
    }

    private mutating func bad(_ reason: String) -> Stop {
        fail(.badArgument(opcode: opName, offset: opStart, reason: reason))
    }

    private mutating func badStack(_ reason: String) -> Stop {
        fail(.badStack(opcode: opName, offset: opStart, reason: reason))
    }

    private mutating func byte() throws(Stop) -> UInt8 {
        guard pos < data.count else { throw fail(.truncated(offset: pos)) }
        defer { pos += 1 }
        return data[pos]
    }

    private mutating func bytes(_ n: Int) throws(Stop) -> ArraySlice<UInt8> {
        guard n >= 0 else { throw bad("negative length") }
        guard n <= limits.maxStringLength else {
            throw fail(.limitExceeded(what: "bytes in one value", limit: limits.maxStringLength, offset: opStart))
        }
        guard n <= data.count - pos else { throw fail(.truncated(offset: data.count)) }
        defer { pos += n }
        return data[pos..<(pos + n)]
    }

    private mutating func uint(_ n: Int) throws(Stop) -> UInt64 {
        let b = try bytes(n)
        var v: UInt64 = 0
        for (i, x) in b.enumerated() { v |= UInt64(x) << (8 * UInt64(i)) }
        return v
    }

    private mutating func length(_ n: Int) throws(Stop) -> Int {
        let v = try uint(n)
        guard v <= UInt64(limits.maxStringLength) else {
            throw fail(.limitExceeded(what: "bytes in one value", limit: limits.maxStringLength, offset: opStart))
        }
        return Int(v)
    }

    private mutating func signedLength4() throws(Stop) -> Int {
        let n = Int(Int32(bitPattern: UInt32(try uint(4))))
        guard n >= 0 else { throw bad("negative length") }
        return n
    }

    private mutating func line() throws(Stop) -> ArraySlice<UInt8> {
        guard let nl = data[pos...].firstIndex(of: 0x0A) else { throw fail(.truncated(offset: data.count)) }
        defer { pos = nl + 1 }
        return data[pos..<nl]
    }

    private mutating func utf8Line() throws(Stop) -> String {
        let b = try line()
        guard let s = String(validating: b, as: UTF8.self) else { throw bad("text is not valid UTF-8") }
        return s
    }

    private mutating func decimal(_ b: ArraySlice<UInt8>) throws(Stop) -> Int {
        guard b.allSatisfy({ $0 < 0x80 }), let v = Int(String(decoding: b, as: UTF8.self)), v >= 0 else {
            throw bad("bad memo index")
        }
        return v
    }

    // MARK: - Stack

    private mutating func push(_ s: Sym) throws(Stop) {
        guard stack.count < limits.maxNodes else {
            throw fail(.limitExceeded(what: "objects", limit: limits.maxNodes, offset: opStart))
        }
        if case .global(let i) = s { scan.globals[i].count += 1 }
        stack.append(s)
    }

    private mutating func pop() throws(Stop) -> Sym {
        guard let v = stack.popLast() else { throw badStack("stack is empty") }
        return v
    }

    private mutating func top() throws(Stop) -> Sym {
        guard let v = stack.last else { throw badStack("stack is empty") }
        return v
    }

    private mutating func popMark() throws(Stop) -> [Sym] {
        guard let saved = marks.popLast() else { throw badStack("no MARK before it") }
        let items = stack
        stack = saved
        return items
    }

    private mutating func memoPut(_ index: Int) throws(Stop) {
        guard memo.count < limits.maxMemo || memo[index] != nil else {
            throw fail(.limitExceeded(what: "memo entries", limit: limits.maxMemo, offset: opStart))
        }
        memo[index] = try top()
    }

    private mutating func memoGet(_ index: Int) throws(Stop) {
        guard let s = memo[index] else { throw fail(.missingMemo(index: index, offset: opStart)) }
        try push(s)
    }

    /// Records a use of `module.name` and returns its index.
    private mutating func named(_ module: String, _ name: String) -> Int {
        let key = module + "\n" + name
        if let i = names[key] { return i }
        scan.globals.append(ScannedGlobal(module: module, name: name, count: 0, offset: opStart))
        names[key] = scan.globals.count - 1
        if let why = GlobalPolicy.weightsOnlyRefusal(module, name) { refuse("\(why) (byte \(opStart))") }
        return scan.globals.count - 1
    }

    private mutating func refuse(_ why: String) {
        if scan.weightsOnlyRefusal == nil { scan.weightsOnlyRefusal = why }
    }

    private func globalName(_ s: Sym) -> String? {
        if case .global(let i) = s { return scan.globals[i].fullName }
        if case .object(let i?) = s { return scan.globals[i].fullName }
        return nil
    }

    // MARK: - Main loop

    private mutating func run() {
        do {
            while true {
                opStart = pos
                let b = try byte()
                guard let op = Opcode(rawValue: b) else { throw fail(.unknownOpcode(b, offset: opStart)) }
                opName = op.name
                scan.opcodes += 1
                if !TorchPolicyData.weightsOnlyOpcodes.contains(op.name) {
                    refuse("opcode \(op.name) (byte \(opStart))")
                }
                if try step(op) { return }
            }
        } catch {
            return
        }
    }

    /// Executes one opcode symbolically; true at STOP.
    private mutating func step(_ op: Opcode) throws(Stop) -> Bool {
        switch op {
        case .proto:
            let v = try byte()
            guard v <= 5 else { throw bad("protocol \(v) is newer than 5") }
            if scan.protocolVersion == nil { scan.protocolVersion = Int(v) }
        case .frame: _ = try uint(8)
        case .stop:
            _ = try pop()
            return true
        case .mark:
            guard marks.count < limits.maxMarkDepth else {
                throw fail(.limitExceeded(what: "open MARKs", limit: limits.maxMarkDepth, offset: opStart))
            }
            marks.append(stack)
            stack = []
        case .pop:
            if stack.isEmpty { _ = try popMark() } else { _ = try pop() }
        case .popMark: _ = try popMark()
        case .dup: try push(try top())

        case .none: try push(.other)
        case .newTrue, .newFalse: try push(.int)
        case .binInt: _ = try uint(4); try push(.int)
        case .binInt1: _ = try byte(); try push(.int)
        case .binInt2: _ = try uint(2); try push(.int)
        case .int, .long: _ = try line(); try push(.int)
        case .long1: _ = try bytes(Int(try byte())); try push(.int)
        case .long4: _ = try bytes(try signedLength4()); try push(.int)
        case .float: _ = try line(); try push(.other)
        case .binFloat: _ = try uint(8); try push(.other)

        case .string:
            switch PickleDecoder.pythonStringLiteral(try line()) {
            case .success(let s): try pushPython2Str(s)
            case .failure(let e): throw bad(e.text)
            }
        case .binString: try pushPython2Str(try bytes(try signedLength4()))
        case .shortBinString: try pushPython2Str(try bytes(Int(try byte())))
        case .unicode:
            guard let s = PickleDecoder.rawUnicodeEscape(try line()) else { throw bad("bad \\u escape") }
            try push(.string(s))
        case .binUnicode: try pushUTF8(try bytes(try length(4)))
        case .shortBinUnicode: try pushUTF8(try bytes(Int(try byte())))
        case .binUnicode8: try pushUTF8(try bytes(try length(8)))
        case .binBytes: _ = try bytes(try length(4)); try push(.other)
        case .shortBinBytes: _ = try bytes(Int(try byte())); try push(.other)
        case .binBytes8, .byteArray8: _ = try bytes(try length(8)); try push(.other)
        case .nextBuffer: try push(.other)
        case .readonlyBuffer: _ = try pop(); try push(.other)
        case .ext1, .ext2, .ext4:
            let code = try uint(op == .ext1 ? 1 : op == .ext2 ? 2 : 4)
            scan.computed.append(ComputedGlobal(opcode: op.name, offset: opStart,
                detail: "extension code \(code) names a global through copyreg's registry, not in the file"))
            try push(.computedGlobal)

        case .emptyTuple: try push(.tuple(storageID: false))
        case .tuple: try push(tuple(try popMark()))
        case .tuple1:
            let a = try pop()
            try push(tuple([a]))
        case .tuple2:
            let b = try pop(), a = try pop()
            try push(tuple([a, b]))
        case .tuple3:
            let c = try pop(), b = try pop(), a = try pop()
            try push(tuple([a, b, c]))
        case .emptyList: try push(.list)
        case .list: _ = try popMark(); try push(.list)
        case .emptyDict: try push(.dict)
        case .dict:
            guard try popMark().count % 2 == 0 else { throw badStack("odd number of items for a dict") }
            try push(.dict)
        case .emptySet: try push(.other)
        case .frozenSet: _ = try popMark(); try push(.other)
        case .append:
            _ = try pop()
            try checkAppendTarget()
        case .appends:
            _ = try popMark()
            try checkAppendTarget()
        case .setItem:
            _ = try pop(); _ = try pop()
            try checkSetItemTarget()
        case .setItems:
            guard try popMark().count % 2 == 0 else { throw badStack("odd number of items for a dict") }
            try checkSetItemTarget()
        case .addItems:
            _ = try popMark()
            _ = try top()

        case .put: try memoPut(try decimal(try line()))
        case .binPut: try memoPut(Int(try byte()))
        case .longBinPut: try memoPut(Int(try uint(4)))
        case .memoize: try memoPut(memo.count)
        case .get: try memoGet(try decimal(try line()))
        case .binGet: try memoGet(Int(try byte()))
        case .longBinGet: try memoGet(Int(try uint(4)))

        case .global:
            let module = try utf8Line(), name = try utf8Line()
            try push(.global(named(module, name)))
        case .stackGlobal:
            let n = try pop(), m = try pop()
            if case .string(let module) = m, case .string(let name) = n {
                try push(.global(named(module, name)))
            } else {
                scan.computed.append(ComputedGlobal(opcode: op.name, offset: opStart,
                    detail: "takes \(describe(m)) and \(describe(n)) instead of two plain strings"))
                try push(.computedGlobal)
            }
        case .inst:
            let module = try utf8Line(), name = try utf8Line()
            _ = try popMark()
            let i = named(module, name)
            scan.globals[i].count += 1
            try push(.object(i))
        case .obj:
            let items = try popMark()
            guard let cls = items.first else { throw badStack("OBJ without a class") }
            try push(objectMadeBy(cls))
        case .reduce:
            _ = try pop()
            let callable = try pop()
            if case .global = callable {} else {
                refuse("REDUCE calls something that is not an allow-listed global (byte \(opStart))")
            }
            try push(objectMadeBy(callable))
        case .newObj:
            _ = try pop()
            let cls = try pop()
            if case .global = cls {} else { refuse("NEWOBJ of something that is not an allow-listed class (byte \(opStart))") }
            try push(objectMadeBy(cls))
        case .newObjEx:
            _ = try pop(); _ = try pop()
            try push(objectMadeBy(try pop()))
        case .build:
            _ = try pop()
            let target = try top()
            if case .object(let i?) = target {
                let name = scan.globals[i].fullName
                if name == "_codecs.encode" || name.hasPrefix("builtins.") || name.hasPrefix("__builtin__.") {
                    refuse("BUILD on a \(name) result (byte \(opStart))")
                }
            } else {
                refuse("BUILD on something other than a tensor, parameter or OrderedDict (byte \(opStart))")
            }
        case .persID:
            _ = try line()
            try push(.other)
        case .binPersID:
            let pid = try pop()
            switch pid {
            case .tuple(storageID: true), .int: break
            default: refuse("persistent id that is not a storage (byte \(opStart))")
            }
            try push(.other)
        }
        return false
    }

    private mutating func pushUTF8(_ b: ArraySlice<UInt8>) throws(Stop) {
        if let s = String(validating: b, as: UTF8.self) { try push(.string(s)) } else { try push(.undecodable) }
    }

    /// A Python 2 `str`, which torch.load decodes as UTF-8 (strictly): other bytes make it fail there, in the
    /// weights-only unpickler too; the scan goes on, since what came before has run by then.
    private mutating func pushPython2Str(_ b: ArraySlice<UInt8>) throws(Stop) {
        if let s = PickleDecoder.python2Str(b) { return try push(.string(s)) }
        refuse("a Python 2 str at byte \(opStart) is not UTF-8, which torch.load decodes it as")
        try push(.undecodable)
    }

    private func tuple(_ items: [Sym]) -> Sym {
        .tuple(storageID: items.first == .string("storage"))
    }

    private func objectMadeBy(_ callable: Sym) -> Sym {
        if case .global(let i) = callable { return .object(i) }
        return .object(nil)
    }

    private mutating func checkAppendTarget() throws(Stop) {
        if try top() != .list { refuse("APPEND to something that is not a list (byte \(opStart))") }
    }

    private mutating func checkSetItemTarget() throws(Stop) {
        let t = try top()
        if t == .dict { return }
        if let name = globalName(t), case .object = t,
           ["collections.OrderedDict", "collections.Counter"].contains(name) { return }
        refuse("SETITEM on something that is not a dict, OrderedDict or Counter (byte \(opStart))")
    }

    private func describe(_ s: Sym) -> String {
        switch s {
        case .string(let v): return "the string '\(v.count > 40 ? String(v.prefix(40)) + "..." : v)'"
        case .undecodable: return "a string that is not valid UTF-8"
        case .int: return "a number"
        case .global(let i): return "the global \(scan.globals[i].fullName)"
        case .computedGlobal: return "a computed global"
        case .list: return "a list"
        case .dict: return "a dict"
        case .tuple: return "a tuple"
        case .object(let i?): return "the result of calling \(scan.globals[i].fullName)"
        case .object(nil): return "the result of a call"
        case .other: return "a non-string value"
        }
    }
}
