/// One value of the output that the plain-data table changed or dropped: where it is (a dotted path of dict keys,
/// attribute names and list indices: `opt.evolve_population`), what it was (`pathlib.PosixPath`) and what it became
/// (`str`), or, for a dropped value, why it could not be converted.
public struct ValueConversion: Sendable, Equatable {
    public var path: String
    public var from: String
    public var to: String

    public init(path: String, from: String, to: String) {
        self.path = path
        self.from = from
        self.to = to
    }

    /// `[{path, from, to}]`; for dropped values `[{path, from, why}]`.
    public static func json(_ list: [ValueConversion], dropped: Bool = false) -> JSONValue {
        .array(list.map { .object([("path", .string($0.path)), ("from", .string($0.from)),
                                   (dropped ? "why" : "to", .string($0.to))]) })
    }

    /// The summary's lines: `  converted opt.evolve_population: pathlib.PosixPath -> str`, then
    /// `  dropped opt.fn: functools.partial (why)`.
    public static func lines(_ conversions: [ValueConversion], dropped: [ValueConversion]) -> [String] {
        conversions.map { "  converted \($0.path): \($0.from) -> \($0.to)" }
            + dropped.map { "  dropped \($0.path): \($0.from) (\($0.to); --drop-unconvertible)" }
    }
}

/// `--state-dict` (and `convert` to a torch file): every value of every record that `torch.load(weights_only=True)`
/// would refuse becomes plain data, by one table. Tensors, storages and state dicts are never touched: only values
/// whose class weights_only does not load are rewritten, in place, so a value shared by several records is converted
/// once and stays shared.
///
/// | value in the input | becomes | as Python gives it |
/// |---|---|---|
/// | `pathlib` `PosixPath`, `WindowsPath`, `PurePosixPath`, `PureWindowsPath` (also `pathlib._local`, Python 3.13) | `str` | `str(path)` |
/// | `argparse.Namespace`, `types.SimpleNamespace`, Ultralytics' `IterableSimpleNamespace` | `dict` | `vars(ns)` |
/// | omegaconf `DictConfig` / `ListConfig` (and their value nodes) | `dict` / `list` (`None`, or the `???` / `${...}` string, for a none, missing or interpolated container) | `OmegaConf.to_container(cfg)` (resolve=False) |
/// | numpy scalar | `int` (integer dtypes; a big int past int64), `float`, `bool`, `complex`, `str` (`U`), `bytes` (`S`) | `x.item()` |
/// | numpy array | nested `list`s of those (object arrays: their items, converted) | `arr.tolist()` |
/// | a call of a class (CapWords name) with one plain argument and nothing else: how an enum member pickles (`Enum.__reduce_ex__`) | the argument | `e.value` |
/// | `datetime.datetime`, `date`, `time` (naive, or with a `datetime.timezone`) | `str` | `x.isoformat()` |
/// | `frozenset` | `set` (weights_only loads sets, not frozensets) | `set(x)` |
/// | `collections.defaultdict`, Python 2's `dict(...)` call, other dict and list subclasses with no state | `dict` / `list` | `dict(x)` / `list(x)` |
/// | `b''` pickled as `bytes()` | the same `b''`, pickled as `_codecs.encode('', 'latin1')` | |
/// | an `nn.Module` outside the weights record | its state dict (as `--state-dict` makes the weights record's) | `m.state_dict()` |
/// | an object of any other class whose state is a dict of attributes (made with no arguments: NEWOBJ, or a call of a CapWords name) | `dict` of its attributes, converted, with `"__class__": "module.qualname"` first | `{"__class__": ..., **vars(x)}` |
/// | a bare class or function (a GLOBAL used as a value: Lightning's `hparams_type`), `getattr(cls, 'NAME')` | `str`: `module.qualname` | |
///
/// Anything else (a call of a function or class with arguments the table does not read: `functools.partial`, a
/// custom `__reduce__`; a tzinfo other than `datetime.timezone`; a numpy dtype the table does not read) cannot be
/// converted: the command fails naming its path and class, unless `--drop-unconvertible`, which drops it (a dict
/// entry or attribute is removed; a list or tuple item becomes `None`) and lists it. Sets stay: torch loads them.
struct PlainData: SurgeryStep {
    var dropUnconvertible: Bool
    /// Who asks, for the failure message (`--state-dict`).
    var context = "--state-dict"

    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        var c = PlainDataConverter(s.graph, dropUnconvertible: dropUnconvertible)
        // The weights record is ToStateDict's: an object there that is neither a module nor a dict (its tensors in no
        // state_dict view) is not made a dict of attributes, but left for the check stage to refuse.
        let weights = s.weightsNode
        if case .object = s.graph[weights], s.graph.dictEntries(weights) == nil, s.graph.moduleFields(weights) == nil,
           ((try? s.graph.tensor(weights)) ?? nil) == nil {
            c.leave(weights)
        }
        try c.convert(from: s.graph.root)
        try c.finish(context: context)
        s.graph = c.graph
        s.report.conversions += c.conversions
        s.report.droppedValues += c.dropped
        return s
    }
}

/// The walk behind ``PlainData``, usable on any value of a graph: a step that gathers a module's description converts
/// what it gathers with ``convert(from:path:)``, then ``finish(context:)``; a reading command that predicts what
/// `strip --state-dict` would do converts a copy of the graph and reads ``conversions`` and ``unconvertible`` without
/// finishing. It reads the graph as it was when the converter was made and writes converted values in place, so a
/// class read from a global is never a global already converted to its name.
struct PlainDataConverter {
    private(set) var graph: PickleGraph
    /// The graph as it was: every decision reads it.
    private let source: PickleGraph
    let dropUnconvertible: Bool
    private(set) var conversions: [ValueConversion] = []
    /// Values dropped (`--drop-unconvertible`): `to` says why they could not be converted.
    private(set) var dropped: [ValueConversion] = []
    /// Values that cannot be converted: `to` says why.
    private(set) var unconvertible: [ValueConversion] = []
    private var visited: [Bool]
    private var droppedNodes = Set<NodeID>()
    private let maxNesting: Int
    /// Inside an omegaconf container: nested containers are part of its conversion, not listed again.
    private var inOmegaconf = false

    init(_ graph: PickleGraph, dropUnconvertible: Bool, limits: PickleLimits = PickleLimits()) {
        self.graph = graph
        self.source = graph
        self.dropUnconvertible = dropUnconvertible
        self.visited = [Bool](repeating: false, count: graph.nodes.count)
        self.maxNesting = limits.maxNesting
    }

    /// Leaves a value as it is (and what only it holds): the walk does not enter it.
    mutating func leave(_ id: NodeID) {
        if id.index < visited.count { visited[id.index] = true }
    }

    /// Converts every value reachable from `start` whose path starts with `path` ("" for the top level).
    mutating func convert(from start: NodeID, path: String = "") throws(CheckpointError) {
        try visit(start, path, 0)
    }

    /// Drops what was marked for dropping (dict entries removed) or, without `--drop-unconvertible`, throws naming the
    /// first value that cannot be converted (and how many more).
    mutating func finish(context: String) throws(CheckpointError) {
        if let first = unconvertible.first {
            var more = ""
            if unconvertible.count > 1 {
                more = " (and \(unconvertible.count - 1) more: "
                    + unconvertible.dropFirst().prefix(4).map { "\($0.path): \($0.from)" }.joined(separator: ", ")
                    + (unconvertible.count > 5 ? ", ..." : "") + ")"
            }
            throw .invalidOperation("\(context): \(first.path): \(first.from) cannot be converted to plain data "
                + "(\(first.to)), and torch.load(weights_only=True) refuses it\(more); --drop-unconvertible drops it; "
                + "nothing written")
        }
        guard !droppedNodes.isEmpty else { return }
        for id in graph.reachable(from: graph.root) {
            switch graph[id] {
            case .dict(let entries) where entries.contains(where: { droppedNodes.contains($0.value) }):
                graph[id] = .dict(entries.filter { !droppedNodes.contains($0.value) })
            case .object where graph.dictEntries(id)?.contains(where: { droppedNodes.contains($0.value) }) ?? false:
                for e in graph.dictEntries(id)! where droppedNodes.contains(e.value) { graph.removeDictEntry(id, key: e.key) }
            default:
                continue
            }
        }
    }

    // MARK: - The walk

    private func node(_ id: NodeID) -> PickleNode { id.index < source.nodes.count ? source[id] : graph[id] }

    private static func join(_ path: String, _ part: String) -> String { path.isEmpty ? part : path + "." + part }

    private static func shown(_ path: String) -> String { path.isEmpty ? "(top level)" : path }

    private mutating func note(_ path: String, _ from: String, _ to: String) {
        conversions.append(ValueConversion(path: Self.shown(path), from: from, to: to))
    }

    private mutating func cannot(_ id: NodeID, _ path: String, _ what: String, _ why: String) {
        let v = ValueConversion(path: Self.shown(path), from: what, to: why)
        if dropUnconvertible {
            graph[id] = .none
            droppedNodes.insert(id)
            dropped.append(v)
        } else {
            unconvertible.append(v)
        }
    }

    private mutating func visit(_ id: NodeID, _ path: String, _ depth: Int) throws(CheckpointError) {
        if visited.count < graph.nodes.count, id.index >= visited.count {
            visited += [Bool](repeating: false, count: graph.nodes.count - visited.count)
        }
        guard id.index < visited.count, !visited[id.index] else { return }
        visited[id.index] = true
        guard depth <= maxNesting else { throw .tooDeep(maxNesting) }
        switch node(id) {
        case .none, .bool, .int, .bigInt, .float, .string, .bytearray, .persistent:
            return
        case .bytes(let b):
            if b.isEmpty { emptyBytes(id, path) }
        case .tuple(let items), .list(let items), .set(let items):
            for (i, item) in items.enumerated() { try visit(item, Self.join(path, String(i)), depth + 1) }
        case .frozenset(let items):
            for (i, item) in items.enumerated() { try visit(item, Self.join(path, String(i)), depth + 1) }
            graph[id] = .set(items)
            note(path, "frozenset", "set")
        case .dict(let entries):
            try visitEntries(entries, path, depth)
        case .global(let m, let n):
            guard GlobalPolicy.weightsOnlyRefusal(m, n) != nil else { return }
            let q = Self.qualified(m, n)
            graph[id] = .string(q)
            note(path, "\(q) (a reference)", "str")
        case .object(let o):
            try visitObject(id, o, path, depth)
        }
    }

    private mutating func visitEntries(_ entries: [DictEntry], _ path: String, _ depth: Int) throws(CheckpointError) {
        for (i, e) in entries.enumerated() {
            let label = source.keyText(e.key) ?? "(key \(i))"
            if source.keyText(e.key) == nil { try visit(e.key, Self.join(path, label), depth + 1) }
            try visit(e.value, Self.join(path, label), depth + 1)
        }
    }

    /// `module.name` as Python names it (Python 2 spellings renamed: `__builtin__.dict` is `builtins.dict`).
    private static func qualified(_ module: String, _ name: String) -> String {
        let (m, n) = GlobalPolicy.pythonName(module, name)
        return m + "." + n
    }

    private static let pathClasses: Set<String> = ["PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path", "PurePath"]
    private static let namespaceClasses: Set<String> = ["argparse.Namespace", "types.SimpleNamespace"]

    private mutating func visitObject(_ id: NodeID, _ o: PickleObject, _ path: String, _ depth: Int) throws(CheckpointError) {
        guard case .global(let rawModule, let rawName) = node(o.callable) else {
            return cannot(id, path, "an object", "it is made by a callable that is not a named global")
        }
        let (m, n) = GlobalPolicy.pythonName(rawModule, rawName)
        let cls = m + "." + n
        if GlobalPolicy.weightsOnlyRefusal(rawModule, rawName) == nil {
            // What torch loads: containers are walked for what they hold; tensors and torch's classes stay as they are.
            switch cls {
            case "collections.OrderedDict", "collections.Counter":
                guard let entries = source.dictEntries(id) else { return }
                try visitEntries(entries, path, depth)
                if let s = o.state { try visit(s, path, depth + 1) }  // an OrderedDict's __dict__ (`_metadata`)
            case "builtins.set":
                if let first = source.sequence(o.args)?.first { try visit(first, path, depth + 1) }
            default:
                break
            }
            return
        }
        if source.moduleFields(id) != nil { return moduleToStateDict(id, path, cls) }

        let args = source.sequence(o.args) ?? []
        let bare = o.state == nil && o.listItems.isEmpty && o.dictItems.isEmpty && o.kwargs == nil
        if (m == "pathlib" || m == "pathlib._local") && Self.pathClasses.contains(n) {
            let parts = args.compactMap { source.string($0) }
            guard o.construction == .reduce, bare, parts.count == args.count else {
                return cannot(id, path, cls, "not pickled as pathlib pickles a path (the class called with string parts)")
            }
            graph[id] = .string(PlainDecoders.pathString(parts, windows: n.contains("Windows")))
            return note(path, cls, "str")
        }
        if Self.namespaceClasses.contains(cls) || (m.hasPrefix("ultralytics.") && n == "IterableSimpleNamespace") {
            guard args.isEmpty, o.listItems.isEmpty, o.dictItems.isEmpty, let entries = stateEntries(o) else {
                return cannot(id, path, cls, "its state is not a dict of attributes")
            }
            try visitEntries(entries, path, depth)
            graph[id] = .dict(entries)
            return note(path, cls, "dict")
        }
        if m.hasPrefix("omegaconf") { return try omegaconf(id, o, cls, n, path, depth) }
        if m.hasPrefix("numpy"), n == "scalar" || n == "_reconstruct" { return try numpy(id, o, n, path, depth) }
        if m == "datetime", ["datetime", "date", "time"].contains(n) { return datetime(id, o, cls, n, args, bare, path) }
        if cls == "builtins.frozenset", o.construction == .reduce, bare, args.count <= 1 {
            let items = args.first.flatMap { source.sequence($0) } ?? []
            for (i, item) in items.enumerated() { try visit(item, Self.join(path, String(i)), depth + 1) }
            graph[id] = .set(items)
            return note(path, "frozenset", "set")
        }
        if cls == "builtins.bytes", let b = source.bytesValue(id), b.isEmpty { return emptyBytes(id, path) }
        if source.isDictClass(o.callable) {
            guard let entries = source.dictEntries(id), source.dictConstructorProblem(id) == nil,
                  stateEntries(o)?.isEmpty ?? false, o.listItems.isEmpty else {
                return cannot(id, path, cls, "a dict type with arguments or state the table does not read")
            }
            try visitEntries(entries, path, depth)
            graph[id] = .dict(entries)
            return note(path, cls, "dict")
        }
        if cls == "builtins.getattr", args.count == 2, case .global(let gm, let gn) = node(args[0]),
           let attr = source.string(args[1]), bare {
            let q = Self.qualified(gm, gn) + "." + attr
            graph[id] = .string(q)
            return note(path, "getattr(\(Self.qualified(gm, gn)), '\(attr)') (a reference)", "str")
        }
        if o.construction == .reduce, bare, args.count == 1, isPlainScalar(args[0], depth: 0),
           let first = n.split(separator: ".").last?.first, first.isUppercase,
           GlobalPolicy.classify(module: rawModule, name: rawName).globalClass != .dangerous {
            let value = node(args[0])
            graph[id] = value
            return note(path, cls, "\(Self.kind(value)) (enum value)")
        }
        return try plainObject(id, o, cls, args, path, depth)
    }

    /// An object made with no arguments (NEWOBJ, a call of a CapWords name, or protocol 0/1's
    /// `copyreg._reconstructor(cls, object, None)`) whose state is a dict of attributes: a dict of them with `__class__` first. A dict or list subclass
    /// (SETITEMS or APPENDS onto it, no state): a dict or list.
    private mutating func plainObject(_ id: NodeID, _ o: PickleObject, _ cls: String, _ args: [NodeID], _ path: String,
                                      _ depth: Int) throws(CheckpointError)
    {
        var className: String?
        if cls == "copyreg._reconstructor", args.count == 3, case .global(let cm, let cn) = node(args[0]),
           Self.qualified(cm, cn) != "copyreg._reconstructor",
           case .global(let bm, let bn) = node(args[1]), Self.qualified(bm, bn) == "builtins.object", source.isNone(args[2]) {
            className = Self.qualified(cm, cn)
        } else if args.isEmpty, o.kwargs.map({ source.dictEntries($0)?.isEmpty ?? false }) ?? true,
                  // NEWOBJ makes an instance of a class; a call may be of a function, whose result is unknown: only a
                  // CapWords name is taken for a class.
                  o.construction == .newObj || o.construction == .newObjEx
                    || cls.split(separator: ".").last?.first?.isUppercase == true {
            className = cls
        }
        guard let className else {
            return cannot(id, path, cls, "a call with arguments the table does not read")
        }
        guard let entries = stateEntries(o) else {
            return cannot(id, path, className, "its state is not a dict of attributes (a custom __getstate__)")
        }
        if !o.listItems.isEmpty || !o.dictItems.isEmpty {
            guard entries.isEmpty, o.listItems.isEmpty || o.dictItems.isEmpty else {
                return cannot(id, path, className, "a dict or list subclass with attributes")
            }
            if o.dictItems.isEmpty {
                for (i, item) in o.listItems.enumerated() { try visit(item, Self.join(path, String(i)), depth + 1) }
                graph[id] = .list(o.listItems)
                return note(path, className, "list")
            }
            try visitEntries(o.dictItems, path, depth)
            graph[id] = .dict(o.dictItems)
            return note(path, className, "dict")
        }
        guard entries.allSatisfy({ source.string($0.key).map { $0 != "__class__" } ?? false }) else {
            return cannot(id, path, className, "its state has keys that are not attribute names, or a __class__ key")
        }
        try visitEntries(entries, path, depth)
        let tag = DictEntry(key: graph.add(.string("__class__")), value: graph.add(.string(className)))
        graph[id] = .dict([tag] + entries)
        note(path, className, "dict with __class__")
    }

    /// The attributes a BUILD state gives: none, a dict, or `(dict or None, slots dict)`; nil for any other state.
    private func stateEntries(_ o: PickleObject) -> [DictEntry]? {
        guard let s = o.state else { return [] }
        if let e = source.dictEntries(s) { return e }
        if case .tuple(let pair) = node(s), pair.count == 2 {
            let first = source.isNone(pair[0]) ? [] : source.dictEntries(pair[0])
            let slots = source.isNone(pair[1]) ? [] : source.dictEntries(pair[1])
            if let first, let slots { return PickleGraph.merging(first + slots, source) }
        }
        return nil
    }

    private func isPlainScalar(_ id: NodeID, depth: Int) -> Bool {
        switch node(id) {
        case .none, .bool, .int, .bigInt, .float, .string: return true
        case .tuple(let items): return depth == 0 && items.allSatisfy { isPlainScalar($0, depth: 1) }
        default: return false
        }
    }

    private static func kind(_ n: PickleNode) -> String {
        switch n {
        case .none: "None"
        case .bool: "bool"
        case .int, .bigInt: "int"
        case .float: "float"
        case .string: "str"
        case .bytes: "bytes"
        case .tuple: "tuple"
        case .list: "list"
        case .dict: "dict"
        case .object: "complex"
        default: "value"
        }
    }

    private mutating func emptyBytes(_ id: NodeID, _ path: String) {
        let args = graph.add(.tuple([graph.add(.string("")), graph.add(.string("latin1"))]))
        graph[id] = .object(PickleObject(construction: .reduce, callable: graph.add(.global(module: "_codecs", name: "encode")),
                                         args: args))
        note(path, "b'' pickled as bytes() (weights_only refuses builtins.bytes)", "b'' pickled as _codecs.encode('', 'latin1')")
    }

    private mutating func moduleToStateDict(_ id: NodeID, _ path: String, _ cls: String) {
        var changes: [(record: String, before: String, after: String)] = []
        do {
            let sd = try graph.stateDictForm(id, name: Self.shown(path), depth: 0, changes: &changes)
            graph[id] = graph[sd]
            for c in changes { note(path, cls, c.after) }
        } catch {
            cannot(id, path, cls, "a module that does not become a state dict: \(error)")
        }
    }

    // MARK: - datetime

    private mutating func datetime(_ id: NodeID, _ o: PickleObject, _ cls: String, _ n: String, _ args: [NodeID],
                                   _ bare: Bool, _ path: String) {
        guard o.construction == .reduce, bare, (1...2).contains(args.count),
              let raw = source.bytesValue(args[0]) ?? latin1(args[0]) else {
            return cannot(id, path, cls, "not pickled as datetime pickles it (the class called with its bytes state)")
        }
        var offset: Int64?
        if args.count == 2, !source.isNone(args[1]) {
            guard let off = timezoneOffset(args[1]) else {
                return cannot(id, path, cls, "its tzinfo is not a datetime.timezone, whose offset the table reads")
            }
            offset = off
        }
        let iso = n == "date" ? PlainDecoders.isoDate(raw)
            : n == "time" ? PlainDecoders.isoTime(raw, offset: offset) : PlainDecoders.isoDateTime(raw, offset: offset)
        guard let iso, n != "date" || offset == nil else {
            return cannot(id, path, cls, "its pickled state is not one datetime writes")
        }
        graph[id] = .string(iso)
        note(path, cls, "str (isoformat)")
    }

    /// Python 2's spelling of a bytes state: a str of code points below 256.
    private func latin1(_ id: NodeID) -> [UInt8]? {
        guard let s = source.string(id) else { return nil }
        var out: [UInt8] = []
        for u in s.unicodeScalars {
            guard u.value < 256 else { return nil }
            out.append(UInt8(u.value))
        }
        return out
    }

    /// A `datetime.timezone(timedelta[, name])`'s offset in microseconds.
    private func timezoneOffset(_ id: NodeID) -> Int64? {
        guard case .object(let tz) = node(id), source.globalName(tz.callable) == "datetime.timezone",
              let targs = source.sequence(tz.args), (1...2).contains(targs.count),
              case .object(let td) = node(targs[0]), source.globalName(td.callable) == "datetime.timedelta",
              let t = source.sequence(td.args), t.count == 3,
              let d = source.int(t[0]), let s = source.int(t[1]), let us = source.int(t[2])
        else { return nil }
        return (d * 86400 + s) * 1_000_000 + us
    }

    // MARK: - numpy

    private mutating func numpy(_ id: NodeID, _ o: PickleObject, _ n: String, _ path: String, _ depth: Int) throws(CheckpointError) {
        if n == "scalar" {
            let args = source.sequence(o.args) ?? []
            guard args.count == 2, let dt = source.numpyDType(args[0]), let raw = source.bytesValue(args[1]),
                  let values = PlainDecoders.numpyElements(raw, code: dt.code, bigEndian: dt.bigEndian, in: &graph),
                  values.count == 1
            else { return cannot(id, path, "numpy scalar", "a dtype the table does not read") }
            graph[id] = values[0]
            return note(path, "numpy.\(PlainDecoders.numpyTypeName(dt.code))", Self.kind(values[0]))
        }
        guard let s = o.state, let st = source.sequence(s), st.count == 5, let shapeIDs = source.sequence(st[1]),
              let dt = source.numpyDType(st[2])
        else { return cannot(id, path, "numpy.ndarray", "not pickled as numpy pickles an array") }
        let shape = shapeIDs.compactMap { source.int($0) }.map(Int.init)
        let fortran = source.int(st[3]).map { $0 != 0 } ?? false
        let typeName = PlainDecoders.numpyTypeName(dt.code)
        let what = "numpy.ndarray (\(typeName), shape (\(shape.map(String.init).joined(separator: ", "))\(shape.count == 1 ? "," : "")))"
        var items: [NodeID]
        if dt.code.hasPrefix("O"), let objects = source.sequence(st[4]) {
            for (i, item) in objects.enumerated() { try visit(item, Self.join(path, String(i)), depth + 1) }
            items = objects
        } else if let raw = source.bytesValue(st[4]),
                  let values = PlainDecoders.numpyElements(raw, code: dt.code, bigEndian: dt.bigEndian, in: &graph) {
            items = values.map { graph.add($0) }
        } else {
            return cannot(id, path, what, "a dtype the table does not read")
        }
        guard shape.count == shapeIDs.count else { return cannot(id, path, what, "a shape that is not integers") }
        if shape.isEmpty {
            guard items.count == 1 else { return cannot(id, path, what, "its data does not match its shape") }
            graph[id] = graph[items[0]]
            return note(path, what, Self.kind(graph[id]))
        }
        guard let nested = PlainDecoders.nest(items, shape: shape, fortran: fortran, in: &graph) else {
            return cannot(id, path, what, "its data does not match its shape")
        }
        graph[id] = graph[nested]
        note(path, what, "list")
    }

    // MARK: - omegaconf

    /// omegaconf's containers, from the state its `__getstate__` pickles (omegaconf/basecontainer.py: the object's
    /// `__dict__` without `_flags_cache`): `_content` is None, a string (`???` missing, `${...}` interpolation) or the
    /// dict (DictConfig) or list (ListConfig) of child nodes; a value node (omegaconf/nodes.py: AnyNode, StringNode,
    /// IntegerNode, ...) holds its value in `_val`, a UnionNode its value node in `_content`. Converted as
    /// `BaseContainer._to_content` does with resolve=False: `_metadata` and `_parent` are not read.
    private mutating func omegaconf(_ id: NodeID, _ o: PickleObject, _ cls: String, _ n: String, _ path: String,
                                    _ depth: Int) throws(CheckpointError) {
        guard let st = o.state, let fields = source.dictEntries(st) else {
            return cannot(id, path, cls, "an omegaconf object without the state omegaconf pickles")
        }
        func field(_ k: String) -> NodeID? { fields.first { source.string($0.key) == k }?.value }
        let isDict = n == "DictConfig", isList = n == "ListConfig"
        guard isDict || isList else {
            guard let v = field("_val") ?? field("_content") else {
                return cannot(id, path, cls, "an omegaconf object that is neither a container nor a value node")
            }
            let value = try omegaconfValue(v, path, depth + 1)
            graph[id] = graph[value]
            return
        }
        guard let content = field("_content") else { return cannot(id, path, cls, "an omegaconf container without _content") }
        let outer = !inOmegaconf
        inOmegaconf = true
        defer { if outer { inOmegaconf = false } }
        let result: PickleNode
        switch node(content) {
        case .none: result = .none
        case .string(let s): result = .string(s)
        default:
            if isDict, let entries = source.dictEntries(content) {
                var out: [DictEntry] = []
                for (i, e) in entries.enumerated() {
                    let label = source.keyText(e.key) ?? "(key \(i))"
                    if source.keyText(e.key) == nil { try visit(e.key, Self.join(path, label), depth + 1) }
                    out.append(DictEntry(key: e.key, value: try omegaconfValue(e.value, Self.join(path, label), depth + 1)))
                }
                result = .dict(out)
            } else if isList, let items = source.sequence(content) {
                var out: [NodeID] = []
                for (i, item) in items.enumerated() {
                    out.append(try omegaconfValue(item, Self.join(path, String(i)), depth + 1))
                }
                result = .list(out)
            } else {
                return cannot(id, path, cls, "its _content is not a \(isDict ? "dict" : "list")")
            }
        }
        graph[id] = result
        if outer { note(path, cls, isDict ? "dict" : "list") }
    }

    /// The plain value of an omegaconf child: a container converted in place, a value node's `_val` (converted), or
    /// a plain value as it is.
    private mutating func omegaconfValue(_ id: NodeID, _ path: String, _ depth: Int) throws(CheckpointError) -> NodeID {
        guard depth <= maxNesting else { throw .tooDeep(maxNesting) }
        if case .object(let o) = node(id), let name = source.globalName(o.callable), name.hasPrefix("omegaconf"),
           !name.hasSuffix("DictConfig"), !name.hasSuffix("ListConfig"),
           let st = o.state, let fields = source.dictEntries(st),
           let inner = fields.first(where: { source.string($0.key) == "_val" })?.value
            ?? fields.first(where: { source.string($0.key) == "_content" })?.value
        {
            return try omegaconfValue(inner, path, depth + 1)
        }
        try visit(id, path, depth)
        return id
    }
}
