/// A key matches a --drop pattern: glob when it has glob characters, else prefix or exact name.
func keyMatches(_ pattern: String, _ name: String) -> Bool {
    if pattern.contains(where: { "*?[".contains($0) }) { return globMatches(pattern, name) }
    return name == pattern || name.hasPrefix(pattern.hasSuffix(".") ? pattern : pattern + ".")
}

/// `$1`, `\1` and `${name}` in a replacement become the match's groups.
func expandReplacement(_ template: String, _ m: Regex<AnyRegexOutput>.Match) -> String {
    var out = ""
    var chars = Array(template)
    var i = 0
    while i < chars.count {
        let c = chars[i]
        if (c == "$" || c == "\\"), i + 1 < chars.count, let d = chars[i + 1].wholeNumberValue {
            var n = d
            var j = i + 2
            while j < chars.count, let more = chars[j].wholeNumberValue, n * 10 + more < m.output.count {
                n = n * 10 + more; j += 1
            }
            if n < m.output.count, let sub = m.output[n].substring { out += sub }
            i = j
        } else {
            out.append(c)
            i += 1
        }
    }
    chars.removeAll()
    return out
}

/// What a value that is not a weights record is, for `--record`'s refusal: `an optimizer state`, `a dict of 3
/// entries without tensors`, `a string`.
func weightsDescription(_ g: PickleGraph, _ id: NodeID) -> String {
    if g.isOptimizerState(id) { return "an optimizer state" }
    if let entries = g.dictEntries(id) { return "a dict of \(entries.count) entries, no module and no state dict" }
    if let c = g.className(id) { return "a \(c) object, not a module" }
    switch g[id] {
    case .list(let items): return "a list of \(items.count)"
    case .tuple(let items): return "a tuple of \(items.count)"
    case .string: return "a string"
    case .int, .bigInt, .float, .bool: return "a number"
    default: return ((try? g.tensor(id)) ?? nil) != nil ? "a tensor" : "not a module or a dict"
    }
}

func kindDescription(_ g: PickleGraph, _ id: NodeID) -> String {
    if let c = g.className(id), g.moduleState(id) != nil { return c.split(separator: ".").last.map(String.init) ?? c }
    if g.isOptimizerState(id) { return "optimizer state" }
    if let entries = g.dictEntries(id) { return "dict of \(entries.count)" }
    switch g[id] {
    case .float(let d): return "\(d)"
    case .string(let s): return s
    case .list(let items): return "list of \(items.count)"
    default: return "present"
    }
}

extension PickleGraph {
    /// Whether a value can be the weights record of `strip`: a module object, or a dict that is not an optimizer
    /// state and whose state_dict view holds a tensor (a state dict, or a dict holding one or a module).
    func isWeightsRecord(_ id: NodeID) throws(CheckpointError) -> Bool {
        if moduleFields(id) != nil { return true }
        guard dictEntries(id) != nil, !isOptimizerState(id) else { return false }
        return !(try stateDictTensors(id)).isEmpty
    }

    /// The `--state-dict` form of a weights value. A module object becomes an `OrderedDict` of its state_dict
    /// view (tensors outside the view are left out, and the change says how many; a module whose view is empty
    /// while it holds tensors is refused). A dict keeps its structure: a state dict stays as it is (with its
    /// `_metadata`), modules among its values (at any depth of dicts, lists and tuples) are converted in place, every
    /// other entry (`model_args`, `hyper_parameters`, numbers, strings) stays. Anything else is returned as it is. Each
    /// conversion is added to `changes` under its dotted path. Returns the node that replaces `id` (itself when
    /// only its entries changed, or nothing did).
    mutating func stateDictForm(_ id: NodeID, name: String?, depth: Int,
                                changes: inout [(record: String, before: String, after: String)],
                                limits: PickleLimits = PickleLimits()) throws(CheckpointError) -> NodeID
    {
        guard depth <= limits.maxNesting else { throw .tooDeep(limits.maxNesting) }
        if moduleFields(id) != nil {
            let entries = try stateDict(id)
            let c = coverage(of: id, record: name, shown: entries.map(\.tensor))
            let what = "\(name.map { "'\($0)'" } ?? "the file") (\(className(id) ?? "module"))"
            if entries.isEmpty && c.built > 0 {
                throw .invalidOperation("--state-dict: \(what) holds \(c.built) tensors but none is in its state_dict view; "
                    + "see ckpt keys --all")
            }
            var od = PickleObject(construction: .reduce, callable: add(.global(module: "collections", name: "OrderedDict")),
                                  args: add(.tuple([])))
            od.dictItems = entries.map { DictEntry(key: add(.string($0.name)), value: $0.tensor.tensorNode) }
            var after = "state dict (\(entries.count) tensors"
            if !c.isComplete { after += "; \(c.missing.count) tensors outside its state_dict view left out" }
            changes.append((name ?? "(top level)", kindDescription(self, id), after + ")"))
            return add(.object(od))
        }
        if let items = sequence(id) {
            // A list or tuple (`torch.save((model, extra))`): its modules and dicts, by index.
            var changed = items
            for (i, v) in items.enumerated() where moduleFields(v) != nil || dictEntries(v) != nil || sequence(v) != nil {
                changed[i] = try stateDictForm(v, name: name.map { "\($0).\(i)" } ?? String(i), depth: depth + 1,
                                               changes: &changes, limits: limits)
            }
            if changed != items {
                if case .list = self[id] { self[id] = .list(changed) } else { self[id] = .tuple(changed) }
            }
            return id
        }
        guard let entries = dictEntries(id), !isOptimizerState(id) else {
            return id
        }
        for (i, e) in entries.enumerated() {
            let v = e.value
            guard moduleFields(v) != nil || dictEntries(v) != nil || sequence(v) != nil, let k = keyText(e.key) else { continue }
            let n = try stateDictForm(v, name: name.map { "\($0).\(k)" } ?? k, depth: depth + 1, changes: &changes,
                                      limits: limits)
            if n != v { setDictEntryValue(id, index: i, value: n) }
        }
        // Python 2's `dict([(k, v), ...])` (a call of `__builtin__.dict`, which weights_only=True refuses) is the
        // same value as a plain dict: written as one.
        if case .object(let o) = self[id], o.state == nil, o.listItems.isEmpty,
           let callable = globalName(o.callable), callable == "builtins.dict" || callable == "__builtin__.dict",
           let entries = dictEntries(id)
        {
            return add(.dict(entries))
        }
        return id
    }

    /// Sets the value at a dotted path of dict keys (see ``nodeAtPath(_:)``) in its parent dict.
    mutating func replaceValue(atPath path: String, with value: NodeID) throws(CheckpointError) {
        var parts = path.split(separator: ".").map(String.init)
        guard let last = parts.popLast() else { root = value; return }
        var node = root
        for part in parts {
            guard let next = lookup(node, part) else { throw .noSuchRecord(path, available: []) }
            node = next
        }
        guard let i = dictEntries(node)?.firstIndex(where: { keyText($0.key) == last }) else {
            throw .noSuchRecord(path, available: [])
        }
        setDictEntryValue(node, index: i, value: value)
    }

    /// Top-level records of a dict root.
    func recordsOf(_ root: NodeID) -> [(name: String, node: NodeID)] {
        (dictEntries(root) ?? []).compactMap { e in keyText(e.key).map { ($0, e.value) } }
    }

    /// Follows a dotted path of dict keys.
    func nodeAtPath(_ path: String) throws -> NodeID {
        var node = root
        for part in path.split(separator: ".") {
            guard let next = lookup(node, String(part)) else { throw CheckpointError.noSuchRecord(path, available: []) }
            node = next
        }
        return node
    }

    /// Sets the value of the entry at `index` of a dict-like node.
    mutating func setDictEntryValue(_ id: NodeID, index: Int, value: NodeID) {
        settleDictItems(id)
        switch self[id] {
        case .dict(var entries):
            entries[index].value = value
            self[id] = .dict(entries)
        case .object(var o):
            o.dictItems[index].value = value
            self[id] = .object(o)
        default: break
        }
    }

    /// Removes the entry with key node `key` from a dict-like node.
    mutating func removeDictEntry(_ id: NodeID, key: NodeID) {
        settleDictItems(id)
        switch self[id] {
        case .dict(var entries):
            entries.removeAll { $0.key == key }
            self[id] = .dict(entries)
        case .object(var o):
            o.dictItems.removeAll { $0.key == key }
            self[id] = .object(o)
        default: break
        }
    }

    /// Replaces the key node of an entry of a dict-like node.
    mutating func replaceDictKey(_ id: NodeID, key: NodeID, with newKey: NodeID) {
        settleDictItems(id)
        switch self[id] {
        case .dict(var entries):
            if let i = entries.firstIndex(where: { $0.key == key }) { entries[i].key = newKey }
            self[id] = .dict(entries)
        case .object(var o):
            if let i = o.dictItems.firstIndex(where: { $0.key == key }) { o.dictItems[i].key = newKey }
            self[id] = .object(o)
        default: break
        }
    }
}
