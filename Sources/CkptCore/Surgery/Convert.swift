import Foundation

/// What `ckpt convert` wrote or would write.
public struct ConvertReport: Sendable {
    public var input: String
    public var inputFormat: String
    public var output: String
    public var outputFormat: OutputFormat
    /// The record converted (nil: the file's default).
    public var record: String?
    public var tensors: Int
    /// Bytes of tensor data written.
    public var dataBytes: Int64
    /// Shared tensors left out of a safetensors file: each alias and the name kept for its storage.
    public var removedAliases: [(removed: String, kept: String)] = []
    /// Values of a torch output made plain data so that it loads with `weights_only=True` (``PlainData``).
    public var conversions: [ValueConversion] = []
    /// Values dropped because they cannot be converted (`--drop-unconvertible`).
    public var droppedValues: [ValueConversion] = []
    /// Records carried beside the weights (``CarriedRecords``): written to `__metadata__` as JSON (to safetensors), or
    /// restored from it (to a torch file); the records left out, each with why; and what JSON changed in a record.
    public var records: [String] = []
    public var recordsLeftOut: [(name: String, why: String)] = []
    public var recordsLossy: [(name: String, what: String)] = []
    public var warnings: [String] = []
    /// Tensors written as float16 by `--half`.
    public var halfTensors = 0
    /// A sharded output (`--max-shard-size`): the limit, and each file with its tensors and bytes of tensor data.
    public var maxShardSize: Int64?
    public var shards: [(file: String, tensors: Int, bytes: Int64)] = []
    /// The index's `total_size`, as `huggingface_hub` counts it (the bytes of the tensors written, each once).
    public var totalSize: Int64?
    /// The command's verb in the summary (`converted`, `consolidated`).
    public var verb = "converted"
    /// `--dry-run` (in `consolidate`'s JSON).
    public var dryRun = false

    public var json: JSONValue {
        var pairs: [(String, JSONValue)] = [
            ("input", .string(input)), ("input_format", .string(inputFormat)), ("output", .string(output)),
            ("output_format", .string(outputFormat.rawValue)), ("record", record.map { .string($0) } ?? .null),
            ("tensors", .int(Int64(tensors))), ("data_bytes", .int(dataBytes)), ("half_tensors", .int(Int64(halfTensors))),
            ("max_shard_size", maxShardSize.map { .int($0) } ?? .null),
            ("shards", .array(shards.map { .object([("file", .string($0.file)), ("tensors", .int(Int64($0.tensors))),
                                                   ("data_bytes", .int($0.bytes))]) })),
            ("total_size", totalSize.map { .int($0) } ?? .null),
            ("removed_aliases", .object(removedAliases.map { ($0.removed, .string($0.kept)) })),
            ("conversions", ValueConversion.json(conversions)),
            ("dropped_values", ValueConversion.json(droppedValues, dropped: true)),
            ("records", .array(records.map { .string($0) })),
            ("records_left_out", .object(recordsLeftOut.map { ($0.name, .string($0.why)) })),
            ("records_json_changes", .object(recordsLossy.map { ($0.name, .string($0.what)) })),
            ("warnings", .array(warnings.map { .string($0) })),
        ]
        if verb != "converted" {
            // consolidate: the weights alone, never records; and whether anything was written
            pairs.removeAll { ["records", "records_left_out", "records_json_changes"].contains($0.0) }
            pairs.insert(("dry_run", .bool(dryRun)), at: 4)
        }
        return .object(pairs)
    }

    public var text: String {
        var s = "\(verb) \(input) (\(inputFormat)) -> \(output) (\(outputFormat.rawValue)): \(tensors) tensors, "
            + Figures.bytes(dataBytes)
        if halfTensors > 0 { s += "\n--half: \(halfTensors) tensors written as float16" }
        if let maxShardSize {
            s += "\n\(shards.count) \(shards.count == 1 ? "file" : "shards") of at most \(Figures.bytes(maxShardSize))"
                + " (--max-shard-size \(maxShardSize) bytes; a larger tensor is alone in its shard)"
            if shards.count > 1 { s += ", index model.safetensors.index.json (total_size \(totalSize ?? 0))" }
            for f in shards { s += "\n  \(f.file): \(f.tensors) \(f.tensors == 1 ? "tensor" : "tensors"), \(Figures.bytes(f.bytes))" }
        }
        if !removedAliases.isEmpty {
            let place = outputFormat == .shardedSafetensors && shards.count > 1 ? "the index's metadata" : "__metadata__"
            s += "\nshared tensors stored once (aliases in \(place)): "
                + removedAliases.map { "\($0.removed) -> \($0.kept)" }.joined(separator: ", ")
        }
        for line in ValueConversion.lines(conversions, dropped: droppedValues) { s += "\n" + line }
        if !records.isEmpty {
            s += (outputFormat == .safetensors ? "\nrecords in __metadata__ (as JSON): " : "\nrecords restored from __metadata__: ")
                + records.joined(separator: ", ")
        }
        for r in recordsLossy { s += "\n  \(r.name): \(r.what) in JSON" }
        if !recordsLeftOut.isEmpty {
            // Records left out for one reason are named together: `ema, updates, optimizer (training state ...)`.
            var reasons: [String] = []
            var names: [String: [String]] = [:]
            for r in recordsLeftOut {
                if names[r.why] == nil { reasons.append(r.why) }
                names[r.why, default: []].append(r.name)
            }
            s += "\nrecords not carried: " + reasons.map { "\(names[$0]!.joined(separator: ", ")) (\($0))" }.joined(separator: "; ")
        }
        return s
    }
}

/// A safetensors file to write: the header and, in layout order, the tensors whose row-major bytes follow it.
public struct SafetensorsPlan {
    /// Tensors in the order of their bytes (the reference writer's: dtype rank descending, then name).
    public var tensors: [NamedTensor]
    /// `__metadata__`: `format: pt`, then each removed alias and the name kept.
    public var metadata: [(key: String, value: String)]
    /// The 8-byte length and the JSON header, padded with spaces to a multiple of 8.
    public var header: [UInt8]
    public var dataBytes: Int64
    public var report: ConvertReport
    /// Storage key -> the dtype its tensors are written as (`--half`: float16), converted while streaming.
    public var outputDTypes: [String: DType] = [:]
}

extension Checkpoint {
    /// The record `convert` reads: `name`, or the default record (see ``defaultRecord()``), with its state_dict view
    /// (a bare tensor record is named by the record), and a warning when the record holds tensors its view leaves
    /// out (they are not written). A record whose view is empty while it holds tensors is refused.
    ///
    /// `weightsOnly` (`consolidate`): never optimizer state. A record named that is optimizer state
    /// (``PickleGraph/isOptimizerState(_:)``, as ``InfoBuilder/kind(of:)`` says) is refused; when the default record is
    /// the whole file, the tensors of its top-level optimizer records are left out, with a warning
    /// (``leavingOutOptimizerRecords(_:)``).
    func convertSource(record: String?, weightsOnly: Bool = false) throws(CheckpointError)
        -> (name: String?, node: NodeID, tensors: [NamedTensor], warning: String?)
    {
        let (name, node): (String?, NodeID)
        if let r = record { (name, node) = (r, try self.record(named: r)) } else { (name, node) = defaultRecord() }
        func isOptimizer(_ id: NodeID) -> Bool { graph.isOptimizerState(id) }
        if weightsOnly, isOptimizer(node) {
            throw .invalidOperation("record '\(name ?? "")' is optimizer state, not weights: name the weights record (ckpt info lists them)")
        }
        let (view, leftOut) = modelWeights(try graph.stateDict(node), recordNamed: record != nil)
        var tensors = record == nil ? publishedNames(view) : view
        if tensors.count == 1, tensors[0].name.isEmpty { tensors[0].name = name ?? "tensor" }
        let coverage = try requireView(tensors.map(\.tensor), of: node, record: name, doing: "convert writes")
        var optimizerNote: String? = nil
        if weightsOnly, name == nil { (tensors, optimizerNote, _) = leavingOutOptimizerRecords(tensors) }
        guard !tensors.isEmpty else {
            if let note = torchScript?.constantsNote { throw .invalidOperation("the state_dict view is empty: " + note) }
            throw .invalidOperation(name.map { "record '\($0)' holds no tensors" } ?? "the file holds no tensors")
        }
        var warning = coverage.isComplete ? nil
            : "\(coverage.missing.count) tensors of \(name.map { "'\($0)'" } ?? "the file") are not in its state_dict view "
                + "and are not written (ckpt keys --all lists them)"
        if let l = leftOut {
            warning = [warning, "\(l.count) EMA tensors (\(name.map { "\($0)." } ?? "")\(l.prefix)*) are not the model's "
                + "weights and are not written (--record \(name ?? "state_dict") writes them)"].compactMap { $0 }.joined(separator: "; ")
        }
        if let optimizerNote { warning = [warning, optimizerNote].compactMap { $0 }.joined(separator: "; ") }
        for t in tensors {
            do { try t.tensor.check(name: t.name, recordBytes: storageRecordBytes(t.tensor.storage.key)) } catch {
                throw .tensor(error)
            }
        }
        return (name, node, tensors, warning)
    }

    /// The whole file's view without the tensors of its top-level optimizer records (``PickleGraph/isOptimizerState(_:)``:
    /// `{**model.state_dict(), "optimizer": opt.state_dict()}`, torchtitan's DCP root), and the note saying what was left
    /// out (nil when nothing was): what `consolidate` writes and `keys` lists when the weights are the whole file.
    func leavingOutOptimizerRecords(_ tensors: [NamedTensor]) -> (kept: [NamedTensor], note: String?, records: [String]) {
        let optimizers = (graph.dictEntries(graph.root) == nil ? [] : graph.recordsOf(graph.root))
            .filter { graph.isOptimizerState($0.node) }
        guard !optimizers.isEmpty else { return (tensors, nil, []) }
        let kept = tensors.filter { t in !optimizers.contains { t.name.hasPrefix($0.name + ".") } }
        guard kept.count < tensors.count else { return (tensors, nil, []) }
        return (kept, "optimizer state left out: \(tensors.count - kept.count) tensors of "
            + optimizers.map { "'\($0.name)'" }.joined(separator: ", "), optimizers.map(\.name))
    }

    /// Plans `convert` to a torch file: the record's state dict as the whole file (an `OrderedDict` of tensors, or
    /// the record itself when it already is a state dict, keeping its `_metadata`), every other value in it made plain
    /// data (``PlainData``; `dropUnconvertible` drops what cannot be), storages renumbered, checked; the plan's
    /// ``SurgeryPlan/verifyPickle`` is the weights_only replay (``WeightsOnlyGuarantee``).
    ///
    /// `half`: floating storages become float16 (``HalfPrecision``); `weightsOnly` (`consolidate`): the weights alone,
    /// never optimizer state (see ``convertSource(record:weightsOnly:)``), and a safetensors input's records carried in
    /// `__metadata__` are not restored.
    public func planTorchStateDict(record: String? = nil, output: String, dropUnconvertible: Bool = false,
                                   half: Bool = false, weightsOnly: Bool = false)
        throws(CheckpointError) -> (plan: SurgeryPlan, report: ConvertReport)
    {
        let (name, node, tensors, warning) = try convertSource(record: record, weightsOnly: weightsOnly)
        var g = graph
        // Kept as it is only when weights_only=True loads its class: a dict or an OrderedDict (not Python 2's
        // `__builtin__.dict(...)` call, nor a defaultdict).
        let loadableClass = graph.objectCallable(node).map { $0 == "collections.OrderedDict" } ?? (graph[node] != .none)
        if isStateDict(node), loadableClass, tensors.map(\.name) == graph.dictEntries(node)!.map({ graph.keyText($0.key) }), graph.dictEntries(node)!.allSatisfy({ graph.string($0.key) != nil }) {
            g.root = node
        } else {
            var od = PickleObject(construction: .reduce, callable: g.add(.global(module: "collections", name: "OrderedDict")),
                                  args: g.add(.tuple([])))
            od.dictItems = tensors.map { DictEntry(key: g.add(.string($0.name)), value: $0.tensor.tensorNode) }
            g.root = g.add(.object(od))
        }
        // From a safetensors file ckpt wrote with records: the records beside the state dict (``CarriedRecords``).
        let carried = containerFormat == .safetensors && !weightsOnly ? try carriedRecords(weights: nil) : nil
        if let carried { g.root = carried.restore(weights: g.root, into: &g) }
        var plain = PlainDataConverter(g, dropUnconvertible: dropUnconvertible)
        try plain.convert(from: g.root)
        try plain.finish(context: "convert")
        let conversions = half ? try HalfPrecision.conversions(tensors) : [:]
        let (renumbered, storages, _) = try CheckStage(checkpoint: self).run(plain.graph, conversions: conversions,
                                                                             planned: plain.madeStorages)
        try WeightsOnlyGuarantee.check(renumbered, context: "convert")
        var surgery = SurgeryReport()
        surgery.weightsRecord = name
        surgery.conversions = plain.conversions
        surgery.droppedValues = plain.dropped
        var report = ConvertReport(input: path, inputFormat: format, output: output, outputFormat: .torch, record: name,
                                   tensors: tensors.count, dataBytes: storages.reduce(0) { $0 + $1.byteCount },
                                   conversions: plain.conversions, droppedValues: plain.dropped,
                                   warnings: warning.map { [$0] } ?? [])
        report.records = carried?.records.map(\.name) ?? []
        report.halfTensors = tensors.filter { conversions[$0.tensor.storage.key] != nil }.count
        var plan = SurgeryPlan(graph: renumbered, storages: storages, report: surgery)
        plan.verifyPickle = WeightsOnlyGuarantee.verifier(for: renumbered, context: "convert")
        return (plan, report)
    }

    /// Plans `convert` to safetensors: the record's state dict, each tensor compacted to its row-major bytes, shared
    /// tensors deduplicated as Hugging Face's `convert.py` does (`_remove_duplicate_names`: of the names viewing one
    /// storage, those covering all of it are candidates, the first in sorted order is kept, the others are left out
    /// and recorded in `__metadata__` as `removed: kept`, beside `format: pt`), laid out as `save_file` lays out.
    public func planSafetensors(record: String? = nil, output: String, half: Bool = false, weightsOnly: Bool = false)
        throws(CheckpointError) -> SafetensorsPlan
    {
        let w = try safetensorsWeights(record: record, output: output, half: half, weightsOnly: weightsOnly)
        var report = w.report
        var metadata: [(key: String, value: String)] = [("format", "pt")]
        metadata += report.removedAliases.map { ($0.removed, $0.kept) }
        if !weightsOnly, var carried = try carriedRecords(weights: report.record) {
            metadata += carried.metadataEntries(after: metadata)
            report.records = carried.records.map(\.name)
            report.recordsLeftOut = carried.leftOut
            report.recordsLossy = carried.lossy.filter { l in report.records.contains(l.name) }
        }
        var plan = try SafetensorsPlan(tensors: w.tensors, metadata: metadata, outputDTypes: w.outputDTypes, report: report)
        plan.report.tensors = plan.tensors.count
        plan.report.dataBytes = plan.dataBytes
        return plan
    }

    static func less(_ a: String, _ b: String) -> Bool { a.unicodeScalars.lexicographicallyPrecedes(b.unicodeScalars) }

    /// The tensors a safetensors output of the record holds, in the record's state_dict order: each compacted to its
    /// row-major bytes (with `half`, floating storages as float16: ``HalfPrecision``), shared tensors deduplicated
    /// as Hugging Face's `convert.py` and `huggingface_hub`'s `_remove_duplicate_names` do (see
    /// ``planSafetensors(record:output:half:weightsOnly:)``). `removed` is in the order `_remove_duplicate_names`
    /// gives (storages by first use, runs by position, names sorted): the order `save_torch_state_dict` writes
    /// them into an index's metadata.
    func safetensorsWeights(record: String?, output: String, half: Bool, weightsOnly: Bool,
                            format outputFormat: OutputFormat = .safetensors)
        throws(CheckpointError)
        -> (tensors: [NamedTensor], removed: [(removed: String, kept: String)], outputDTypes: [String: DType],
            report: ConvertReport)
    {
        let (name, _, all, warning) = try convertSource(record: record, weightsOnly: weightsOnly)
        var report = ConvertReport(input: path, inputFormat: format, output: output, outputFormat: outputFormat,
                                   record: name, tensors: 0, dataBytes: 0, warnings: warning.map { [$0] } ?? [])
        for t in all where Safetensors.name(of: t.tensor.dtype) == nil {
            throw .invalidOperation("tensor \(t.name) is \(t.tensor.dtype.rawValue), which safetensors cannot store")
        }
        for t in all where graph.objectCallable(t.tensor.tensorNode) == "torch._utils._rebuild_qtensor" {
            throw .invalidOperation("tensor \(t.name) is quantized, which safetensors cannot store")
        }

        // Shared tensors, as safetensors' _find_shared_tensors finds them: by storage (storages of 0 bytes are never
        // shared), then split into runs of overlapping byte ranges (sorted by start, end, name; a range starting at
        // or after the previous one's end starts a new run).
        var byStorage: [String: [NamedTensor]] = [:]
        var storageOrder: [String] = []
        for t in all where (storageRecordBytes(t.tensor.storage.key) ?? 0) > 0 {
            if byStorage[t.tensor.storage.key] == nil { storageOrder.append(t.tensor.storage.key) }
            byStorage[t.tensor.storage.key, default: []].append(t)
        }
        let less = Self.less
        var removed: [String: String] = [:]
        var removedInOrder: [(removed: String, kept: String)] = []
        for key in storageOrder {
            let members = byStorage[key]!
            guard members.count > 1 else { continue }
            let storageBytes = storageRecordBytes(key) ?? 0
            func before(_ a: (area: Range<Int64>, tensor: NamedTensor), _ b: (area: Range<Int64>, tensor: NamedTensor)) -> Bool {
                if a.area.lowerBound != b.area.lowerBound { return a.area.lowerBound < b.area.lowerBound }
                if a.area.upperBound != b.area.upperBound { return a.area.upperBound < b.area.upperBound }
                return less(a.tensor.name, b.tensor.name)
            }
            let areas = members.map { (area: $0.tensor.byteRange, tensor: $0) }.sorted(by: before)
            var runs: [[NamedTensor]] = [[areas[0].tensor]]
            var lastStop = areas[0].area.upperBound
            for a in areas.dropFirst() {
                if a.area.lowerBound >= lastStop { runs.append([a.tensor]) } else { runs[runs.count - 1].append(a.tensor) }
                lastStop = a.area.upperBound
            }
            // As convert.py's _remove_duplicate_names: of a run, the names covering the whole storage are candidates
            // and the first in sorted order is kept; the others are left out and recorded as aliases of it.
            for run in runs where run.count > 1 {
                let complete = run.filter { $0.tensor.storageOffset == 0 && ($0.tensor.byteCount ?? -1) == storageBytes }
                guard let kept = complete.map(\.name).min(by: less) else {
                    // convert.py refuses these; each is written as its own compacted copy instead.
                    report.warnings.append("\(run.map(\.name).sorted(by: less).joined(separator: ", ")) overlap in a "
                        + "storage that none of them covers whole; each is written as its own copy")
                    continue
                }
                let keptTensor = run.first { $0.name == kept }!.tensor
                for n in run.map(\.name).sorted(by: less) where n != kept { removedInOrder.append((n, kept)) }
                for m in run where m.name != kept {
                    removed[m.name] = kept
                    let t = m.tensor
                    if t.storageOffset != keptTensor.storageOffset || t.shape != keptTensor.shape
                        || t.stride != keptTensor.stride || t.dtype != keptTensor.dtype
                    {
                        report.warnings.append("\(m.name) is left out as an alias of \(kept) but is a different view "
                            + "of its storage (as Hugging Face's convert.py does)")
                    }
                }
            }
        }
        let tensors = all.filter { removed[$0.name] == nil }
        let outputDTypes = half ? try HalfPrecision.conversions(tensors) : [:]
        report.halfTensors = tensors.filter { outputDTypes[$0.tensor.storage.key] != nil }.count
        report.removedAliases = removed.keys.sorted(by: less).map { ($0, removed[$0]!) }
        return (tensors, removedInOrder, outputDTypes, report)
    }
}

extension SafetensorsPlan {
    /// Lays `tensors` out as `save_file` does (dtype rank descending, then name) and makes the header: `metadata`
    /// (`format` first, the rest as given), each tensor's dtype (its storage's entry in `outputDTypes`, else its
    /// own), shape and byte range.
    init(tensors all: [NamedTensor], metadata: [(key: String, value: String)], outputDTypes: [String: DType],
         report: ConvertReport) throws(CheckpointError)
    {
        func dtype(_ t: NamedTensor) -> DType { outputDTypes[t.tensor.storage.key] ?? t.tensor.dtype }
        // The header's own key: safetensors' save_file writes such a tensor, into a file no reader opens (the key twice).
        if all.contains(where: { $0.name == "__metadata__" }) {
            throw .invalidOperation("a tensor named '__metadata__' cannot be written to safetensors: the format reserves "
                                    + "that name for its metadata (rename it: --rename __metadata__=NEW on strip)")
        }
        var tensors = all
        tensors.sort { a, b in
            let ra = Safetensors.layoutRank(Safetensors.name(of: dtype(a))!)
            let rb = Safetensors.layoutRank(Safetensors.name(of: dtype(b))!)
            return ra != rb ? ra > rb : Checkpoint.less(a.name, b.name)
        }
        var pairs: [(String, JSONValue)] = [("__metadata__", .object(metadata.map { ($0.key, .string($0.value)) }))]
        var offset: Int64 = 0
        for t in tensors {
            let n = t.tensor.numel! * Int64(dtype(t).itemSize)
            pairs.append((t.name, .object([
                ("dtype", .string(Safetensors.name(of: dtype(t))!)),
                ("shape", .array(t.tensor.shape.map { .int($0) })),
                ("data_offsets", .array([.int(offset), .int(offset + n)])),
            ])))
            offset += n
        }
        var json = Array(JSONValue.object(pairs).compactSerdeText().utf8)
        json += [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8)
        guard UInt64(json.count) <= Safetensors.maxHeaderBytes else {
            throw .invalidOperation("the safetensors header would be \(json.count) bytes (the limit is \(Safetensors.maxHeaderBytes))")
        }
        let length = UInt64(json.count)
        let header = (0..<8).map { UInt8(truncatingIfNeeded: length >> (8 * UInt64($0))) } + json
        self.init(tensors: tensors, metadata: metadata, header: header, dataBytes: offset, report: report,
                  outputDTypes: outputDTypes)
    }
}
