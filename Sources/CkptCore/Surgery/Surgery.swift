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
    /// `--drop-record NAME`: top-level records removed whatever the framework's conventions say.
    public var dropRecords: [String] = []
    /// `--keep-record NAME`: top-level records kept whatever the framework's conventions say.
    public var keepRecords: [String] = []
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

        // 1. The EMA becomes the model (asked for, or because the model is None as Ultralytics saves it). --record
        //    plays no part in this: it names a record of the output (step 3).
        var promoted: (from: String, to: String)?
        let emaName = recs.isEmpty ? nil : emaRecords.first { n in recordNode(n).map { g[$0] != .none } ?? false }
        let model = recordNode("model")
        let modelIsNone = model.map { g[$0] == .none } ?? false
        if let emaName, let ema = recordNode(emaName), options.useEMA || modelIsNone {
            let target = model != nil ? "model" : (recordNode("state_dict") != nil ? "state_dict" : "model")
            if let old = recordNode(target) {
                report.recordChanges.append((target, describe(old), "\(emaName) (\(describe(ema)))"))
                setRecord(target, ema)
                promoted = (emaName, target)
                if modelIsNone && !options.useEMA {
                    report.warnings.append("model is None: the weights in \(emaName) became the model")
                }
            } else {
                report.warnings.append("--use-ema: \(emaName) is kept as it is: there is no model or state_dict record to put it in")
            }
        } else if options.useEMA {
            report.warnings.append("--use-ema: no EMA in this checkpoint; the model is kept")
        }

        // 2. Training state out.
        var cleared = Set<String>()
        if !options.keepTrainingState && !recs.isEmpty {
            for name in trainingStateRecords {
                guard let node = recordNode(name), g[node] != .none else { continue }
                report.recordChanges.append((name, describe(node), "None"))
                setRecord(name, g.add(.none))
                cleared.insert(name)
            }
            if let e = recordNode("epoch"), case .int(let v) = g[e], v != -1 {
                report.recordChanges.append(("epoch", String(v), "-1"))
                setRecord("epoch", g.add(.int(-1)))
            }
        }

        // 3. The weights record, as it is after steps 1 and 2: --record, else the first of `model`, `ema`,
        //    `state_dict`, ... (``Checkpoint/weightsRecordNames``) that is not None, else the whole file.
        //    --drop, --state-dict and --rename change it; the summary counts its parameters.
        func valueAt(_ name: String) -> NodeID? { recordNode(name) ?? (try? g.nodeAtPath(name)) }
        let weightsName: String?
        if let w = options.record {
            guard let n = valueAt(w) else { throw .noSuchRecord(w, available: recs.map(\.name)) }
            if g[n] == .none {
                var why = "'\(w)' is None"
                if cleared.contains(w) {
                    why = "strip sets '\(w)' to None (training state)"
                    if let p = promoted, p.from == w {
                        why += "; its weights are the \(p.to) now: use --record \(p.to)"
                    } else if emaRecords.contains(w) {
                        why += "; --use-ema makes it the model"
                    }
                }
                throw .invalidOperation("--record \(w): \(why)")
            }
            guard try g.isWeightsRecord(n) else {
                throw .invalidOperation("--record \(w): '\(w)' is not a weights record (\(weightsDescription(g, n))); "
                    + "--record names the module or state dict that --drop, --rename and --state-dict change")
            }
            weightsName = w
        } else if !recs.isEmpty {
            weightsName = Self.weightsRecordNames.first { n in recordNode(n).map { g[$0] != .none } ?? false }
        } else {
            weightsName = nil
        }
        let weightsNode = weightsName.flatMap(valueAt) ?? g.root
        report.weightsRecord = weightsName
        let before = try g.stateDictLocations(weightsNode)
        if !options.drop.isEmpty {
            for pattern in options.drop where !before.contains(where: { keyMatches(pattern, $0.0.name) }) {
                report.warnings.append("--drop \(pattern) matches no key")
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
        }
        var current = weightsNode
        if options.stateDict {
            // Module objects become state dicts; a dict keeps its structure: a state dict inside it stays one, its
            // other entries (`model_args`, `hyper_parameters`) stay as they are, modules inside it are converted.
            var changes: [(record: String, before: String, after: String)] = []
            current = try g.stateDictForm(weightsNode, name: weightsName, depth: 0, changes: &changes)
            report.recordChanges += changes
            if current != weightsNode {
                if let w = weightsName {
                    if recordEntryIndex(w) != nil { setRecord(w, current) } else { try g.replaceValue(atPath: w, with: current) }
                } else {
                    g.root = current
                }
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
                    let inner = [weightsName, old.split(separator: ".").first.map(String.init)].compactMap { $0 }
                    throw .invalidOperation("cannot rename \(old): it is inside a nested dict; name that dict with "
                        + "--record \(inner.joined(separator: "."))")
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

        let finalWeights = weightsName.flatMap(valueAt) ?? g.root
        let view = try g.stateDict(finalWeights)
        // 7. Never "0 parameters" from a file that holds tensors, unless --drop --force asked for it.
        if view.isEmpty && !(options.force && !options.drop.isEmpty) {
            let held = graph.tensorNodes(from: graph.root).count
            if held > 0 {
                try requireView([], of: finalWeights, record: weightsName, in: g, doing: "strip counts as the weights")
                throw .invalidOperation("strip would leave no weights: \(weightsName.map { "'\($0)'" } ?? "the file") "
                    + "would hold no tensors, while the input holds \(held) (in records strip sets to None); nothing written")
            }
        }
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

/// What a value that is not a weights record is, for `--record`'s refusal: `an optimizer state`, `a dict of 3
/// entries without tensors`, `a string`.
func weightsDescription(_ g: PickleGraph, _ id: NodeID) -> String {
    if g.lookup(id, "state") != nil && g.lookup(id, "param_groups") != nil { return "an optimizer state" }
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
    if g.lookup(id, "state") != nil && g.lookup(id, "param_groups") != nil { return "optimizer state" }
    if let entries = g.dictEntries(id) { return "dict of \(entries.count)" }
    switch g[id] {
    case .float(let d): return "\(d)"
    case .string(let s): return s
    default: return "present"
    }
}

extension PickleGraph {
    /// Whether a value can be the weights record of `strip`: a module object, or a dict that is not an optimizer
    /// state and whose state_dict view holds a tensor (a state dict, or a dict holding one or a module).
    func isWeightsRecord(_ id: NodeID) throws(CheckpointError) -> Bool {
        if moduleFields(id) != nil { return true }
        guard dictEntries(id) != nil, !(lookup(id, "state") != nil && lookup(id, "param_groups") != nil) else { return false }
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
        guard let entries = dictEntries(id), !(lookup(id, "state") != nil && lookup(id, "param_groups") != nil) else {
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
