/// A tensor and its name in a state_dict view (`model.9.cv1.conv.weight`).
public struct NamedTensor: Sendable {
    public var name: String
    public var tensor: TensorRef
}

/// Where a state_dict entry lives in the graph, so surgery can remove or rename it.
public struct EntryLocation: Hashable, Sendable {
    /// The dict-like node holding the entry (a state dict, or a module's `_parameters` / `_buffers`).
    public var container: NodeID
    /// The key node of the entry.
    public var key: NodeID
}

/// The torch meaning of a pickle graph: modules, state dicts, tensors, numpy values.
extension PickleGraph {
    /// The `__dict__` of an `nn.Module` object: an object whose BUILD state holds `_parameters`,
    /// `_buffers` and `_modules`.
    public func moduleState(_ id: NodeID) -> NodeID? {
        moduleFields(id)?.state
    }

    /// What the state_dict walk reads of a module's `__dict__`, found in one pass over it (the first entry of each
    /// name, as ``lookup(_:_:)`` finds).
    struct ModuleFields {
        var state: NodeID
        var parameters: NodeID?
        var buffers: NodeID?
        var modules: NodeID?
        var nonPersistentBuffers: NodeID?
        /// A TorchScript module: its class declaration (``PickleGraph/scriptClass(_:)``) says which attributes of
        /// `state` are parameters, buffers and submodules (the four fields above are then nil).
        var isScript = false
    }

    /// The module fields of an `nn.Module` object (see ``moduleState(_:)``), or nil when it is not one.
    func moduleFields(_ id: NodeID) -> ModuleFields? {
        guard case .object(let o) = self[id], let s = o.state, let entries = dictEntries(s) else { return nil }
        if let decl = scriptClass(id) { return decl.isModule ? ModuleFields(state: s, isScript: true) : nil }
        var f = ModuleFields(state: s)
        for e in entries {
            // Most keys of a module's __dict__ are none of these four; their lengths (8, 11, 27) rule them out
            // without a string comparison, which is the costliest step of this walk otherwise.
            guard case .string(let k) = self[e.key] else { continue }
            let n = k.utf8.count
            guard n == 8 || n == 11 || n == 27 else { continue }
            switch k {
            case "_parameters": if f.parameters == nil { f.parameters = e.value }
            case "_buffers": if f.buffers == nil { f.buffers = e.value }
            case "_modules": if f.modules == nil { f.modules = e.value }
            case "_non_persistent_buffers_set": if f.nonPersistentBuffers == nil { f.nonPersistentBuffers = e.value }
            default: break
            }
        }
        guard f.modules != nil, f.parameters != nil else { return nil }
        return f
    }

    /// Whether a value is an optimizer's state, the one rule every command judges it by: a dict with `state` and
    /// `param_groups` (`torch.optim.Optimizer.state_dict()`), or that dict flattened as
    /// `get_optimizer_state_dict(..., StateDictOptions(flatten_optimizer_state_dict=True))` gives it
    /// (torch/distributed/checkpoint/state_dict.py `_flatten_optim_state_dict`; torchtitan's default): every key
    /// `state.<fqn>.<name>` or `param_groups.<fqn>.<key>`, and at least one of the latter (every parameter has a group).
    public func isOptimizerState(_ id: NodeID) -> Bool {
        guard let entries = dictEntries(id), !entries.isEmpty else { return false }
        if lookup(id, "state") != nil && lookup(id, "param_groups") != nil { return true }
        var groups = false
        for e in entries {
            guard case .string(let k) = self[e.key] else { return false }
            if k.hasPrefix("param_groups.") { groups = true } else if !k.hasPrefix("state.") { return false }
        }
        return groups
    }

    /// The class name of a module or other object (`models.yolo.DetectionModel`).
    public func className(_ id: NodeID) -> String? {
        guard case .object(let o) = self[id] else { return nil }
        return globalName(o.callable)
    }

    /// The strings of a set node (`_non_persistent_buffers_set`), in either spelling pickle uses.
    public func stringSet(_ id: NodeID) -> Set<String> {
        stringSet(id, depth: 0)
    }

    private func stringSet(_ id: NodeID, depth: Int) -> Set<String> {
        guard depth < 2 else { return [] }  // `set([...])`: one call around one list
        switch self[id] {
        case .set(let items), .frozenset(let items), .list(let items), .tuple(let items):
            return Set(items.compactMap { string($0) })
        case .object(let o):
            if let name = globalName(o.callable), name.hasSuffix(".set") || name.hasSuffix(".frozenset"),
               let args = sequence(o.args), let first = args.first {
                return stringSet(first, depth: depth + 1)
            }
            return Set(o.listItems.compactMap { string($0) })
        default:
            return []
        }
    }

    /// A dict key as a path component: strings as they are, integers in decimal.
    func keyText(_ id: NodeID) -> String? {
        switch self[id] {
        case .string(let s): return s
        case .int(let v): return String(v)
        default: return nil
        }
    }

    /// The state_dict view of a value: for a module object exactly the keys, in the order, that
    /// `module.state_dict()` returns; for dicts and lists the dotted paths to every tensor inside
    /// (a state dict gives itself; an optimizer state gives `state.0.momentum_buffer`).
    public func stateDict(_ id: NodeID, limits: PickleLimits = PickleLimits()) throws(CheckpointError) -> [NamedTensor] {
        try stateDictLocations(id, limits: limits).map(\.0)
    }

    /// The state_dict view with where each entry lives.
    public func stateDictLocations(_ id: NodeID, limits: PickleLimits = PickleLimits())
        throws(CheckpointError) -> [(NamedTensor, EntryLocation?)]
    {
        var out: [(NamedTensor, EntryLocation?)] = []
        // Shared containers are walked once per path to them, as state_dict() would; a pickle that reuses memo
        // entries to make exponentially many paths (memo abuse) is stopped by this budget instead of running forever.
        var budget = Self.visitBudget(nodes: nodes.count)
        try collect(id, prefix: "", depth: 0, limit: limits.maxNesting, into: &out, budget: &budget)
        return out
    }

    /// Most node visits a walk of the state_dict view may make: enough for every real checkpoint (each node
    /// a few times over), never exponential.
    static func visitBudget(nodes: Int) -> Int { max(1 << 17, nodes.multipliedReportingOverflow(by: 4).partialValue) }

    /// Walks the state_dict view as ``stateDict(_:limits:)`` does, with the same nesting limit and visit budget, but
    /// spells no names and parses no tensor: what the checks at open need (their pass over the arena has already
    /// parsed and checked every tensor).
    public func checkStateDictWalk(_ id: NodeID, limits: PickleLimits = PickleLimits()) throws(CheckpointError) {
        var out: [(NamedTensor, EntryLocation?)] = []
        var budget = Self.visitBudget(nodes: nodes.count)
        try collect(id, prefix: nil, parse: false, depth: 0, limit: limits.maxNesting, into: &out, budget: &budget)
    }

    /// The tensors of the state_dict view, in its order, with empty names: for totals (`info`), which need no
    /// names, without spelling thousands of them.
    public func stateDictTensors(_ id: NodeID, limits: PickleLimits = PickleLimits()) throws(CheckpointError) -> [TensorRef] {
        var out: [(NamedTensor, EntryLocation?)] = []
        var budget = Self.visitBudget(nodes: nodes.count)
        try collect(id, prefix: nil, parse: true, depth: 0, limit: limits.maxNesting, into: &out, budget: &budget)
        return out.map(\.0.tensor)
    }

    /// `prefix` nil: names are not spelled; then `parse` false: tensors are not parsed either (see
    /// ``checkStateDictWalk(_:limits:)``).
    private func collect(_ id: NodeID, prefix: String?, parse: Bool = true, depth: Int, limit: Int,
                         into out: inout [(NamedTensor, EntryLocation?)],
                         at location: EntryLocation? = nil, budget: inout Int)
        throws(CheckpointError)
    {
        guard depth <= limit else { throw .tooDeep(limit) }
        budget -= 1
        guard budget >= 0 else { throw .sharedTooOften(Self.visitBudget(nodes: nodes.count)) }
        // The name is spelled only for a tensor (or its error): most nodes met here are not tensors.
        if prefix != nil || parse {
            func name() -> String {
                guard let prefix else { return "" }
                return prefix.hasSuffix(".") ? String(prefix.dropLast()) : prefix
            }
            let t: TensorRef?
            do { t = try tensor(id) } catch { throw .tensor(TensorCheckError(tensor: name(), reason: error.reason)) }
            if let t {
                out.append((NamedTensor(name: name(), tensor: t), location))
                return
            }
        } else if isTensorNode(id) {
            return
        }
        if let fields = moduleFields(id) {
            if fields.isScript {
                try collectScriptModule(id, fields.state, prefix: prefix, parse: parse, depth: depth, limit: limit,
                                        into: &out, budget: &budget)
                return
            }
            let nonPersistent = fields.nonPersistentBuffers.map { stringSet($0) } ?? []
            for (holder, isBuffers) in [(fields.parameters, false), (fields.buffers, true)] {
                guard let holder else { continue }
                for e in dictEntries(holder) ?? [] {
                    guard let k = string(e.key), !isNone(e.value) else { continue }
                    if isBuffers && nonPersistent.contains(k) { continue }
                    try collect(e.value, prefix: prefix.map { $0 + k }, parse: parse, depth: depth + 1, limit: limit, into: &out,
                                at: EntryLocation(container: holder, key: e.key), budget: &budget)
                }
            }
            if let mods = fields.modules {
                for e in dictEntries(mods) ?? [] {
                    guard let k = string(e.key), !isNone(e.value) else { continue }
                    try collect(e.value, prefix: prefix.map { $0 + k + "." }, parse: parse, depth: depth + 1, limit: limit, into: &out, budget: &budget)
                }
            }
            return
        }
        if let entries = dictEntries(id) {
            for e in entries {
                guard let k = keyText(e.key) else { continue }
                try collect(e.value, prefix: prefix.map { $0 + k + "." }, parse: parse, depth: depth + 1, limit: limit, into: &out,
                            at: EntryLocation(container: id, key: e.key), budget: &budget)
            }
            return
        }
        if case .list(let items) = self[id] {
            for (i, item) in items.enumerated() {
                try collect(item, prefix: prefix.map { $0 + "\(i)." }, parse: parse, depth: depth + 1, limit: limit, into: &out, budget: &budget)
            }
        } else if case .tuple(let items) = self[id] {
            for (i, item) in items.enumerated() {
                try collect(item, prefix: prefix.map { $0 + "\(i)." }, parse: parse, depth: depth + 1, limit: limit, into: &out, budget: &budget)
            }
        }
    }

    /// The state_dict walk through a TorchScript module (see ``collect``): parameters, then buffers, then submodules,
    /// each in slot order, as `named_parameters`/`named_buffers`/`named_children` (torch/csrc/jit/api/module.h) list
    /// them. A function of its own so that `collect`'s frame, which the nesting limit multiplies, stays small.
    @inline(never)
    private func collectScriptModule(_ id: NodeID, _ state: NodeID, prefix: String?, parse: Bool,
                                     depth: Int, limit: Int, into out: inout [(NamedTensor, EntryLocation?)],
                                     budget: inout Int) throws(CheckpointError)
    {
        guard let decl = scriptClass(id) else { return }
        var attributes: [String: DictEntry] = [:]
        for e in dictEntries(state) ?? [] {
            if let k = string(e.key), attributes[k] == nil { attributes[k] = e }
        }
        for names in [decl.parametersInSlotOrder, decl.buffersInSlotOrder] {
            for k in names {
                guard let e = attributes[k], !isNone(e.value) else { continue }
                try collect(e.value, prefix: prefix.map { $0 + k }, parse: parse, depth: depth + 1, limit: limit, into: &out,
                            at: EntryLocation(container: state, key: e.key), budget: &budget)
            }
        }
        for k in decl.attributes {
            guard let e = attributes[k], scriptClass(e.value)?.isModule == true else { continue }
            try collect(e.value, prefix: prefix.map { $0 + k + "." }, parse: parse, depth: depth + 1, limit: limit, into: &out, budget: &budget)
        }
    }

    /// Every tensor reachable from `start` (inside modules, attributes, lists), each once, in pickle
    /// order, with a path naming where it was met. Used by the checks, the writer and `keys --all`.
    public func allTensors(from start: NodeID, limits: PickleLimits = PickleLimits()) throws(CheckpointError) -> [NamedTensor] {
        var out: [NamedTensor] = []
        try walkTensors(from: start, limits: limits) { t, path in out.append(NamedTensor(name: path(), tensor: t)) }
        return out
    }

    /// Whether an object is `builtins.set([...])` / `frozenset([...])` (or Python 2's `__builtin__`) made from one
    /// list or tuple and nothing else.
    private func isSetCall(_ o: PickleObject) -> Bool {
        guard case .global(let m, let n) = self[o.callable], m == "builtins" || m == "__builtin__",
              n == "set" || n == "frozenset", o.state == nil, o.listItems.isEmpty, o.dictItems.isEmpty,
              let args = sequence(o.args), args.count == 1, sequence(args[0]) != nil else { return false }
        return true
    }

    /// The walk behind ``allTensors(from:limits:)``: calls `found` with each tensor reachable from `start`, once per
    /// tensor node, in pickle order (depth first, each node at its first meeting), and a function that spells its
    /// path: dict keys, list indices and attribute names joined by dots, the module bookkeeping levels
    /// (`_parameters`, `_buffers`, `_modules`) skipped, so that a state_dict entry has its state_dict name.
    ///
    /// Every edge of the graph is followed (``forEachChild(of:)``: dict values, list and tuple items, an object's
    /// arguments, keyword arguments, appended and set items and BUILD state) except a callable (a global); a tensor
    /// is not looked into (a parameter's wrapped tensor, a quantized tensor's scales are part of it). Arguments and
    /// a non-dict state add no path component; the items of `set([...])` are numbered as a list's; a dict key that
    /// is not a string or a number (a tensor used as a key) is named `<key N>`, N its entry's position.
    func walkTensors(from start: NodeID, limits: PickleLimits,
                     _ found: (TensorRef, _ path: () -> String) -> Void) throws(CheckpointError)
    {
        // This walk meets every reachable node, so paths are kept as links to their parent (a dict key or a list
        // index) and spelled out only for the tensors found.
        enum Component { case key(NodeID), index(Int), keyObject(Int) }
        var links: [(parent: Int, component: Component)] = []  // index -1: the empty path
        func path(_ link: Int) -> String {
            var parts: [Component] = []
            var i = link
            while i >= 0 { parts.append(links[i].component); i = links[i].parent }
            var p = ""
            for c in parts.reversed() {
                let k: String
                switch c {
                case .key(let id): k = keyText(id) ?? "?"
                case .index(let n): k = String(n)
                case .keyObject(let n): k = "<key \(n)>"
                }
                p = p.isEmpty ? k : p + "." + k
            }
            return p
        }
        func link(_ parent: Int, _ c: Component) -> Int {
            links.append((parent, c))
            return links.count - 1
        }
        var seen = [Bool](repeating: false, count: nodes.count)
        // Iterative walk; the nesting limit also bounds the length of the paths it builds.
        var stack: [(NodeID, Int, Int)] = [(start, -1, 0)]
        var next: [(NodeID, Int)] = []
        while let (id, at, depth) = stack.popLast() {
            guard !seen[id.index] else { continue }
            seen[id.index] = true
            guard depth <= limits.maxNesting else { throw .tooDeep(limits.maxNesting) }
            let t: TensorRef?
            do { t = try tensor(id) } catch { throw .tensor(TensorCheckError(tensor: path(at), reason: error.reason)) }
            if let t {
                found(t, { path(at) })
                seen[t.tensorNode.index] = true
                continue
            }
            next.removeAll(keepingCapacity: true)
            func addKeyObjects(_ entries: [DictEntry]) {
                for (i, e) in entries.enumerated() {
                    switch self[e.key] {
                    case .object, .tuple, .list: next.append((e.key, link(at, .keyObject(i))))
                    default: break
                    }
                }
            }
            if let entries = dictEntries(id) {
                for e in entries { next.append((e.value, link(at, .key(e.key)))) }
                addKeyObjects(entries)
                if case .object(let o) = self[id] {
                    // An OrderedDict's BUILD state (`_metadata`), then what its call was given (Python 2 builds
                    // it from a list of pairs) and anything appended: unusual, but the pickle builds them all.
                    if let s = o.state { next.append((s, at)) }
                    next.append((o.args, at))
                    if let k = o.kwargs { next.append((k, at)) }
                    for (i, item) in o.listItems.enumerated() { next.append((item, link(at, .index(i)))) }
                }
            } else {
                switch self[id] {
                case .list(let items), .tuple(let items), .set(let items), .frozenset(let items):
                    for (i, item) in items.enumerated() { next.append((item, link(at, .index(i)))) }
                case .object(let o) where isSetCall(o):
                    // `set([a, b])`, as pickle protocol 2 writes a set: its items, numbered.
                    for (i, item) in sequence(sequence(o.args)![0])!.enumerated() { next.append((item, link(at, .index(i)))) }
                case .object(let o):
                    if let s = o.state, let entries = dictEntries(s) {
                        // An object's attributes: skip the module bookkeeping level in paths.
                        for e in entries {
                            var skip = false
                            if let k = string(e.key), k.utf8.count == 8 || k.utf8.count == 11 {
                                switch k {
                                case "_parameters", "_buffers", "_modules": skip = true
                                default: break
                                }
                            }
                            next.append((e.value, skip ? at : link(at, .key(e.key))))
                        }
                    } else if let s = o.state {
                        next.append((s, at))
                    }
                    next.append((o.args, at))
                    if let k = o.kwargs { next.append((k, at)) }
                    for (i, item) in o.listItems.enumerated() { next.append((item, link(at, .index(i)))) }
                    // Items SETITEM'd onto an object of a class that is not a known dict type (a dict subclass).
                    for e in o.dictItems { next.append((e.value, link(at, .key(e.key)))) }
                    addKeyObjects(o.dictItems)
                case .persistent(let pid):
                    next.append((pid, at))
                default:
                    break
                }
            }
            for (n, l) in next.reversed() where !seen[n.index] { stack.append((n, l, depth + 1)) }
        }
    }
}
