/// How a pickle uses a global, following the stack as the unpickler would.
public enum GlobalUse: String, Sendable, Comparable, CaseIterable {
    /// Pushed (and perhaps stored), never called nor built: only its module is imported.
    case referenced
    /// `getattr(G, 'name')` of a global and a constant name that is not a dunder: a reference to an attribute.
    case getattrConstant = "getattr-constant"
    /// Built without running its code: NEWOBJ with no arguments, or `copyreg._reconstructor(cls, object, None)`.
    case constructed
    /// Constructed, then given state by BUILD: runs the class's `__setstate__`, if it defines one, with the
    /// pickle's state (a call of it), or fills its `__dict__`.
    case setstate = "built"
    /// Called with the pickle's arguments: REDUCE, INST, OBJ, NEWOBJ with arguments (its `__new__`), the base of
    /// `copyreg._reconstructor`, or the factory of a `collections.defaultdict` (called later, on a missing key).
    case called

    private var rank: Int { Self.allCases.firstIndex(of: self)! }
    public static func < (a: GlobalUse, b: GlobalUse) -> Bool { a.rank < b.rank }
}

/// One global a pickle names, with how often the pickle pushes it and how it uses it.
public struct ScannedGlobal: Sendable, Equatable {
    /// The module as written in the pickle (`__builtin__`, `torch._utils`).
    public var module: String
    /// The name as written (`eval`, `_rebuild_tensor_v2`; dotted for protocol-4 qualified names, and for an
    /// attribute reached by `getattr`).
    public var name: String
    /// `getattr` when the global is an attribute reached by `builtins.getattr(G, 'name')` at run time, not a
    /// name the unpickler looks up; nil for a global the pickle names itself.
    public var via: String?
    /// How many times the pickle pushes it: by GLOBAL, STACK_GLOBAL or INST, or from the memo.
    public var count: Int
    /// Byte offset of its first appearance in its pickle.
    public var offset: Int
    /// Each use other than `referenced`, with how often and where it first happens.
    public var uses: [GlobalUse: (count: Int, offset: Int)] = [:]
    /// `module.name`.
    public var fullName: String { module + "." + name }
    /// What tells two globals apart: the spelling (module and name as written) and how it was reached.
    public var key: String { module + "\n" + name + "\n" + (via ?? "") }

    /// The uses to report: each use it has, or `referenced` alone when it has none.
    /// A built class is not listed as constructed too.
    public var reportedUses: [GlobalUse] {
        if uses.isEmpty { return [.referenced] }
        return uses.keys.filter { !($0 == .constructed && uses[.setstate] != nil) }.sorted(by: >)
    }

    mutating func use(_ u: GlobalUse, at offset: Int) {
        if let e = uses[u] { uses[u] = (e.count + 1, e.offset) } else { uses[u] = (1, offset) }
    }

    /// Adds another scan's counts of the same global.
    public mutating func absorb(_ other: ScannedGlobal) {
        count += other.count
        for (u, e) in other.uses {
            if let mine = uses[u] { uses[u] = (mine.count + e.count, mine.offset) } else { uses[u] = e }
        }
    }

    public static func == (a: ScannedGlobal, b: ScannedGlobal) -> Bool {
        a.key == b.key && a.count == b.count && a.offset == b.offset
            && a.uses.mapValues { [$0.count, $0.offset] } == b.uses.mapValues { [$0.count, $0.offset] }
    }
}

/// Something dangerous the pickle does with a value that is not a global it names: a STACK_GLOBAL whose
/// operands are not plain strings, an EXT opcode that names a global through `copyreg`'s extension registry,
/// or a call of a computed callable (the result of another call, or an attribute reached at run time).
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
    /// Computed globals and calls of computed callables.
    public var computed: [ComputedGlobal] = []
    /// Why `torch.load(weights_only=True)` would refuse this pickle (the first reason met), or nil.
    public var weightsOnlyRefusal: String?
    /// The global that reason refuses, as spelled in the pickle (`pathlib`, `PosixPath`), when it is one that is not
    /// allow-listed: what `scan --weights-only` looks for in the graph.
    public var weightsOnlyRefusedGlobal: WeightsOnlyRefusedGlobal?
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

/// A global `torch.load(weights_only=True)` refuses, as the pickle spells it.
public struct WeightsOnlyRefusedGlobal: Sendable, Equatable {
    public var module: String
    public var name: String
}

/// Walks a pickle's opcodes and keeps a symbolic stack just precise enough to tell how each global is used
/// (called, constructed, referenced; following the memo and the arguments of the few calls whose meaning
/// depends on them), to tell plain-string STACK_GLOBAL operands from computed ones, and to replay torch's
/// weights_only unpickler opcode by opcode (torch/_weights_only_unpickler.py). Bounded by ``PickleLimits``.
public struct PickleScanner {
    /// What BUILD on an object does in torch's weights_only unpickler, by the object's type.
    private enum WOBuild: Equatable {
        /// A tensor, parameter, OrderedDict, or an allowed class with `__setstate__` or a `__dict__`.
        case anyState
        /// An allowed class without either: loads only when the state is empty (`if state:` skips it).
        case emptyStateOnly
        /// Any other type: refused.
        case refused
    }

    /// What a call or a construction made.
    private struct Made: Equatable {
        /// The global called or built, when it is one.
        var global: Int?
        /// Built by NEWOBJ with no arguments or `copyreg._reconstructor(cls, object, None)`: BUILD runs its
        /// class's `__setstate__`, if any.
        var constructed: Bool
        var weightsOnly: WOBuild
    }

    private indirect enum Sym: Equatable {
        case other
        case none
        case string(String)
        /// `bytes` whose value is known (what `_codecs.encode` makes of an ASCII string).
        case bytes(String)
        /// A str that is not valid UTF-8 (CPython would accept some of these with surrogatepass).
        case undecodable
        case int
        case global(Int)
        case computedGlobal
        case list
        /// A dict; `empty` only while it is certainly empty (EMPTY_DICT never stored nor filled).
        case dict(empty: Bool)
        /// A tuple: its length and its first few items.
        case tuple(count: Int, items: [Sym])
        case object(Made)
    }

    /// Tuple items kept for reading call arguments (getattr, `_reconstructor`, `_codecs.encode`, persistent ids).
    private static let keptItems = 3
    /// Computed calls recorded (one is enough to make the file dangerous; the rest would only grow the report).
    private static let maxComputed = 1000

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
        var v = try top()
        // The memo shares the object: once stored, a dict may be filled through either copy.
        if case .dict = v {
            v = .dict(empty: false)
            stack[stack.count - 1] = v
        }
        memo[index] = v
    }

    private mutating func memoGet(_ index: Int) throws(Stop) {
        guard let s = memo[index] else { throw fail(.missingMemo(index: index, offset: opStart)) }
        try push(s)
    }

    /// Records a global named by the pickle (or reached by `getattr`) and returns its index.
    private mutating func named(_ module: String, _ name: String, via: String? = nil) -> Int {
        let key = module + "\n" + name + "\n" + (via ?? "")
        if let i = names[key] { return i }
        scan.globals.append(ScannedGlobal(module: module, name: name, via: via, count: 0, offset: opStart))
        names[key] = scan.globals.count - 1
        if via == nil, let why = GlobalPolicy.weightsOnlyRefusal(module, name) {
            refuse("\(why) (byte \(opStart))", global: WeightsOnlyRefusedGlobal(module: module, name: name))
        }
        return scan.globals.count - 1
    }

    private mutating func refuse(_ why: String, global: WeightsOnlyRefusedGlobal? = nil) {
        if scan.weightsOnlyRefusal == nil {
            scan.weightsOnlyRefusal = why
            scan.weightsOnlyRefusedGlobal = global
        }
    }

    private mutating func use(_ i: Int, _ u: GlobalUse) { scan.globals[i].use(u, at: opStart) }

    /// The name pickle's Unpickler looks up for a global (Python 2 spellings renamed).
    private func pythonName(_ i: Int) -> String {
        let g = scan.globals[i]
        let (m, n) = GlobalPolicy.pythonName(g.module, g.name)
        return m + "." + n
    }

    private func isGlobal(_ s: Sym, _ name: String) -> Bool {
        if case .global(let i) = s, scan.globals[i].via == nil, pythonName(i) == name { return true }
        return false
    }

    private mutating func computedCall(_ callable: Sym, _ how: String) {
        guard scan.computed.count < Self.maxComputed else { return }
        scan.computed.append(ComputedGlobal(opcode: opName, offset: opStart,
                                            detail: "\(how) \(describe(callable)), computed at load time"))
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

        case .none: try push(.none)
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

        case .emptyTuple: try push(tuple([]))
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
        case .emptyDict: try push(.dict(empty: true))
        case .dict:
            let items = try popMark()
            guard items.count % 2 == 0 else { throw badStack("odd number of items for a dict") }
            try push(.dict(empty: items.isEmpty))
        // set() is an allowed type in weights_only (builtins.set), without __setstate__ or __dict__
        case .emptySet: try push(.object(Made(global: nil, constructed: false, weightsOnly: .emptyStateOnly)))
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
            let items = try popMark()
            guard items.count % 2 == 0 else { throw badStack("odd number of items for a dict") }
            try checkSetItemTarget(filled: !items.isEmpty)
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
            use(i, .called)
            try push(.object(Made(global: i, constructed: false, weightsOnly: .refused)))
        case .obj:
            let items = try popMark()
            guard let cls = items.first else { throw badStack("OBJ without a class") }
            try push(call(cls, args: tuple(Array(items.dropFirst()))))
        case .reduce:
            let args = try pop()
            let callable = try pop()
            if case .global(let i) = callable, scan.globals[i].via == nil {
                let (m, n) = GlobalPolicy.weightsOnlyName(scan.globals[i].module, scan.globals[i].name)
                if TorchPolicyData.weightsOnlyNotCallable.contains(m + "." + n) {
                    refuse("REDUCE calls \(m).\(n), which is not callable (byte \(opStart))")
                }
            } else {
                refuse("REDUCE calls something that is not an allow-listed global (byte \(opStart))")
            }
            try push(reduce(callable, args))
        case .newObj:
            let args = try pop()
            let cls = try pop()
            try push(newObj(cls, args: args, kwargs: nil))
        case .newObjEx:
            let kwargs = try pop(), args = try pop()
            try push(newObj(try pop(), args: args, kwargs: kwargs))
        case .build:
            let state = try pop()
            try build(on: try top(), state: state)
        case .persID:
            _ = try line()
            try push(.other)
        case .binPersID:
            let pid = try pop()
            if !isStorageID(pid) { refuse("persistent id that is not a storage (byte \(opStart))") }
            // torch's legacy persistent_load returns the class of a ('module', cls, source_file, source) id: the
            // pickled nn.Module's class, which NEWOBJ then builds.
            if case .tuple(let n, let items) = pid, n >= 2, items.first == .string("module"), case .global = items[1] {
                try push(items[1])
            } else {
                try push(.other)
            }
        }
        return false
    }

    // MARK: - Calls

    /// A call of `callable` with `args`: records the use and returns what it makes.
    private mutating func call(_ callable: Sym, args: Sym) -> Sym {
        switch callable {
        case .global(let i):
            use(i, .called)
            return .object(Made(global: i, constructed: false, weightsOnly: weightsOnlyResult(of: i)))
        case .string, .bytes, .undecodable, .int, .none, .list, .dict, .tuple:
            // Calling a plain value fails (TypeError): nothing runs.
            return .object(Made(global: nil, constructed: false, weightsOnly: .refused))
        default:
            computedCall(callable, "calls")
            return .object(Made(global: nil, constructed: false, weightsOnly: .refused))
        }
    }

    /// REDUCE: a call, read closer for the callables whose meaning depends on their arguments.
    private mutating func reduce(_ callable: Sym, _ args: Sym) -> Sym {
        guard case .global(let f) = callable, case .tuple(let n, let items) = args else { return call(callable, args: args) }
        let name = pythonName(f)
        // getattr(G, 'name') of a global and a constant name: a reference to the attribute, not a call of it.
        if name == "builtins.getattr", n == 2, case .global(let g) = items[0], case .string(let attr) = items[1],
           !(attr.hasPrefix("__") && attr.hasSuffix("__")), scan.globals[g].via == nil
        {
            use(f, .getattrConstant)
            let a = named(scan.globals[g].module, scan.globals[g].name + "." + attr, via: "getattr")
            scan.globals[a].count += 1
            return .global(a)
        }
        // copyreg._reconstructor(cls, base, state): base.__new__(cls[, state]); base.__init__(obj, state) unless object.
        if name == "copyreg._reconstructor", n == 3 {
            use(f, .called)
            guard case .global(let cls) = items[0] else {
                computedCall(items[0], "builds an instance of")
                return .object(Made(global: nil, constructed: false, weightsOnly: .refused))
            }
            if isGlobal(items[1], "builtins.object"), items[2] == .none {
                use(cls, .constructed)
            } else {
                use(cls, .constructed)
                _ = call(items[1], args: tuple([items[2]]))
            }
            return .object(Made(global: cls, constructed: true, weightsOnly: .refused))
        }
        // defaultdict(factory): the factory is called later, for every missing key.
        if name == "collections.defaultdict", n >= 1, items[0] != .none {
            _ = call(items[0], args: tuple([]))
        }
        // _codecs.encode('storage', 'latin1') is bytes torch decodes back to the persistent id tag.
        if name == "_codecs.encode", n == 2, case .string(let text) = items[0], case .string(let enc) = items[1],
           ["latin1", "latin-1", "iso-8859-1", "ascii", "utf-8", "utf8"].contains(enc.lowercased()),
           text.unicodeScalars.allSatisfy(\.isASCII)
        {
            use(f, .called)
            return .bytes(text)
        }
        return call(callable, args: args)
    }

    /// NEWOBJ / NEWOBJ_EX: `cls.__new__(cls, *args)`. With no arguments it builds the object without running the
    /// class's code (a class that defines `__new__` is code of its module); with arguments it is a call.
    private mutating func newObj(_ cls: Sym, args: Sym, kwargs: Sym?) -> Sym {
        var noArgs = false
        if case .tuple(0, _) = args { noArgs = true }
        if let k = kwargs, k != .dict(empty: true) { noArgs = false }
        if kwargs != nil || !isWeightsOnlyClass(cls) {
            refuse("NEWOBJ of \(describe(cls)), which is not an allow-listed class (byte \(opStart))")
        }
        guard case .global(let i) = cls else {
            computedCall(cls, "builds an instance of")
            return .object(Made(global: nil, constructed: false, weightsOnly: .refused))
        }
        if noArgs {
            use(i, .constructed)
            return .object(Made(global: i, constructed: true, weightsOnly: weightsOnlyResult(of: i)))
        }
        return call(cls, args: args)
    }

    /// BUILD on `target`: runs `__setstate__` of the target's class if it has one, else fills its `__dict__`.
    private mutating func build(on target: Sym, state: Sym) throws(Stop) {
        switch target {
        case .object(let m):
            if m.constructed, let i = m.global { use(i, .setstate) }
            switch m.weightsOnly {
            case .anyState: break
            case .emptyStateOnly where isEmptyState(state): break
            case .emptyStateOnly:
                refuse("BUILD with a non-empty state on \(describe(target)), which has no __setstate__ nor __dict__ (byte \(opStart))")
            case .refused:
                refuse("BUILD on \(describe(target)), which is not a tensor, parameter, OrderedDict or allow-listed type (byte \(opStart))")
            }
        case .global, .computedGlobal:
            // Sets attributes on a module-level object (a class, a function, a module): a write into shared code.
            computedCall(target, "BUILD sets attributes on")
            refuse("BUILD on \(describe(target)) (byte \(opStart))")
        default:
            refuse("BUILD on \(describe(target)), which is not a tensor, parameter, OrderedDict or allow-listed type (byte \(opStart))")
        }
    }

    // MARK: - weights_only

    /// Whether `s` is an allowed global that is a class (NEWOBJ calls `cls.__new__(cls, ...)`).
    private func isWeightsOnlyClass(_ s: Sym) -> Bool {
        guard case .global(let i) = s, scan.globals[i].via == nil else { return false }
        let g = scan.globals[i]
        guard GlobalPolicy.weightsOnlyRefusal(g.module, g.name) == nil else { return false }
        let (m, n) = GlobalPolicy.weightsOnlyName(g.module, g.name)
        return TorchPolicyData.weightsOnlyClasses.contains(m + "." + n)
    }

    /// What BUILD may do with the result of calling (or building) the global `i` under weights_only.
    private func weightsOnlyResult(of i: Int) -> WOBuild {
        let g = scan.globals[i]
        guard g.via == nil, GlobalPolicy.weightsOnlyRefusal(g.module, g.name) == nil else { return .refused }
        let (m, n) = GlobalPolicy.weightsOnlyName(g.module, g.name)
        let full = m + "." + n
        if full.hasPrefix("torch._utils._rebuild_") || full.hasPrefix("torch._tensor._rebuild_") { return .anyState }
        guard TorchPolicyData.weightsOnlyClasses.contains(full) else { return .refused }
        return TorchPolicyData.weightsOnlyBuildAnyState.contains(full) ? .anyState : .emptyStateOnly
    }

    /// A state `if state:` skips: None, an empty dict or tuple, or a 2-tuple of two such.
    private func isEmptyState(_ s: Sym) -> Bool {
        switch s {
        case .none, .dict(empty: true), .tuple(0, _): return true
        case .tuple(2, let items): return items.count == 2 && items.allSatisfy { isEmptyState($0) }
        default: return false
        }
    }

    /// torch's check on a BINPERSID id: an int, or a tuple whose first item decodes (ASCII) to "storage".
    private func isStorageID(_ s: Sym) -> Bool {
        switch s {
        case .int: return true
        case .tuple(0, _): return true
        case .tuple(_, let items): return items.first == .string("storage") || items.first == .bytes("storage")
        default: return false
        }
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

    /// A tuple keeps its first few items one level deep (a nested tuple keeps only its length), so that no chain of
    /// nested values grows with the pickle (releasing a deep chain would recurse once per level).
    private func tuple(_ items: [Sym]) -> Sym {
        .tuple(count: items.count, items: items.prefix(Self.keptItems).map { item in
            if case .tuple(let n, _) = item { return .tuple(count: n, items: []) }
            return item
        })
    }

    private mutating func checkAppendTarget() throws(Stop) {
        if try top() != .list { refuse("APPEND to something that is not a list (byte \(opStart))") }
    }

    private mutating func checkSetItemTarget(filled: Bool = true) throws(Stop) {
        let t = try top()
        if case .dict = t {
            if filled { stack[stack.count - 1] = .dict(empty: false) }
            return
        }
        if case .object(let m) = t, let i = m.global, scan.globals[i].via == nil,
           ["collections.OrderedDict", "collections.Counter"].contains(pythonName(i)) { return }
        refuse("SETITEM on something that is not a dict, OrderedDict or Counter (byte \(opStart))")
    }

    private func describe(_ s: Sym) -> String {
        switch s {
        case .string(let v): return "the string '\(v.count > 40 ? String(v.prefix(40)) + "..." : v)'"
        case .bytes: return "bytes"
        case .undecodable: return "a string that is not valid UTF-8"
        case .int: return "a number"
        case .none: return "None"
        case .global(let i):
            let g = scan.globals[i]
            return g.via == nil ? "the global \(g.fullName)" : "\(g.fullName), an attribute reached by \(g.via!)"
        case .computedGlobal: return "a computed global"
        case .list: return "a list"
        case .dict: return "a dict"
        case .tuple: return "a tuple"
        case .object(let m):
            guard let i = m.global else { return "the result of a call" }
            return m.constructed ? "an instance of \(scan.globals[i].fullName)" : "the result of calling \(scan.globals[i].fullName)"
        case .other: return "a non-string value"
        }
    }
}
