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
        guard case .object(let o) = self[id], let s = o.state, dictEntries(s) != nil,
              lookup(s, "_modules") != nil, lookup(s, "_parameters") != nil
        else { return nil }
        return s
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

    private func collect(_ id: NodeID, prefix: String, depth: Int, limit: Int, into out: inout [(NamedTensor, EntryLocation?)],
                         at location: EntryLocation? = nil, budget: inout Int)
        throws(CheckpointError)
    {
        guard depth <= limit else { throw .tooDeep(limit) }
        budget -= 1
        guard budget >= 0 else { throw .sharedTooOften(Self.visitBudget(nodes: nodes.count)) }
        let name = prefix.hasSuffix(".") ? String(prefix.dropLast()) : prefix
        let t: TensorRef?
        do { t = try tensor(id) } catch { throw .tensor(TensorCheckError(tensor: name, reason: error.reason)) }
        if let t {
            out.append((NamedTensor(name: name, tensor: t), location))
            return
        }
        if let state = moduleState(id) {
            let nonPersistent = lookup(state, "_non_persistent_buffers_set").map { stringSet($0) } ?? []
            for field in ["_parameters", "_buffers"] {
                guard let holder = lookup(state, field) else { continue }
                for e in dictEntries(holder) ?? [] {
                    guard let k = string(e.key), self[e.value] != .none else { continue }
                    if field == "_buffers" && nonPersistent.contains(k) { continue }
                    try collect(e.value, prefix: prefix + k, depth: depth + 1, limit: limit, into: &out,
                                at: EntryLocation(container: holder, key: e.key), budget: &budget)
                }
            }
            if let mods = lookup(state, "_modules") {
                for e in dictEntries(mods) ?? [] {
                    guard let k = string(e.key), self[e.value] != .none else { continue }
                    try collect(e.value, prefix: prefix + k + ".", depth: depth + 1, limit: limit, into: &out, budget: &budget)
                }
            }
            return
        }
        if let entries = dictEntries(id) {
            for e in entries {
                guard let k = keyText(e.key) else { continue }
                try collect(e.value, prefix: prefix + k + ".", depth: depth + 1, limit: limit, into: &out,
                            at: EntryLocation(container: id, key: e.key), budget: &budget)
            }
            return
        }
        if case .list(let items) = self[id] {
            for (i, item) in items.enumerated() {
                try collect(item, prefix: prefix + "\(i).", depth: depth + 1, limit: limit, into: &out, budget: &budget)
            }
        } else if case .tuple(let items) = self[id] {
            for (i, item) in items.enumerated() {
                try collect(item, prefix: prefix + "\(i).", depth: depth + 1, limit: limit, into: &out, budget: &budget)
            }
        }
    }

    /// Every tensor reachable from `start` (inside modules, attributes, lists), each once, in pickle
    /// order, with a path naming where it was met. Used by the checks and the writer.
    public func allTensors(from start: NodeID, limits: PickleLimits = PickleLimits()) throws(CheckpointError) -> [NamedTensor] {
        var out: [NamedTensor] = []
        var seen = Set<NodeID>()
        // Iterative walk with paths; the nesting limit also bounds the length of the paths it builds.
        var stack: [(NodeID, String, Int)] = [(start, "", 0)]
        while let (id, path, depth) = stack.popLast() {
            guard seen.insert(id).inserted else { continue }
            guard depth <= limits.maxNesting else { throw .tooDeep(limits.maxNesting) }
            let t: TensorRef?
            do { t = try tensor(id) } catch { throw .tensor(TensorCheckError(tensor: path, reason: error.reason)) }
            if let t {
                out.append(NamedTensor(name: path, tensor: t))
                seen.insert(t.tensorNode)
                continue
            }
            var next: [(NodeID, String)] = []
            func join(_ k: String) -> String { path.isEmpty ? k : path + "." + k }
            if let entries = dictEntries(id) {
                for e in entries { next.append((e.value, join(keyText(e.key) ?? "?"))) }
                if case .object(let o) = self[id], let s = o.state { next.append((s, path)) }
            } else {
                switch self[id] {
                case .list(let items), .tuple(let items), .set(let items), .frozenset(let items):
                    for (i, item) in items.enumerated() { next.append((item, join(String(i)))) }
                case .object(let o):
                    if let s = o.state, let entries = dictEntries(s) {
                        // An object's attributes: skip the module bookkeeping level in paths.
                        for e in entries {
                            let k = keyText(e.key) ?? "?"
                            let skip = ["_parameters", "_buffers", "_modules"].contains(k)
                            next.append((e.value, skip ? path : join(k)))
                        }
                    } else if let s = o.state {
                        next.append((s, path))
                    }
                    next.append((o.args, path))
                    for (i, item) in o.listItems.enumerated() { next.append((item, join(String(i)))) }
                case .dict(let entries):
                    for e in entries { next.append((e.value, join(keyText(e.key) ?? "?"))) }
                default:
                    break
                }
            }
            stack.append(contentsOf: next.reversed().map { ($0.0, $0.1, depth + 1) })
        }
        return out
    }
}
