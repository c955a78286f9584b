/// What a surgery carries from step to step: the graph being rewritten, the report of what changed, and the facts
/// later steps need (which record holds the weights now, what was cleared or promoted, which storages change dtype).
struct SurgeryState {
    var graph: PickleGraph
    var report = SurgeryReport()
    /// Storage key -> dtype it becomes (`--half`).
    var conversions: [String: DType] = [:]
    /// Storages the steps made (a numpy array's bytes), by the placeholder key their tensors name.
    var madeStorages: [String: OutputStorage] = [:]
    /// The weights record as a dotted path (nil: the whole file), once ``SelectWeights`` has run.
    var weightsName: String?
    /// Records set to None or removed as training state.
    var cleared: Set<String> = []
    /// The EMA record that became the weights, and the record it became.
    var promoted: (from: String, to: String)?

    init(graph: PickleGraph) { self.graph = graph }

    // Top-level records of a dict root, by name.
    func recordNode(_ name: String) -> NodeID? {
        graph.dictEntries(graph.root)?.first { graph.keyText($0.key) == name }?.value
    }

    func hasRecord(_ name: String) -> Bool { recordNode(name) != nil }

    mutating func setRecord(_ name: String, _ value: NodeID) {
        guard let i = graph.dictEntries(graph.root)?.firstIndex(where: { graph.keyText($0.key) == name }) else { return }
        graph.setDictEntryValue(graph.root, index: i, value: value)
    }

    mutating func removeRecord(_ name: String) {
        guard let e = graph.dictEntries(graph.root)?.first(where: { graph.keyText($0.key) == name }) else { return }
        graph.removeDictEntry(graph.root, key: e.key)
    }

    /// A top-level record, else a dotted path into nested dicts.
    func valueAt(_ name: String) -> NodeID? { recordNode(name) ?? (try? graph.nodeAtPath(name)) }

    /// The weights node as it is now: the weights record, else the whole file.
    var weightsNode: NodeID { weightsName.flatMap(valueAt) ?? graph.root }

    /// Puts `value` where the weights record is (a record, a nested entry, or the whole file).
    mutating func replaceWeights(with value: NodeID) throws(CheckpointError) {
        guard let w = weightsName else { graph.root = value; return }
        if recordNode(w) != nil { setRecord(w, value) } else { try graph.replaceValue(atPath: w, with: value) }
    }

    /// `None`, a number, or what kind of value a record is, for `record: before -> after`.
    func describe(_ id: NodeID) -> String {
        switch graph[id] {
        case .none: return "None"
        case .int(let v): return String(v)
        default: return kindDescription(graph, id)
        }
    }
}

/// One pure rewrite step of a surgery: a state in, a state out. Steps read the catalogue of the input's storages
/// (their record sizes, and the elements of a small tensor) and do no other I/O. ``Checkpoint/planStrip(_:)`` composes
/// them; ``CheckStage`` checks the result.
protocol SurgeryStep {
    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState
}

/// The storages a surgery may use: each storage key's record size in the input, and the elements of a tensor, as the
/// bytes `tensor.contiguous()` holds (checked against its storage first; ``DescribeModel`` reads small tensor
/// attributes such as YOLOv5's `stride` this way, to carry them as numbers).
struct StorageCatalogue {
    let recordBytes: (String) -> Int64?
    /// A tensor's elements in row-major order; the name is for a failure's message.
    var elements: (TensorRef, String) throws(CheckpointError) -> [UInt8] = { _, name throws(CheckpointError) in
        throw .invalidOperation("\(name): no tensor data to read here")
    }
}

// MARK: - The EMA becomes the weights

/// `--use-ema` (or a None model with an EMA beside it, as Ultralytics saves): the framework's EMA takes the weights'
/// place under the model's own names.
struct PromoteEMA: SurgeryStep {
    var ema: EMAConvention?
    var weightsRecords: [String]
    var asked: Bool
    /// The file is a dict of records (not a state dict, whose entries are tensors).
    var hasRecords: Bool

    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        let isDict = hasRecords
        switch ema {
        case nil:
            if asked { s.report.warnings.append("--use-ema: this framework keeps no EMA; the model is kept") }
        case .inWeights(let marker, let note):
            if asked && !s.hasRecord(marker) && hasRecords {
                // No averaging of the framework's own: an EMA record by a common name (a user's on_save_checkpoint).
                var generic = self
                generic.ema = FrameworkConvention.generic.ema
                return try generic.apply(s, catalogue)
            }
            if asked {
                s.report.warnings.append("--use-ema: \(note)")
            } else if hasRecords && s.hasRecord(marker) {
                s.report.warnings.append("note: the weights written are the averaged ones: \(note)")
            }
        case .record(let names, let prefix, let dropKeys):
            guard isDict else {
                if asked { s.report.warnings.append("--use-ema: no EMA in this checkpoint; the model is kept") }
                return s
            }
            // A dotted name is an entry of a record (fairseq's `extra_state.ema`).
            let emaName = names.first { n in s.valueAt(n).map { s.graph[$0] != .none } ?? false }
            let targetName = weightsRecords.first { !names.contains($0) && s.hasRecord($0) }
                ?? weightsRecords.first { !names.contains($0) }
            let model = targetName.flatMap(s.recordNode)
            let modelIsNone = model.map { s.graph[$0] == .none } ?? false
            guard let emaName, let emaNode = s.valueAt(emaName), asked || modelIsNone else {
                if asked { s.report.warnings.append("--use-ema: no EMA in this checkpoint; the model is kept") }
                return s
            }
            guard let target = targetName, let old = model else {
                s.report.warnings.append("--use-ema: \(emaName) is kept as it is: there is no "
                    + weightsRecords.filter { !names.contains($0) }.joined(separator: " or ") + " record to put it in")
                return s
            }
            let unwrapped = try s.graph.unwrapEMA(emaNode, prefix: prefix, dropKeys: dropKeys)
            var what = "\(emaName) (\(s.describe(emaNode)))"
            if unwrapped != emaNode {
                what += ", without its " + ([prefix.map { "'\($0)' prefix" }] + dropKeys.map { "'\($0)'" })
                    .compactMap { $0 }.joined(separator: " and ")
            }
            s.report.recordChanges.append((target, s.describe(old), what))
            s.setRecord(target, unwrapped)
            s.promoted = (emaName, target)
            if modelIsNone && !asked {
                s.report.warnings.append("\(target) is None: the weights in \(emaName) became the \(target)")
            }
        case .dotless(let emaPrefix, let modelPrefix, let extras):
            let weights = !hasRecords ? nil : weightsRecords.first(where: s.hasRecord)
            guard let w = weights, let node = s.recordNode(w), let entries = s.graph.dictEntries(node),
                  entries.contains(where: { s.graph.keyText($0.key)?.hasPrefix(emaPrefix) ?? false })
            else {
                if asked { s.report.warnings.append("--use-ema: no \(emaPrefix)* keys in this checkpoint; the model is kept") }
                return s
            }
            var emaByName: [String: NodeID] = [:]
            for e in entries {
                if let k = s.graph.keyText(e.key), k.hasPrefix(emaPrefix) { emaByName[String(k.dropFirst(emaPrefix.count))] = e.value }
            }
            var mapped = 0
            if asked {
                for (i, e) in entries.enumerated() {
                    guard let k = s.graph.keyText(e.key), k.hasPrefix(modelPrefix), !k.hasPrefix(emaPrefix) else { continue }
                    let emaKey = String(k.dropFirst(modelPrefix.count)).replacingOccurrences(of: ".", with: "")
                    guard let v = emaByName.removeValue(forKey: emaKey) else { continue }
                    let a = try? s.graph.tensor(v), b = try? s.graph.tensor(e.value)
                    guard let a = a ?? nil, let b = b ?? nil, a.shape == b.shape else {
                        throw .tensor(TensorCheckError(tensor: "\(w).\(emaPrefix)\(emaKey)",
                            reason: "its EMA value does not have the shape of \(w).\(k)"))
                    }
                    s.graph.setDictEntryValue(node, index: i, value: v)
                    mapped += 1
                }
                guard mapped > 0 else {
                    throw .invalidOperation("--use-ema: no \(emaPrefix)* key of '\(w)' names a \(modelPrefix)* weight "
                        + "(LitEma drops the dots of the name); nothing written")
                }
                for x in extras { emaByName.removeValue(forKey: x) }
                if !emaByName.isEmpty {
                    s.report.warnings.append("--use-ema: \(emaByName.count) \(emaPrefix)* keys match no \(modelPrefix)* weight "
                        + "(first: \(emaPrefix)\(emaByName.keys.sorted()[0])); they are dropped with the EMA")
                }
            }
            let doomed = entries.filter { s.graph.keyText($0.key)?.hasPrefix(emaPrefix) ?? false }
            for e in doomed { s.graph.removeDictEntry(node, key: e.key) }
            s.report.recordChanges.append(("\(w).\(emaPrefix)*", "\(doomed.count) keys",
                asked ? "\(mapped) weights of \(w) took their EMA values; the keys removed" : "removed"))
            if asked { s.promoted = ("\(w).\(emaPrefix)*", w) }
        }
        return s
    }
}

extension PickleGraph {
    /// The EMA with the model's own names: an `AveragedModel`-style wrapper's `prefix` removed from a state dict's keys
    /// (entries named in `dropKeys`, such as `n_averaged`, left out), or the wrapped module of a module object.
    mutating func unwrapEMA(_ id: NodeID, prefix: String?, dropKeys: [String]) throws(CheckpointError) -> NodeID {
        guard prefix != nil || !dropKeys.isEmpty else { return id }
        if let fields = moduleFields(id) {
            guard let p = prefix, let mods = fields.modules,
                  let inner = lookup(mods, String(p.dropLast(p.hasSuffix(".") ? 1 : 0))) else { return id }
            return inner
        }
        guard let entries = dictEntries(id) else { return id }
        var kept: [DictEntry] = []
        var seen = Set<String>()
        for e in entries {
            guard let k = keyText(e.key), !dropKeys.contains(k) else { continue }
            var name = k
            if let p = prefix, name.hasPrefix(p) { name = String(name.dropFirst(p.count)) }
            guard seen.insert(name).inserted else {
                throw .invalidOperation("--use-ema: the EMA holds both \(k) and \(name)")
            }
            kept.append(DictEntry(key: name == k ? e.key : add(.string(name)), value: e.value))
        }
        var od = PickleObject(construction: .reduce, callable: add(.global(module: "collections", name: "OrderedDict")),
                              args: add(.tuple([])))
        od.dictItems = kept
        return add(.object(od))
    }
}

// MARK: - Training state out

/// Clears the framework's training state (set to None or removed, as its own script does), resets its counters,
/// removes `--drop-record` records and keeps `--keep-record` ones. Records that look like training state but are in
/// no convention are kept and reported.
struct ClearTrainingState: SurgeryStep {
    var convention: FrameworkConvention
    var dropRecords: [String]
    var keepRecords: [String]
    /// The file is a dict of records (not a state dict, whose entries are tensors).
    var hasRecords: Bool

    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        guard hasRecords, let entries = s.graph.dictEntries(s.graph.root), !entries.isEmpty else {
            for n in dropRecords + keepRecords {
                s.report.warnings.append("--\(dropRecords.contains(n) ? "drop" : "keep")-record \(n): the file has no records")
            }
            return s
        }
        let names = entries.compactMap { s.graph.keyText($0.key) }
        for n in dropRecords + keepRecords where !names.contains(n) {
            s.report.warnings.append("--\(dropRecords.contains(n) ? "drop" : "keep")-record \(n): no such record "
                + "(records: \(names.joined(separator: ", ")))")
        }
        let weightsTarget = s.promoted?.to ?? convention.weightsRecords.first(where: { s.hasRecord($0) })
        var known = Set(convention.trainingState + convention.loaderReads + convention.weightsRecords
            + convention.resets.map(\.record) + (convention.keepOnly ?? []))
        if case .record(let emaNames, _, _) = convention.ema { known.formUnion(emaNames) }
        if case .inWeights(let marker, _) = convention.ema { known.insert(marker) }

        for name in names where !keepRecords.contains(name) {
            guard let node = s.recordNode(name) else { continue }
            let dropped = dropRecords.contains(name)
            var training = convention.trainingState.contains(name)
            if let keep = convention.keepOnly, !keep.contains(name), name != weightsTarget {
                training = true
            }
            if dropped || (training && convention.clearing == .remove) {
                s.report.recordChanges.append((name, s.describe(node), "removed"))
                s.removeRecord(name)
                s.cleared.insert(name)
            } else if training {
                guard s.graph[node] != .none else { continue }
                s.report.recordChanges.append((name, s.describe(node), "None"))
                s.setRecord(name, s.graph.add(.none))
                s.cleared.insert(name)
            } else if !known.contains(name), name != weightsTarget,
                      let why = looksLikeTrainingState(name, node, s.graph) {
                s.report.warnings.append("kept: `\(name)` looks like training state (\(why)); "
                    + "--drop-record \(name) removes it")
            }
        }
        // Training state inside a record the loader reads (fairseq's `extra_state.ema`): that entry alone goes.
        for path in convention.trainingState where path.contains(".") && !keepRecords.contains(path) {
            let parts = path.split(separator: ".").map(String.init)
            guard let parent = try? s.graph.nodeAtPath(parts.dropLast().joined(separator: ".")),
                  let e = s.graph.dictEntries(parent)?.first(where: { s.graph.keyText($0.key) == parts.last }) else { continue }
            if convention.clearing == .remove {
                s.report.recordChanges.append((path, s.describe(e.value), "removed"))
                s.graph.removeDictEntry(parent, key: e.key)
            } else if s.graph[e.value] != .none, let i = s.graph.dictEntries(parent)?.firstIndex(where: { $0.key == e.key }) {
                s.report.recordChanges.append((path, s.describe(e.value), "None"))
                s.graph.setDictEntryValue(parent, index: i, value: s.graph.add(.none))
            }
            s.cleared.insert(path)
        }
        for r in convention.resets where !keepRecords.contains(r.record) {
            if let e = s.recordNode(r.record), case .int(let v) = s.graph[e], v != r.value {
                s.report.recordChanges.append((r.record, String(v), String(r.value)))
                s.setRecord(r.record, s.graph.add(.int(r.value)))
            }
        }
        return s
    }

    /// Why a record no convention names looks like training state: it holds an optimizer's state (at its top or one
    /// level down: a list of them, a trainer's dict), or its name says optimizer, scheduler, scaler, rng, loop,
    /// callback, trainer, EMA or state (a name ending in `state_dict` says state only with one of the others).
    func looksLikeTrainingState(_ name: String, _ node: NodeID, _ g: PickleGraph) -> String? {
        func isOptimizer(_ id: NodeID) -> Bool { g.isOptimizerState(id) }
        if isOptimizer(node) { return "an optimizer state" }
        let children = (g.dictEntries(node)?.map(\.value) ?? []) + (g.sequence(node) ?? [])
        if children.prefix(64).contains(where: isOptimizer) { return "it holds an optimizer state" }
        let n = name.lowercased()
        let words = Set(n.split { !$0.isLetter && !$0.isNumber }.map(String.init))
        for (token, what) in [("optim", "optimizer"), ("schedul", "scheduler"), ("scaler", "grad scaler"),
                              ("rng", "random state"), ("random_state", "random state"), ("loop", "loop state"),
                              ("callback", "callback state"), ("trainer", "trainer state")]
            where n.contains(token) {
            return "its name says \(what)"
        }
        if words.contains("ema") { return "its name says EMA" }
        guard !n.hasSuffix("state_dict") else { return nil }
        if n.contains("_state") || n.contains("state_") { return "its name says state" }
        return nil
    }
}

// MARK: - Which record the weights are

/// `--record`, else the framework's first weights record that is not None, else the whole file.
struct SelectWeights: SurgeryStep {
    var record: String?
    var weightsRecords: [String]
    var emaNames: [String]
    var recordNames: [String]

    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        if let w = record {
            guard let n = s.valueAt(w) else {
                if s.cleared.contains(w) {
                    throw .invalidOperation("--record \(w): strip removes '\(w)' (training state)")
                }
                throw .noSuchRecord(w, available: recordNames)
            }
            if s.graph[n] == .none {
                var why = "'\(w)' is None"
                if s.cleared.contains(w) {
                    why = "strip sets '\(w)' to None (training state)"
                    if let p = s.promoted, p.from == w {
                        why += "; its weights are the \(p.to) now: use --record \(p.to)"
                    } else if emaNames.contains(w) {
                        why += "; --use-ema makes it the model"
                    }
                }
                throw .invalidOperation("--record \(w): \(why)")
            }
            guard try s.graph.isWeightsRecord(n) else {
                throw .invalidOperation("--record \(w): '\(w)' is not a weights record (\(weightsDescription(s.graph, n))); "
                    + "--record names the module or state dict that --drop, --rename and --state-dict change")
            }
            s.weightsName = w
        } else if s.graph.dictEntries(s.graph.root) != nil && !recordNames.isEmpty {
            s.weightsName = weightsRecords.first { n in s.recordNode(n).map { s.graph[$0] != .none } ?? false }
        }
        s.report.weightsRecord = s.weightsName
        return s
    }
}

// MARK: - Keys out, forms, names

/// `--drop`: keys of the weights record matching a glob or prefix are removed.
struct DropKeys: SurgeryStep {
    var patterns: [String]
    var force: Bool

    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        let before = try s.graph.stateDictLocations(s.weightsNode)
        for pattern in patterns where !before.contains(where: { keyMatches(pattern, $0.0.name) }) {
            s.report.warnings.append("--drop \(pattern) matches no key")
        }
        let doomed = before.filter { t in patterns.contains { keyMatches($0, t.0.name) } }
        if doomed.count == before.count && !before.isEmpty && !force {
            throw .invalidOperation("--drop would remove all \(before.count) tensors; add --force to allow it")
        }
        for (t, loc) in doomed {
            guard let loc else { throw .invalidOperation("cannot drop \(t.name): it is not held by a dict entry") }
            s.graph.removeDictEntry(loc.container, key: loc.key)
            s.report.dropped.append(t.name)
        }
        return s
    }
}

/// `--state-dict`: module objects become state dicts; a dict keeps its structure (see
/// ``PickleGraph/stateDictForm(_:name:depth:changes:limits:)``); then ``PlainData`` makes every other value plain.
struct ToStateDict: SurgeryStep {
    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        var changes: [(record: String, before: String, after: String)] = []
        let node = s.weightsNode
        let converted = try s.graph.stateDictForm(node, name: s.weightsName, depth: 0, changes: &changes)
        s.report.recordChanges += changes
        if converted != node { try s.replaceWeights(with: converted) }
        return s
    }
}

/// `--rename OLD=NEW` (prefixes, in order), then `--rename-regex`, on the weights record's keys; also the prefixes a
/// framework's publish script removes (`quiet`: no warning when a rule matches nothing, no refusal of a module).
struct RenameKeys: SurgeryStep {
    var prefixes: [(old: String, new: String)]
    var regexes: [(pattern: String, replacement: String)] = []
    var quiet = false

    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        let current = s.weightsNode
        guard s.graph.moduleState(current) == nil else {
            if quiet { return s }
            throw .invalidOperation("renaming keys of a module object changes the model's structure; add --state-dict")
        }
        let located = try s.graph.stateDictLocations(current)
        var hitCount = [Int](repeating: 0, count: prefixes.count + regexes.count)
        var newNames: [String: String] = [:]
        var changes: [(EntryLocation, String, String)] = []
        let compiled = try regexes.map { (p, r) throws(CheckpointError) -> (Regex<AnyRegexOutput>, String) in
            do { return (try Regex(p), r) } catch { throw .invalidOperation("--rename-regex '\(p)': \(error)") }
        }
        for (t, loc) in located {
            var name = t.name
            for (i, r) in prefixes.enumerated() where name.hasPrefix(r.old) {
                name = r.new + name.dropFirst(r.old.count)
                hitCount[i] += 1
            }
            for (i, (re, rep)) in compiled.enumerated() {
                if let m = name.firstMatch(of: re) {
                    name.replaceSubrange(m.range, with: expandReplacement(rep, m))
                    hitCount[prefixes.count + i] += 1
                }
            }
            if let other = newNames[name] { throw .invalidOperation("rename makes \(other) and \(t.name) both \(name)") }
            newNames[name] = t.name
            if name != t.name {
                guard let loc else { throw .invalidOperation("cannot rename \(t.name): it is not a dict entry") }
                guard !name.contains(".") || s.graph.dictEntries(current) != nil else {
                    throw .invalidOperation("cannot rename \(t.name)")
                }
                changes.append((loc, t.name, name))
            }
        }
        if !quiet {
            for (i, r) in prefixes.enumerated() where hitCount[i] == 0 {
                s.report.warnings.append("--rename \(r.old)=\(r.new) matches no key")
            }
            for (i, r) in regexes.enumerated() where hitCount[prefixes.count + i] == 0 {
                s.report.warnings.append("--rename-regex \(r.pattern)=\(r.replacement) matches no key")
            }
        }
        for (loc, old, new) in changes {
            // Only flat state dicts are renamed by key, so the new key is the full new name.
            guard loc.container == current else {
                let inner = [s.weightsName, old.split(separator: ".").first.map(String.init)].compactMap { $0 }
                throw .invalidOperation("cannot rename \(old): it is inside a nested dict; name that dict with "
                    + "--record \(inner.joined(separator: "."))")
            }
            s.graph.replaceDictKey(loc.container, key: loc.key, with: s.graph.add(.string(new)))
            s.report.renamed.append((old, new))
        }
        return s
    }
}

// MARK: - What a framework's own publish script does besides

/// Ultralytics' `strip_optimizer`: the weights module's `args` (an `IterableSimpleNamespace`) becomes a plain dict,
/// its `criterion` None, and `train_args` keeps only the default config's keys.
struct UltralyticsPublish: SurgeryStep {
    var defaultConfigKeys: [String]

    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        let model = s.weightsNode
        let where_ = s.weightsName ?? "the model"
        if let fields = s.graph.moduleFields(model), let entries = s.graph.dictEntries(fields.state) {
            for (i, e) in entries.enumerated() {
                switch s.graph.keyText(e.key) {
                case "args":
                    guard case .object(let o) = s.graph[e.value], let st = o.state, let items = s.graph.dictEntries(st),
                          o.dictItems.isEmpty, o.listItems.isEmpty else { continue }
                    let cls = s.graph.globalName(o.callable) ?? "object"
                    s.graph.setDictEntryValue(fields.state, index: i, value: s.graph.add(.dict(items)))
                    s.report.recordChanges.append(("\(where_).args", cls.split(separator: ".").last.map(String.init) ?? cls,
                                                   "dict of \(items.count)"))
                case "criterion":
                    guard s.graph[e.value] != .none else { continue }
                    s.report.recordChanges.append(("\(where_).criterion", s.describe(e.value), "None"))
                    s.graph.setDictEntryValue(fields.state, index: i, value: s.graph.add(.none))
                default:
                    continue
                }
            }
        }
        if let args = s.recordNode("train_args"), let items = s.graph.dictEntries(args) {
            let keep = Set(defaultConfigKeys)
            let kept = items.filter { s.graph.keyText($0.key).map(keep.contains) ?? false }
            if kept.count != items.count {
                let gone = items.filter { !(s.graph.keyText($0.key).map(keep.contains) ?? false) }
                    .compactMap { s.graph.keyText($0.key) }
                s.report.recordChanges.append(("train_args", "dict of \(items.count)",
                    "dict of \(kept.count) (not default-config keys out: \(gone.joined(separator: ", ")))"))
                s.setRecord("train_args", s.graph.add(.dict(kept)))
            }
        }
        return s
    }
}

/// The weights record alone becomes the file (timm's `clean_checkpoint.py` saves the bare state dict).
struct BareWeights: SurgeryStep {
    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        guard let w = s.weightsName, let node = s.valueAt(w), s.graph.dictEntries(node) != nil else { return s }
        let others = (s.graph.dictEntries(s.graph.root) ?? []).compactMap { s.graph.keyText($0.key) }.filter { $0 != w }
        s.report.recordChanges.append(("(top level)", "dict of \(others.count + 1) records",
            "the \(w) state dict alone" + (others.isEmpty ? "" : " (\(others.joined(separator: ", ")) out)")))
        s.graph.root = node
        s.weightsName = nil
        s.report.weightsRecord = nil
        return s
    }
}

// MARK: - dtypes

/// `--half`: float32, float64 and bfloat16 storages of every record become float16 (float8 kinds are smaller and stay).
struct HalfPrecision: SurgeryStep {
    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        let g = s.graph
        let parts = g.dictEntries(g.root) == nil ? [(name: "", node: g.root)] : g.recordsOf(g.root)
        for r in parts {
            let named = try g.stateDict(r.node).map { t in
                NamedTensor(name: [r.name, t.name].filter { !$0.isEmpty }.joined(separator: "."), tensor: t.tensor)
            }
            s.conversions.merge(try Self.conversions(named)) { a, _ in a }
        }
        return s
    }

    /// The storages of `tensors` that `--half` converts, each to float16: those of float32, float64 and bfloat16
    /// tensors (float8 kinds are smaller and stay; integers are untouched). A floating tensor in an untyped storage is
    /// refused.
    static func conversions(_ tensors: [NamedTensor]) throws(CheckpointError) -> [String: DType] {
        var out: [String: DType] = [:]
        for t in tensors where [.float32, .float64, .bfloat16].contains(t.tensor.dtype) {
            guard t.tensor.storage.dtype != nil else {
                throw .invalidOperation("--half: \(t.name) is \(t.tensor.dtype.rawValue) in an untyped storage; not supported")
            }
            out[t.tensor.storage.key] = .float16
        }
        return out
    }
}
