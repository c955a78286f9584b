/// What `ckpt scan --weights-only` says: whether `torch.load(weights_only=True)` loads the file (the replay
/// ``ScanBuilder`` runs), and if not, the first refusal, the value it refuses with its path in the file when it can
/// be found there, and the conversion `ckpt strip --state-dict` applies to such a value.
public struct WeightsOnlyCheck: Sendable {
    public var file: String
    public var loads: Bool
    /// Why it is refused (the first refusal met, `data.pkl: global pathlib.PosixPath is not allow-listed (byte N)`),
    /// or a note on how it loads.
    public var reason: String?
    /// The refused value, when the refusal is a global that the file's graph holds.
    public var value: RefusedValue?

    /// A refused value: where it is, its class, and what `strip --state-dict` makes of it.
    public struct RefusedValue: Sendable {
        /// A dotted path of record names, dict keys, attribute names and list indices (`opt.save_dir`).
        public var path: String
        /// `pathlib.PosixPath`; for a bare reference, the class or function referenced.
        public var className: String
        /// `str (str(path))`, or nil when `strip --state-dict` cannot convert it.
        public var conversion: String?
    }

    public var json: JSONValue {
        .object([
            ("file", .string(file)), ("loads", .bool(loads)), ("reason", reason.map { .string($0) } ?? .null),
            ("value", value.map { v in
                .object([("path", .string(v.path)), ("class", .string(v.className)),
                         ("convertible", .bool(v.conversion != nil)),
                         ("conversion", .string(v.conversion ?? WeightsOnlyConversion.notConvertible))])
            } ?? .null),
        ])
    }

    public var text: String {
        guard !loads else { return "\(file): weights_only=True: loads" + (reason.map { " (\($0))" } ?? "") }
        var s = "\(file): weights_only=True: refused\n  first refusal: \(reason ?? "")"
        if let v = value {
            s += "\n  value: \(v.path): \(v.className)"
            s += "\n  ckpt strip --state-dict: " + (v.conversion.map { "converts it to \($0)" } ?? WeightsOnlyConversion.notConvertible)
        }
        return s
    }
}

/// Builds ``WeightsOnlyCheck`` for a file (not a folder: `torch.load` reads files).
public struct WeightsOnlyCheckBuilder {
    public let path: String
    public var limits: PickleLimits

    public init(path: String, limits: PickleLimits = PickleLimits()) {
        self.path = path
        self.limits = limits
    }

    /// The check. Throws when the file cannot be read far enough to tell (then neither verdict would be sound).
    public func build() throws(CheckpointError) -> WeightsOnlyCheck {
        let report = try ScanBuilder(path: path, limits: limits).build()
        let refusing = report.pickles.first { $0.weightsOnlyRefusal != nil }
        if refusing == nil, let e = report.readError, !report.weightsOnlyLoads,
           report.weightsOnlyReason?.hasPrefix("the file cannot be read") ?? true
        {
            throw e
        }
        var check = WeightsOnlyCheck(file: path, loads: report.weightsOnlyLoads, reason: report.weightsOnlyReason)
        // The refused global's value in the graph: only the main pickle's (data.pkl) values are in it.
        if !report.weightsOnlyLoads, report.readError == nil, let global = refusing?.weightsOnlyRefusedGlobal,
           let c = try? Checkpoint(path: path, limits: limits), c.torchScript == nil,
           let found = WeightsOnlyConversion.find(global, in: c.graph, limits: limits)
        {
            check.value = found
        }
        return check
    }
}

/// How `ckpt strip --state-dict` makes a value `weights_only=True` refuses into plain data, by class (the table of
/// the README's strip section), and where such a value is in a graph.
public enum WeightsOnlyConversion {
    public static let notConvertible = "not convertible: --drop-unconvertible drops it"

    /// The first value (depth first, in pickle order) made by or referring to `global`, with its path and conversion.
    static func find(_ global: WeightsOnlyRefusedGlobal, in g: PickleGraph, limits: PickleLimits)
        -> WeightsOnlyCheck.RefusedValue?
    {
        func isGlobal(_ id: NodeID) -> Bool {
            if case .global(let m, let n) = g[id] { return m == global.module && n == global.name }
            return false
        }
        // The class an object is made of: its callable, or the class `copyreg._reconstructor(cls, base, state)` and
        // numpy's `_reconstruct(cls, shape, dtype)` are given.
        func madeOf(_ o: PickleObject) -> NodeID {
            if let f = g.globalName(o.callable), f == "copyreg._reconstructor" || f.hasSuffix("multiarray._reconstruct"),
               let args = g.sequence(o.args), let first = args.first, case .global = g[first]
            {
                return first
            }
            return o.callable
        }
        var seen = Set<NodeID>()
        var stack: [(NodeID, [String], Int)] = [(g.root, [], 0)]
        while let (id, path, depth) = stack.popLast() {
            guard depth <= limits.maxNesting, seen.insert(id).inserted else { continue }
            let shown = path.isEmpty ? "(top level)" : path.joined(separator: ".")
            if isGlobal(id) { return .init(path: shown, className: pythonName(g, id), conversion: "str (the name 'module.qualname')") }
            if case .object(let o) = g[id], isGlobal(o.callable) || isGlobal(madeOf(o)) {
                return .init(path: shown, className: pythonName(g, madeOf(o)), conversion: conversion(g, id, o, madeOf(o)))
            }
            if (try? g.tensor(id)) != nil { continue }
            var next: [(NodeID, [String])] = []
            func key(_ k: NodeID) -> String { g.keyText(k) ?? "?" }
            if let entries = g.dictEntries(id) {
                for e in entries { next.append((e.value, path + [key(e.key)])) }
                if case .object(let o) = g[id], let s = o.state { next.append((s, path)) }
            } else {
                switch g[id] {
                case .list(let items), .tuple(let items), .set(let items), .frozenset(let items):
                    for (i, item) in items.enumerated() { next.append((item, path + [String(i)])) }
                case .object(let o):
                    if let s = o.state, let entries = g.dictEntries(s) {
                        for e in entries {
                            let k = key(e.key)
                            next.append((e.value, ["_parameters", "_buffers", "_modules"].contains(k) ? path : path + [k]))
                        }
                    } else if let s = o.state {
                        next.append((s, path))
                    }
                    next.append((o.args, path))
                    if let k = o.kwargs { next.append((k, path)) }
                    for (i, item) in o.listItems.enumerated() { next.append((item, path + [String(i)])) }
                    for e in o.dictItems { next.append((e.value, path + [key(e.key)])) }
                default:
                    break
                }
            }
            for (n, p) in next.reversed() where !seen.contains(n) { stack.append((n, p, depth + 1)) }
        }
        return nil
    }

    private static func pythonName(_ g: PickleGraph, _ id: NodeID) -> String {
        guard case .global(let m, let n) = g[id] else { return g.globalName(id) ?? "?" }
        let (pm, pn) = GlobalPolicy.pythonName(m, n)
        return pm + "." + pn
    }

    /// What `strip --state-dict` makes of object `id` (made of class `cls`, a global node), or nil when it cannot
    /// convert it: the rules of its plain-data table, by class and by how the object was pickled.
    static func conversion(_ g: PickleGraph, _ id: NodeID, _ o: PickleObject, _ cls: NodeID) -> String? {
        guard case .global(let rawModule, let rawName) = g[cls] else { return nil }
        let (module, name) = GlobalPolicy.pythonName(rawModule, rawName)
        let full = module + "." + name
        let args = g.sequence(o.args) ?? []
        let bare = o.state == nil && o.listItems.isEmpty && o.dictItems.isEmpty && o.kwargs == nil
        // The attributes a BUILD state gives: none, a dict, or `(dict or None, slots dict)`.
        var stateIsAttributes: Bool {
            guard let s = o.state else { return true }
            if g.dictEntries(s) != nil { return true }
            if case .tuple(let pair) = g[s], pair.count == 2, g.isNone(pair[0]) || g.dictEntries(pair[0]) != nil,
               g.dictEntries(pair[1]) != nil { return true }
            return false
        }
        if g.moduleFields(id) != nil { return "its state dict (m.state_dict())" }
        if module == "pathlib" || module == "pathlib._local" {
            return o.construction == .reduce && bare && args.allSatisfy({ g.string($0) != nil }) ? "str (str(path))" : nil
        }
        if full == "argparse.Namespace" || full == "types.SimpleNamespace"
            || (module.hasPrefix("ultralytics.") && name == "IterableSimpleNamespace")
        {
            return args.isEmpty && o.listItems.isEmpty && o.dictItems.isEmpty && stateIsAttributes ? "dict (vars(ns))" : nil
        }
        if module.hasPrefix("omegaconf") { return "dicts and lists (OmegaConf.to_container(cfg))" }
        if module.hasPrefix("numpy") {
            if name == "scalar" { return "a Python number (x.item())" }
            if name == "_reconstruct" || name == "ndarray" { return "lists (arr.tolist())" }
            return nil
        }
        if module == "datetime", ["datetime", "date", "time"].contains(name) { return "str (x.isoformat())" }
        if full == "builtins.frozenset" { return o.construction == .reduce && bare && args.count <= 1 ? "a set (set(x))" : nil }
        if full == "builtins.bytes" { return g.bytesValue(id)?.isEmpty == true ? "the same b'' (pickled as _codecs.encode)" : nil }
        if g.isDictClass(cls) {
            return g.dictConstructorProblem(id) == nil && o.listItems.isEmpty
                && (o.state.map { g.dictEntries($0)?.isEmpty ?? false } ?? true) ? "dict (dict(x))" : nil
        }
        if full == "builtins.getattr", args.count == 2, case .global = g[args[0]], g.string(args[1]) != nil, bare {
            return "str (the name 'module.qualname.attr')"
        }
        // How an enum member pickles (Enum.__reduce_ex__): its class (a CapWords name) called with its value alone.
        if o.construction == .reduce, bare, args.count == 1, name.split(separator: ".").last?.first?.isUppercase == true,
           isPlainScalar(g, args[0]), GlobalPolicy.classify(module: rawModule, name: rawName).globalClass != .dangerous
        {
            return "its value (e.value)"
        }
        // An instance made with no arguments (NEWOBJ, a CapWords class called, or `copyreg._reconstructor(cls, object,
        // None)`) whose state is its attributes: a dict of them with `__class__`; a dict or list subclass: a dict or list.
        let reconstructed = g.globalName(o.callable) == "copyreg._reconstructor" && args.count == 3
            && ["builtins.object", "__builtin__.object"].contains(g.globalName(args[1]) ?? "") && g.isNone(args[2])
        let instance = reconstructed || (args.isEmpty && (o.construction == .newObj || o.construction == .newObjEx
            || name.split(separator: ".").last?.first?.isUppercase == true))
        guard instance, stateIsAttributes else { return nil }
        if !o.listItems.isEmpty || !o.dictItems.isEmpty {
            guard o.state == nil, o.listItems.isEmpty != o.dictItems.isEmpty else { return nil }
            return o.dictItems.isEmpty ? "list (list(x))" : "dict (dict(x))"
        }
        return "a dict of its attributes with \"__class__\": \"\(full)\""
    }

    private static func isPlainScalar(_ g: PickleGraph, _ id: NodeID) -> Bool {
        switch g[id] {
        case .none, .bool, .int, .bigInt, .float, .string: return true
        default: return false
        }
    }
}
