/// Options of `ckpt strip`: which training state goes and what else changes.
public struct StripOptions: Sendable {
    /// The EMA becomes the model where there is one.
    public var useEMA = false
    /// Floating tensors become float16.
    public var half = false
    /// The model record becomes an ordered name -> tensor dict that loads with `weights_only=True`.
    public var stateDict = false
    /// Globs or prefixes of keys to remove.
    public var drop: [String] = []
    /// Prefix renames, applied in order.
    public var rename: [(old: String, new: String)] = []
    /// Regex renames (`PATTERN=REPLACEMENT`, `$1` or `\1` for groups), applied after prefix renames.
    public var renameRegex: [(pattern: String, replacement: String)] = []
    /// The record whose keys --drop and --rename apply to (default: the model record).
    public var record: String?
    /// Allow dropping every tensor.
    public var force = false
    /// Keep the training state (only convert, drop or rename).
    public var keepTrainingState = false
    public init() {}
}

/// What a surgery changed, for the summary line, `--dry-run` and `--json`.
public struct SurgeryReport: Sendable {
    /// `record: before -> after` for each top-level record changed.
    public var recordChanges: [(record: String, before: String, after: String)] = []
    public var dropped: [String] = []
    public var renamed: [(old: String, new: String)] = []
    /// Storages converted to float16 and how many tensors use them.
    public var convertedStorages = 0
    public var convertedTensors = 0
    public var warnings: [String] = []
    /// The record the weights are in, and their parameter count and dtype.
    public var weightsRecord: String?
    public var parameters: Int64 = 0
    public var weightsDType: DType?
}

/// A pure rewrite of a checkpoint's graph: what to write, and how each storage's bytes are made.
public struct SurgeryPlan {
    public var graph: PickleGraph
    /// For each output storage key (renumbered in order of first use), the source key and the
    /// dtype conversion to apply while copying.
    public var storages: [OutputStorage]
    public var report: SurgeryReport
}

/// One storage of the output: where its bytes come from and how they change.
public struct OutputStorage: Sendable, Equatable {
    /// Which of the writer's sources holds the bytes (0 for single-source surgery).
    public var source: Int = 0
    public var key: String
    public var sourceKey: String
    public var sourceDType: DType
    public var dtype: DType
    public var numel: Int64
    public var byteCount: Int64 { numel * Int64(dtype.itemSize) }
    /// When set, the output holds only these elements of the source storage (in `sourceDType` units), compacted
    /// in row-major order: a slice of a larger storage or a non-contiguous view. When nil, the whole record.
    public var view: StorageView? = nil
    /// Bytes read from the source (the viewed elements for a view; differs from ``byteCount`` when the dtype changes).
    public var sourceByteCount: Int64 { numel * Int64(sourceDType.itemSize) }
}

extension SurgeryPlan {
    /// Bytes the writer reads from the sources: the total a progress report counts up to.
    public var sourceBytes: Int64 { storages.reduce(0) { $0 + $1.sourceByteCount } }
}

/// Training-state records set to None by `strip`.
let trainingStateRecords = ["optimizer", "ema", "updates", "scaler", "optimizer_state_dict", "scheduler",
                            "lr_scheduler", "amp", "message_hub"]
/// Records that hold an EMA of the model.
let emaRecords = ["ema", "state_dict_ema", "model_ema", "ema_state_dict"]

extension Checkpoint {
    /// Throws for a TorchScript archive: a rewrite writes data.pkl and its storages only, and the module's code,
    /// constants and bytecode would not match what is left (torch.jit.load would fail or run other weights),
    /// so every rewriting command refuses it; `convert` writes its state dict instead.
    func refuseTorchScriptRewrite(_ command: String) throws(CheckpointError) {
        guard torchScript != nil else { return }
        throw .invalidOperation("a TorchScript archive: \(command) would change its code's contract "
            + "(its code/, constants and bytecode records are not rewritten); use `ckpt convert` for its weights")
    }

    /// Plans `strip`: a new graph with the training state gone and the options applied, checked,
    /// with its storages renumbered. Does no I/O beyond what was already read.
    public func planStrip(_ options: StripOptions) throws(CheckpointError) -> SurgeryPlan {
        try refuseTorchScriptRewrite("strip")
        var g = graph
        var report = SurgeryReport()
        let recs = records
        func recordEntryIndex(_ name: String) -> Int? {
            g.dictEntries(g.root)?.firstIndex { g.keyText($0.key) == name }
        }
        func setRecord(_ name: String, _ value: NodeID) {
            guard let i = recordEntryIndex(name) else { return }
            g.setDictEntryValue(g.root, index: i, value: value)
        }
        func recordNode(_ name: String) -> NodeID? {
            g.dictEntries(g.root)?.first { g.keyText($0.key) == name }?.value
        }
        func describe(_ id: NodeID) -> String {
            switch g[id] {
            case .none: return "None"
            case .int(let v): return String(v)
            default: return kindDescription(g, id)
            }
        }

        // 1. The EMA becomes the model (asked for, or because the model is None as Ultralytics saves it).
        var weightsName = options.record
        if !recs.isEmpty && options.record == nil {
            let model = recordNode("model")
            let emaName = emaRecords.first { n in recordNode(n).map { g[$0] != .none } ?? false }
            let modelIsNone = model.map { g[$0] == .none } ?? false
            if let emaName, let ema = recordNode(emaName), options.useEMA || modelIsNone {
                let target = model != nil ? "model" : (recordNode("state_dict") != nil ? "state_dict" : "model")
                if recordNode(target) != nil {
                    report.recordChanges.append((target, describe(recordNode(target)!), "\(emaName) (\(describe(ema)))"))
                    setRecord(target, ema)
                    if modelIsNone && !options.useEMA {
                        report.warnings.append("model is None: the weights in \(emaName) became the model")
                    }
                }
            } else if options.useEMA {
                report.warnings.append("--use-ema: no EMA in this checkpoint; the model is kept")
            }
            if let m = recordNode("model"), g[m] != .none { weightsName = "model" } else if recordNode("state_dict") != nil {
                weightsName = "state_dict"
            }
        }

        // 2. Training state out.
        if !options.keepTrainingState && !recs.isEmpty {
            for name in trainingStateRecords {
                guard let node = recordNode(name), g[node] != .none else { continue }
                report.recordChanges.append((name, describe(node), "None"))
                setRecord(name, g.add(.none))
            }
            if let e = recordNode("epoch"), case .int(let v) = g[e], v != -1 {
                report.recordChanges.append(("epoch", String(v), "-1"))
                setRecord("epoch", g.add(.int(-1)))
            }
        }

        // 3. The weights record: drop, state-dict form, rename.
        let weightsNode: NodeID
        if let w = weightsName {
            guard let n = recordNode(w) ?? (try? g.nodeAtPath(w)) else {
                throw .noSuchRecord(w, available: recs.map(\.name))
            }
            weightsNode = n
        } else {
            weightsNode = g.root
        }
        report.weightsRecord = weightsName
        let before = try g.stateDictLocations(weightsNode)
        if !options.drop.isEmpty {
            var keep: [String] = []
            for pattern in options.drop {
                let hits = before.filter { keyMatches(pattern, $0.0.name) }
                if hits.isEmpty { report.warnings.append("--drop \(pattern) matches no key") }
            }
            let doomed = before.filter { t in options.drop.contains { keyMatches($0, t.0.name) } }
            if doomed.count == before.count && !before.isEmpty && !options.force {
                throw .invalidOperation("--drop would remove all \(before.count) tensors; add --force to allow it")
            }
            for (t, loc) in doomed {
                guard let loc else {
                    throw .invalidOperation("cannot drop \(t.name): it is not held by a dict entry")
                }
                g.removeDictEntry(loc.container, key: loc.key)
                report.dropped.append(t.name)
            }
            keep = []
            _ = keep
        }
        var current = weightsNode
        // A dict root without a weights record is already in dict form; only modules become state dicts there.
        if options.stateDict && (weightsName != nil || g.moduleState(weightsNode) != nil) {
            let entries = try g.stateDict(current)
            var od = PickleObject(construction: .reduce, callable: g.add(.global(module: "collections", name: "OrderedDict")),
                                  args: g.add(.tuple([])))
            od.dictItems = entries.map { DictEntry(key: g.add(.string($0.name)), value: $0.tensor.tensorNode) }
            current = g.add(.object(od))
            if let w = weightsName {
                report.recordChanges.append((w, describe(weightsNode), "state dict (\(entries.count) tensors)"))
                setRecord(w, current)
            } else {
                g.root = current
            }
        }
        if !options.rename.isEmpty || !options.renameRegex.isEmpty {
            guard g.moduleState(current) == nil else {
                throw .invalidOperation("renaming keys of a module object changes the model's structure; add --state-dict")
            }
            let located = try g.stateDictLocations(current)
            var hitCount = [Int](repeating: 0, count: options.rename.count + options.renameRegex.count)
            var newNames: [String: String] = [:]
            var changes: [(EntryLocation, String, String)] = []
            let regexes = try options.renameRegex.map { (p, r) throws(CheckpointError) -> (Regex<AnyRegexOutput>, String) in
                do { return (try Regex(p), r) } catch { throw .invalidOperation("--rename-regex '\(p)': \(error)") }
            }
            for (t, loc) in located {
                var name = t.name
                for (i, r) in options.rename.enumerated() where name.hasPrefix(r.old) {
                    name = r.new + name.dropFirst(r.old.count)
                    hitCount[i] += 1
                }
                for (i, (re, rep)) in regexes.enumerated() {
                    if let m = name.firstMatch(of: re) {
                        name.replaceSubrange(m.range, with: expandReplacement(rep, m))
                        hitCount[options.rename.count + i] += 1
                    }
                }
                if let other = newNames[name] {
                    throw .invalidOperation("rename makes \(other) and \(t.name) both \(name)")
                }
                newNames[name] = t.name
                if name != t.name {
                    guard let loc else { throw .invalidOperation("cannot rename \(t.name): it is not a dict entry") }
                    guard !name.contains(".") || g.dictEntries(current) != nil else {
                        throw .invalidOperation("cannot rename \(t.name)")
                    }
                    changes.append((loc, t.name, name))
                }
            }
            for (i, r) in options.rename.enumerated() where hitCount[i] == 0 {
                report.warnings.append("--rename \(r.old)=\(r.new) matches no key")
            }
            for (i, r) in options.renameRegex.enumerated() where hitCount[options.rename.count + i] == 0 {
                report.warnings.append("--rename-regex \(r.pattern)=\(r.replacement) matches no key")
            }
            for (loc, old, new) in changes {
                // Nested dicts: the path is relative to the record; only flat state dicts are renamed
                // by key, so the new key is the full new name.
                guard loc.container == current else {
                    throw .invalidOperation("cannot rename \(old): it is inside a nested dict")
                }
                g.replaceDictKey(loc.container, key: loc.key, with: g.add(.string(new)))
                report.renamed.append((old, new))
            }
        }

        // 4. float16.
        var conversions: [String: DType] = [:]
        if options.half {
            for r in (recs.isEmpty ? [(name: "", node: g.root)] : g.recordsOf(g.root)) {
                // float32, float64 and bfloat16 become float16; float8 kinds are already smaller and stay.
                for t in try g.stateDict(r.node) where [.float32, .float64, .bfloat16].contains(t.tensor.dtype) {
                    guard t.tensor.storage.dtype != nil else {
                        let name = [r.name, t.name].filter { !$0.isEmpty }.joined(separator: ".")
                        throw .invalidOperation("--half: \(name) is \(t.tensor.dtype.rawValue) in an untyped storage; not supported")
                    }
                    conversions[t.tensor.storage.key] = .float16
                }
            }
        }

        // 5. weights_only: numpy values become plain numbers.
        if options.stateDict {
            g.replaceNumpyValues()
        }

        // 6. Check every tensor against its source storage, then renumber storages in order of first
        //    use and apply conversions.
        try checkAll(g, againstRecords: true)
        let (renumbered, storages, converted) = try renumberStorages(g, conversions: conversions)
        g = renumbered
        report.convertedStorages = conversions.count
        report.convertedTensors = converted

        let finalWeights = weightsName.flatMap { n in g.dictEntries(g.root)?.first { g.keyText($0.key) == n }?.value } ?? g.root
        let view = try g.stateDict(finalWeights)
        let params = view.filter(\.tensor.isParameter)
        report.parameters = (params.isEmpty ? view : params).reduce(0) { $0 + ($1.tensor.numel ?? 0) }
        var counts: [DType: Int64] = [:]
        for t in view where t.tensor.dtype.isFloatingPoint { counts[t.tensor.dtype, default: 0] += t.tensor.numel ?? 0 }
        report.weightsDType = counts.max { $0.value < $1.value }?.key
        return SurgeryPlan(graph: g, storages: storages, report: report)
    }

    /// Checks every tensor the graph holds against its storage and, with `againstRecords`, the
    /// storage's record in this checkpoint (for graphs whose storage keys are this checkpoint's).
    public func checkAll(_ g: PickleGraph, againstRecords: Bool = false) throws(CheckpointError) {
        for t in try g.allTensors(from: g.root) {
            let record = againstRecords ? storageRecordBytes(t.tensor.storage.key) : nil
            if againstRecords && record == nil {
                throw .tensor(TensorCheckError(tensor: t.name, reason: "its storage record data/\(t.tensor.storage.key) is missing"))
            }
            do { try t.tensor.check(name: t.name, recordBytes: record) } catch { throw .tensor(error) }
        }
    }

    /// Gives storages keys "0", "1", ... in order of first use in the pickle (as torch.save does),
    /// applying dtype conversions, and checks each source record's size.
    ///
    /// `planned` holds storages a surgery made up (``planTransfer``): a persistent id whose key is in it becomes
    /// that output storage, renumbered like the others, instead of a record of this checkpoint.
    func renumberStorages(_ graph: PickleGraph, conversions: [String: DType],
                          planned: [String: OutputStorage] = [:]) throws(CheckpointError)
        -> (PickleGraph, [OutputStorage], Int)
    {
        var g = graph
        var newKey: [String: String] = [:]
        var storages: [OutputStorage] = []
        var converted = 0
        var rewritten: [NodeID: NodeID] = [:]  // pid tuple -> new tuple
        for id in g.reachable(from: g.root) {
            guard case .persistent(let pid) = g[id] else { continue }
            guard let s = g.storageRef(id) else {
                throw .notACheckpoint("persistent id \(id) is not a torch storage")
            }
            if var p = planned[s.key] {
                let key = newKey[s.key] ?? String(storages.count)
                if newKey[s.key] == nil {
                    newKey[s.key] = key
                    p.key = key
                    storages.append(p)
                    if p.sourceDType != p.dtype { converted += 1 }
                }
                if let done = rewritten[pid] { g[id] = .persistent(pid: done); continue }
                var items = Array(g.sequence(pid)!.prefix(5))
                items[2] = g.add(.string(key))
                let t = g.add(.tuple(items))
                rewritten[pid] = t
                g[id] = .persistent(pid: t)
                continue
            }
            let sourceType = s.dtype ?? .uint8
            let target = conversions[s.key] ?? sourceType
            if target != sourceType { converted += 1 }
            let key: String
            if let k = newKey[s.key] { key = k } else {
                key = String(storages.count)
                newKey[s.key] = key
                guard let recordBytes = storageRecordBytes(s.key) else {
                    throw .missingRecord("\(root)/data/\(s.key)")
                }
                guard let declared = s.byteCount, declared == recordBytes else {
                    throw .tensor(TensorCheckError(tensor: "storage \(s.key)",
                        reason: "declares \(s.numel) x \(sourceType.itemSize) bytes but its record holds \(recordBytes)"))
                }
                storages.append(OutputStorage(source: 0, key: key, sourceKey: s.key, sourceDType: sourceType, dtype: target,
                                              numel: s.numel))
            }
            if let done = rewritten[pid] { g[id] = .persistent(pid: done); continue }
            var items = Array(g.sequence(pid)!.prefix(5))  // legacy ids carry a sixth field; zip ids have five
            items[2] = g.add(.string(key))
            if target != sourceType, let cls = target.storageClass {
                items[1] = g.add(.global(module: "torch", name: cls))
            }
            let t = g.add(.tuple(items))
            rewritten[pid] = t
            g[id] = .persistent(pid: t)
        }
        return (g, storages, converted)
    }
}

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

func kindDescription(_ g: PickleGraph, _ id: NodeID) -> String {
    if let c = g.className(id), g.moduleState(id) != nil { return c.split(separator: ".").last.map(String.init) ?? c }
    if g.lookup(id, "state") != nil && g.lookup(id, "param_groups") != nil { return "optimizer state" }
    if let entries = g.dictEntries(id) { return "dict of \(entries.count)" }
    switch g[id] {
    case .float(let d): return "\(d)"
    case .string(let s): return s
    default: return "present"
    }
}

extension PickleGraph {
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

    /// Replaces numpy scalars and arrays reachable from the root by Python floats (one element) or
    /// lists of floats, so the pickle needs no numpy globals.
    mutating func replaceNumpyValues() {
        for id in reachable(from: root) {
            guard let (_, values) = numpyValue(id) else { continue }
            if values.count == 1 {
                self[id] = .float(values[0])
            } else {
                let items = values.map { add(.float($0)) }
                self[id] = .list(items)
            }
        }
    }
}
