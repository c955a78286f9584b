/// The kind of a value, as `ckpt info` names it in its `kind` column (the raw value).
public enum RecordKind: String, Sendable {
    case none, tensor, module
    case stateDict = "state_dict"
    case optimizer, scalar, array, string, dict, list, tuple, bytes, other
}

/// One top-level record of a checkpoint, as `ckpt info` reports it.
public struct RecordSummary: Sendable {
    public var name: String
    public var kind: RecordKind
    /// The class of a module object (`models.yolo.DetectionModel`).
    public var className: String?
    /// The value of a scalar or string.
    public var value: JSONValue?
    /// For tensor-bearing records: tensors in the state_dict view, their elements and bytes,
    /// and the bytes their distinct storages take in the file.
    public var tensors: Int?
    public var elements: Int64?
    public var bytes: Int64?
    public var storageBytes: Int64?
    /// The dtypes met, in order of first appearance.
    public var dtypes: [DType] = []
    /// What the state_dict view covers of the record (nil for a record that holds no tensor).
    public var coverage: ViewCoverage?

    var json: JSONValue {
        var o: [(String, JSONValue)] = [("name", .string(name)), ("kind", .string(kind.rawValue))]
        if let c = className { o.append(("class", .string(c))) }
        if let v = value { o.append(("value", v)) }
        if let t = tensors {
            o += [("tensors", .int(Int64(t))), ("elements", .int(elements ?? 0)), ("bytes", .int(bytes ?? 0)),
                  ("storage_bytes", .int(storageBytes ?? 0)),
                  ("dtypes", .array(dtypes.map { .string($0.rawValue) })),
                  ("tensors_not_in_view", .int(Int64(coverage?.missing.count ?? 0)))]
        }
        return .object(o)
    }
}

/// What `ckpt info` reports about a checkpoint.
public struct CheckpointInfo: Sendable {
    public var file: String
    public var fileSize: UInt64
    public var format: String
    public var root: String
    public var recordCount: Int
    public var formatVersion: String?
    /// Kind of the top-level object: dict, state_dict, module, ...
    public var topKind: RecordKind
    public var records: [RecordSummary]
    /// The format's own metadata (safetensors `__metadata__`, ONNX producer and opsets, shard files).
    public var metadata: [(key: String, value: String)] = []
    /// A TorchScript archive's records (code, constants, extra files, bytecode) and constants.
    public var torchScript: TorchScriptArchive? = nil
    /// The training framework whose conventions apply (``Checkpoint/framework``), nil when none is recognised.
    public var framework: DetectedFramework? = nil
    /// A Hugging Face Trainer checkpoint folder's files by role (the records are its weights).
    public var trainerFolder: TrainerFolder? = nil
    /// A distributed checkpoint folder's layout (DCP, DeepSpeed ZeRO): ranks, files, chunks, model and optimizer bytes.
    public var distributed: DistributedLayout? = nil

    /// One line for stderr per record whose state_dict view leaves tensors out (see ``ViewCoverage/note(file:)``).
    public var notes: [String] { records.compactMap { $0.coverage?.note(file: file) } }

    /// The report as JSON.
    public var json: JSONValue {
        let frameworkJSON: JSONValue = framework?.json ?? .null
        let folder: [(String, JSONValue)] = trainerFolder.map { [("trainer_folder", $0.json)] } ?? []
        return .object([
            ("file", .string(file)), ("file_size", .int(Int64(fileSize))), ("format", .string(format)),
            ("root", root.isEmpty ? .null : .string(root)), ("record_count", .int(Int64(recordCount))),
            ("format_version", formatVersion.map { .string($0) } ?? .null),
            ("top_kind", .string(topKind.rawValue)),
            ("framework", frameworkJSON),
            ("records", .array(records.map(\.json))),
        ] + (metadata.isEmpty ? [] : [("metadata", .object(metadata.map { ($0.key, .string($0.value)) }))])
          + (torchScript.map { [("torchscript", $0.json)] } ?? []) + folder
          + (distributed.map { [("distributed", $0.json)] } ?? []))
    }

    /// The report as an aligned table.
    public var table: String {
        var head = "\(file): \(Figures.bytes(Int64(fileSize))), \(format) ("
            + (root.isEmpty ? "\(recordCount) storages" : "root '\(root)', \(recordCount) records")
        if let v = formatVersion { head += ", format version \(v)" }
        head += "), top level: \(topKind.rawValue)"
        head += "\nframework: " + (framework?.text ?? "none recognised (generic conventions: --framework NAME names one)")
        var rows: [[String]] = [["record", "kind", "value / class", "tensors", "elements", "size", "dtypes"]]
        for r in records {
            var shown = r.className ?? ""
            if let v = r.value {
                switch v {
                case .string(let s): shown = s.count > 48 ? String(s.prefix(45)) + "..." : s
                default: shown = v.rendered(indent: 0)
                }
            }
            rows.append([r.name, r.kind.rawValue, shown, r.tensors.map(String.init) ?? "",
                         r.elements.map { Figures.count($0) } ?? "", r.storageBytes.map { Figures.bytes($0) } ?? "",
                         r.dtypes.map(\.rawValue).joined(separator: ",")])
        }
        var meta = metadata.isEmpty ? "" : "\n" + Figures.table(metadata.map { ["  " + $0.key + ":", $0.value] })
        if let d = distributed { meta += "\n" + d.text }
        return head + meta + "\n\n" + Figures.table(rows) + (torchScript.map { "\n\n" + $0.table } ?? "")
            + (trainerFolder.map { "\n\n" + $0.table } ?? "")
    }
}

/// Builds `ckpt info`'s report (``CheckpointInfo``) from an open checkpoint: one summary a top-level record (or of
/// the top level, when it is not a dict of records).
public struct InfoBuilder {
    /// The checkpoint described.
    public let checkpoint: Checkpoint

    public init(checkpoint: Checkpoint) {
        self.checkpoint = checkpoint
    }

    private var graph: PickleGraph { checkpoint.graph }

    /// The kind of a value, as `info` names it.
    public func kind(of id: NodeID) -> RecordKind {
        if graph[id] == .none { return .none }
        if ((try? graph.tensor(id)) ?? nil) != nil { return .tensor }
        if graph.moduleState(id) != nil { return .module }
        if checkpoint.isStateDict(id) { return .stateDict }
        if graph.isOptimizerState(id) { return .optimizer }
        if let (shape, _) = graph.numpyValue(id) { return shape.isEmpty ? .scalar : .array }
        if graph.scalarJSON(id) != nil { return .scalar }
        if graph.string(id) != nil { return .string }
        if graph.dictEntries(id) != nil { return .dict }
        switch graph[id] {
        case .list: return .list
        case .tuple: return .tuple
        case .bytes: return .bytes
        default: return .other
        }
    }

    /// Summarizes one value.
    public func summary(name: String, node: NodeID) throws(CheckpointError) -> RecordSummary {
        let k = kind(of: node)
        var s = RecordSummary(name: name, kind: k)
        switch k {
        case .module: s.className = graph.className(node)
        case .scalar, .array: s.value = graph.scalarJSON(node)
        case .string: s.value = graph.string(node).map { .string($0) }
        default: break
        }
        let tensors = try graph.stateDictTensors(node)
        let coverage = graph.coverage(of: node, record: name.isEmpty ? nil : name, shown: tensors)
        if coverage.built > 0 || [.module, .stateDict, .optimizer, .tensor].contains(k) {
            var elements: Int64 = 0, bytes: Int64 = 0, storageBytes: Int64 = 0
            var seen = Set<String>()
            var dtypes: [DType] = []
            for t in tensors {
                elements &+= t.numel ?? 0
                bytes &+= t.byteCount ?? 0
                if seen.insert(t.storage.key).inserted {
                    storageBytes &+= checkpoint.storageRecordBytes(t.storage.key) ?? t.storage.byteCount ?? 0
                }
                if !dtypes.contains(t.dtype) { dtypes.append(t.dtype) }
            }
            s.tensors = tensors.count
            s.elements = elements
            s.bytes = bytes
            s.storageBytes = storageBytes
            s.dtypes = dtypes
            s.coverage = coverage
        }
        return s
    }

    /// The whole `info` report.
    public func build() throws(CheckpointError) -> CheckpointInfo {
        let c = checkpoint
        let top = kind(of: graph.root)
        var summaries: [RecordSummary] = []
        if top == .dict {
            for r in c.records { summaries.append(try summary(name: r.name, node: r.node)) }
        } else {
            summaries.append(try summary(name: "", node: graph.root))
        }
        return CheckpointInfo(file: c.path, fileSize: c.fileSize, format: c.format, root: c.root,
                              recordCount: c.recordCount, formatVersion: c.formatVersion, topKind: top,
                              records: summaries, metadata: c.metadata, torchScript: c.torchScript,
                              framework: c.framework, trainerFolder: c.trainerFolder, distributed: c.distributed)
    }
}

extension TorchScriptArchive {
    /// `{classes, modules, mobile, constants: {tensors, elements, bytes, storage_bytes, names}, records: [{name, kind,
    /// size, compressed}]}`.
    var json: JSONValue {
        let (elements, bytes) = constantTotals
        return .object([
            ("classes", .int(Int64(classes.count))),
            ("modules", .int(Int64(classes.values.filter(\.isModule).count))),
            ("mobile", .bool(isMobile)),
            ("constants", .object([
                ("tensors", .int(Int64(constants.count))), ("elements", .int(elements)), ("bytes", .int(bytes)),
                ("storage_bytes", .int(constantStorageBytes)),
                ("names", .array(constants.map { .string($0.name) })),
            ])),
            ("records", .array(records.map {
                .object([("name", .string($0.name)), ("kind", .string($0.kind.rawValue)), ("size", .int(Int64($0.size))),
                         ("compressed", .bool($0.compressed))])
            })),
        ])
    }

    /// The records as a table, under a line with the class and constant counts.
    var table: String {
        let (elements, _) = constantTotals
        var head = "TorchScript\(isMobile ? " (mobile, bytecode.pkl)" : ""): \(classes.count) classes declared in code/ "
            + "(\(classes.values.filter(\.isModule).count) modules); constants.pkl: \(constants.count) tensor"
            + (constants.count == 1 ? "" : "s")
        if !constants.isEmpty { head += " (\(Figures.count(elements)) elements, \(Figures.bytes(constantStorageBytes)), not in the state_dict)" }
        var rows: [[String]] = [["archive record", "kind", "size", ""]]
        for r in records {
            rows.append([r.name, r.kind.rawValue, Figures.bytes(Int64(r.size)), r.compressed ? "deflated" : ""])
        }
        return head + "\n\n" + Figures.table(rows)
    }
}

extension DistributedLayout {
    /// `{format, world_size, files, chunks: {name: count}, model_bytes, optimizer_bytes, other_items: {name: value},
    /// notes}`.
    var json: JSONValue {
        .object([
            ("format", .string(format)), ("world_size", .int(Int64(worldSize))),
            ("files", .array(files.map { .string($0) })),
            ("chunks", .object(chunks.map { ($0.name, .int(Int64($0.count))) })),
            ("model_bytes", .int(modelBytes)), ("optimizer_bytes", .int(optimizerBytes)),
            ("other_items", .object(otherItems.map { ($0.name, .string($0.value)) })),
            ("notes", .array(notes.map { .string($0) })),
        ])
    }

    /// Lines for `info`'s head: ranks and files, chunks per tensor (how many tensors are read from how many chunks),
    /// model and optimizer bytes, the non-tensor items with their values, notes.
    var text: String {
        let shownFiles = files.prefix(6).joined(separator: ", ") + (files.count > 6 ? ", ..." : "")
        var lines = ["distributed: \(format), world size \(worldSize), \(files.count) data file\(files.count == 1 ? "" : "s") (\(shownFiles))"]
        var byCount: [Int: Int] = [:]
        for c in chunks { byCount[c.count, default: 0] += 1 }
        let counts = byCount.keys.sorted(by: >).map { n in "\(byCount[n]!) tensor\(byCount[n]! == 1 ? "" : "s") from \(n)" }
        lines.append("  chunks per tensor: " + (counts.isEmpty ? "no tensors" : counts.joined(separator: ", ")))
        lines.append("  model state: \(Figures.bytes(modelBytes)), optimizer state: \(Figures.bytes(optimizerBytes))")
        if !otherItems.isEmpty {
            lines.append("  non-tensor items (\(otherItems.count)):")
            for item in otherItems.prefix(12) {
                let v = item.value.count > 60 ? String(item.value.prefix(57)) + "..." : item.value
                lines.append("    \(item.name) = \(v)")
            }
            if otherItems.count > 12 { lines.append("    ... (--json lists all)") }
        }
        for n in notes { lines.append("  note: \(n)") }
        return lines.joined(separator: "\n")
    }
}
