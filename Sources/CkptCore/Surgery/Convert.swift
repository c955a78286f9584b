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
    public var warnings: [String] = []

    public var json: JSONValue {
        .object([
            ("input", .string(input)), ("input_format", .string(inputFormat)), ("output", .string(output)),
            ("output_format", .string(outputFormat.rawValue)), ("record", record.map { .string($0) } ?? .null),
            ("tensors", .int(Int64(tensors))), ("data_bytes", .int(dataBytes)),
            ("removed_aliases", .object(removedAliases.map { ($0.removed, .string($0.kept)) })),
            ("conversions", ValueConversion.json(conversions)),
            ("dropped_values", ValueConversion.json(droppedValues, dropped: true)),
            ("warnings", .array(warnings.map { .string($0) })),
        ])
    }

    public var text: String {
        var s = "converted \(input) (\(inputFormat)) -> \(output) (\(outputFormat.rawValue)): \(tensors) tensors, "
            + Figures.bytes(dataBytes)
        if !removedAliases.isEmpty {
            s += "\nshared tensors stored once (aliases in __metadata__): "
                + removedAliases.map { "\($0.removed) -> \($0.kept)" }.joined(separator: ", ")
        }
        for line in ValueConversion.lines(conversions, dropped: droppedValues) { s += "\n" + line }
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
}

extension Checkpoint {
    /// The record `convert` reads: `name`, or the default record (see ``defaultRecord()``), with its state_dict view
    /// (a bare tensor record is named by the record), and a warning when the record holds tensors its view leaves
    /// out (they are not written). A record whose view is empty while it holds tensors is refused.
    func convertSource(record: String?) throws(CheckpointError)
        -> (name: String?, node: NodeID, tensors: [NamedTensor], warning: String?)
    {
        let (name, node): (String?, NodeID)
        if let r = record { (name, node) = (r, try self.record(named: r)) } else { (name, node) = defaultRecord() }
        let (view, leftOut) = modelWeights(try graph.stateDict(node), recordNamed: record != nil)
        var tensors = record == nil ? publishedNames(view) : view
        if tensors.count == 1, tensors[0].name.isEmpty { tensors[0].name = name ?? "tensor" }
        let coverage = try requireView(tensors.map(\.tensor), of: node, record: name, doing: "convert writes")
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
        for t in tensors {
            do { try t.tensor.check(name: t.name, recordBytes: storageRecordBytes(t.tensor.storage.key)) } catch {
                throw .tensor(error)
            }
        }
        return (name, node, tensors, warning)
    }

    /// Plans `convert` to a torch file: the record's state dict as the whole file (an `OrderedDict` of tensors, or
    /// the record itself when it already is a state dict, keeping its `_metadata`), every other value in it made plain
    /// data (``PlainData``; `dropUnconvertible` drops what cannot be), storages renumbered, checked; the plan's
    /// ``SurgeryPlan/verifyPickle`` is the weights_only replay (``WeightsOnlyGuarantee``).
    public func planTorchStateDict(record: String? = nil, output: String, dropUnconvertible: Bool = false)
        throws(CheckpointError) -> (plan: SurgeryPlan, report: ConvertReport)
    {
        let (name, node, tensors, warning) = try convertSource(record: record)
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
        var plain = PlainDataConverter(g, dropUnconvertible: dropUnconvertible)
        try plain.convert(from: g.root)
        try plain.finish(context: "convert")
        let (renumbered, storages, _) = try CheckStage(checkpoint: self).run(plain.graph)
        try WeightsOnlyGuarantee.check(renumbered, context: "convert")
        var surgery = SurgeryReport()
        surgery.weightsRecord = name
        surgery.conversions = plain.conversions
        surgery.droppedValues = plain.dropped
        let report = ConvertReport(input: path, inputFormat: format, output: output, outputFormat: .torch, record: name,
                                   tensors: tensors.count, dataBytes: storages.reduce(0) { $0 + $1.byteCount },
                                   conversions: plain.conversions, droppedValues: plain.dropped,
                                   warnings: warning.map { [$0] } ?? [])
        var plan = SurgeryPlan(graph: renumbered, storages: storages, report: surgery)
        plan.verifyPickle = WeightsOnlyGuarantee.verifier(for: renumbered, context: "convert")
        return (plan, report)
    }

    /// Plans `convert` to safetensors: the record's state dict, each tensor compacted to its row-major bytes, shared
    /// tensors deduplicated as Hugging Face's `convert.py` does (`_remove_duplicate_names`: of the names viewing one
    /// storage, those covering all of it are candidates, the first in sorted order is kept, the others are left out
    /// and recorded in `__metadata__` as `removed: kept`, beside `format: pt`), laid out as `save_file` lays out.
    public func planSafetensors(record: String? = nil, output: String) throws(CheckpointError) -> SafetensorsPlan {
        let (name, _, all, warning) = try convertSource(record: record)
        var report = ConvertReport(input: path, inputFormat: format, output: output, outputFormat: .safetensors,
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
        func less(_ a: String, _ b: String) -> Bool { a.unicodeScalars.lexicographicallyPrecedes(b.unicodeScalars) }
        var removed: [String: String] = [:]
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
        var tensors = all.filter { removed[$0.name] == nil }
        tensors.sort { a, b in
            let ra = Safetensors.layoutRank(Safetensors.name(of: a.tensor.dtype)!)
            let rb = Safetensors.layoutRank(Safetensors.name(of: b.tensor.dtype)!)
            return ra != rb ? ra > rb : less(a.name, b.name)
        }

        var metadata: [(key: String, value: String)] = [("format", "pt")]
        metadata += removed.keys.sorted(by: less).map { ($0, removed[$0]!) }
        var pairs: [(String, JSONValue)] = [("__metadata__", .object(metadata.map { ($0.key, .string($0.value)) }))]
        var offset: Int64 = 0
        for t in tensors {
            let n = t.tensor.byteCount!
            pairs.append((t.name, .object([
                ("dtype", .string(Safetensors.name(of: t.tensor.dtype)!)),
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
        report.tensors = tensors.count
        report.dataBytes = offset
        report.removedAliases = removed.keys.sorted(by: less).map { ($0, removed[$0]!) }
        return SafetensorsPlan(tensors: tensors, metadata: metadata, header: header, dataBytes: offset, report: report)
    }
}
