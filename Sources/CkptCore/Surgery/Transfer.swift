/// Options of `ckpt transfer`.
public struct TransferOptions: Sendable {
    /// Keys of INTO not to transfer: a substring (YOLOv5's `exclude=['anchor']`), or a glob when it has `*?[`.
    public var exclude: [String] = []
    /// The record of FROM whose state_dict is copied (default: model, else ema, else state_dict, ...).
    public var fromRecord: String?
    /// The record of INTO that receives it (same default).
    public var intoRecord: String?
    public init() {}
}

/// What `transfer` did, key by key.
public struct TransferReport: Sendable {
    public var from: String
    public var into: String
    public var fromRecord: String?
    public var intoRecord: String?
    /// Keys of INTO that received FROM's tensor, in INTO's state_dict order.
    public var transferred: [String] = []
    /// Keys in INTO's state_dict.
    public var total = 0
    /// Keys of INTO not transferred, with why: `missing in FROM`, `shape [255, 64, 1, 1] vs [24, 64, 1, 1]`
    /// (FROM's vs INTO's), `excluded by 'anchor'`, `dtype int64 vs float32`.
    public var skipped: [(key: String, reason: String)] = []
    /// Keys of FROM that INTO does not have.
    public var unused: [String] = []
    /// Transferred tensors cast to INTO's dtype, by (FROM dtype, INTO dtype).
    public var casts: [(from: DType, to: DType, count: Int)] = []

    /// YOLOv5's line: `Transferred 342/349 items from yolov5s.pt`.
    public var headline: String { "Transferred \(transferred.count)/\(total) items from \(from)" }
}

/// A key is excluded: glob match when the pattern has glob characters, else substring (YOLOv5's `x in k`).
func excludes(_ pattern: String, _ key: String) -> Bool {
    pattern.contains(where: { "*?[".contains($0) }) ? globMatches(pattern, key) : key.contains(pattern)
}

func shapeText(_ s: [Int64]) -> String { "[" + s.map(String.init).joined(separator: ", ") + "]" }

extension Checkpoint {
    /// Plans `transfer`: this checkpoint (INTO) with every tensor of `from`'s state_dict whose name and shape
    /// match one of INTO's copied in, cast to INTO's dtype: YOLOv5's `intersect_dicts` rule. A pure graph
    /// operation: each matched tensor of INTO gets a new storage (offset 0, contiguous strides) whose bytes
    /// come from FROM (``OutputStorage/source`` 1; a view or slice of a larger storage is compacted). INTO's
    /// tensor metadata (Parameter-ness, requires_grad, dtype, device) stays. Every tensor is checked before
    /// the plan is returned. Write it with `Checkpoint.write(.torch(plan), sources: [into, from], to:)`.
    public func planTransfer(from: Checkpoint, _ options: TransferOptions) throws(FileError)
        -> (SurgeryPlan, TransferReport)
    {
        // FROM: its state_dict view, every tensor checked against its record.
        let (fromName, source) = try from.attributing { () throws(CheckpointError) -> (String?, [NamedTensor]) in
            let (name, node) = try from.weights(options.fromRecord)
            let view = from.modelWeights(try from.graph.stateDict(node), recordNamed: options.fromRecord != nil).kept
            try from.requireView(view.map(\.tensor), of: node, record: name, doing: "transfer copies from")
            for t in view {
                do throws(TensorCheckError) {
                    try t.tensor.check(name: t.name, recordBytes: from.storageRecordBytes(t.tensor.storage.key))
                } catch { throw .tensor(error) }
                guard from.storageRecordBytes(t.tensor.storage.key) != nil else {
                    throw .missingRecord("\(from.root)/data/\(t.tensor.storage.key)")
                }
            }
            return (name, view)
        }
        return try attributing { () throws(CheckpointError) -> (SurgeryPlan, TransferReport) in
            try refuseTorchScriptRewrite("transfer")
            let (intoName, node) = try weights(options.intoRecord)
            var g = graph
            let target = modelWeights(try g.stateDict(node), recordNamed: options.intoRecord != nil).kept
            try requireView(target.map(\.tensor), of: node, record: intoName, doing: "transfer fills")
            var report = TransferReport(from: from.path, into: path, fromRecord: fromName, intoRecord: intoName)
            report.total = target.count
            var byName: [String: TensorRef] = [:]
            for t in source where byName[t.name] == nil { byName[t.name] = t.tensor }
            let targetNames = Set(target.map(\.name))
            report.unused = source.map(\.name).filter { !targetNames.contains($0) }

            let floating: Set<DType> = [.float16, .bfloat16, .float32, .float64]
            var planned: [String: OutputStorage] = [:]
            var done: [NodeID: String] = [:]  // INTO tensor node -> the key that filled it (tied weights)
            var casts: [String: (DType, DType, Int)] = [:]
            for t in target {
                let into = t.tensor
                guard let f = byName[t.name] else { report.skipped.append((t.name, "missing in FROM")); continue }
                if let p = options.exclude.first(where: { excludes($0, t.name) }) {
                    report.skipped.append((t.name, "excluded by '\(p)'"))
                    continue
                }
                guard f.shape == into.shape else {
                    report.skipped.append((t.name, "shape \(shapeText(f.shape)) vs \(shapeText(into.shape))"))
                    continue
                }
                let quantized = [f.dtype, into.dtype].contains { [.qint8, .quint8, .qint32, .quint4x2, .quint2x4].contains($0) }
                guard !quantized, f.dtype == into.dtype || (floating.contains(f.dtype) && floating.contains(into.dtype)) else {
                    report.skipped.append((t.name, "dtype \(f.dtype.rawValue) vs \(into.dtype.rawValue)"))
                    continue
                }
                if done[into.tensorNode] != nil {  // a tied tensor, already filled under its first name
                    report.transferred.append(t.name)
                    continue
                }
                done[into.tensorNode] = t.name
                let numel = into.numel ?? 0
                let placeholder = "\u{1}transfer/\(planned.count)"
                var out = OutputStorage(source: 1, key: placeholder, sourceKey: f.storage.key, sourceDType: f.dtype,
                                        dtype: into.dtype, numel: numel)
                let view = StorageView(f)
                let wholeRecord = view.isContiguous && f.storageOffset == 0
                    && f.storage.byteCount == (f.byteCount ?? -1)
                if !wholeRecord { out.view = view }
                planned[placeholder] = out
                if f.dtype != into.dtype {
                    casts["\(f.dtype)>\(into.dtype)", default: (f.dtype, into.dtype, 0)].2 += 1
                }
                try g.pointTensor(into, atNewStorage: placeholder, numel: numel)
                report.transferred.append(t.name)
            }
            // A copy of INTO with nothing of FROM in it is not a transfer: refused, not reported as done.
            if report.transferred.isEmpty && !target.isEmpty {
                let example = report.skipped.first.map { " (first: \($0.0), \($0.1))" } ?? ""
                throw .invalidOperation("no tensor of \(from.path) matches INTO by name, shape and dtype\(example); "
                    + "nothing written (ckpt strip --rename renames keys first)")
            }
            report.casts = casts.values.sorted { $0.2 > $1.2 }.map { ($0.0, $0.1, $0.2) }
            let (renumbered, storages, _) = try CheckStage(checkpoint: self).run(g, planned: planned)
            return (SurgeryPlan(graph: renumbered, storages: storages, report: SurgeryReport()), report)
        }
    }

    /// The record holding a checkpoint's weights: the one named, or ``defaultRecord()``.
    func weights(_ name: String?) throws(CheckpointError) -> (String?, NodeID) {
        if let n = name { return (records.isEmpty ? nil : n, try recordOrTop(n)) }
        return defaultRecord()
    }
}

extension PickleGraph {
    /// Makes a tensor read a new, contiguous storage of its own: the persistent id gets `key` and `numel`
    /// (in the storage class's units), offset 0, row-major strides. Everything else about the tensor stays.
    mutating func pointTensor(_ t: TensorRef, atNewStorage key: String, numel: Int64) throws(CheckpointError) {
        guard case .object(var o) = self[t.tensorNode], var args = sequence(o.args), args.count >= 4,
              case .persistent(let pid) = self[t.storageNode], let items = sequence(pid), items.count >= 5
        else { throw .invalidOperation("tensor #\(t.tensorNode.index) is not a rebuildable tensor") }
        var pidItems = Array(items.prefix(5))
        pidItems[2] = add(.string(key))
        let units = t.storage.dtype == nil ? numel * Int64(t.dtype.itemSize) : numel  // untyped storages count bytes
        pidItems[4] = add(.int(units))
        args[0] = add(.persistent(pid: add(.tuple(pidItems))))
        args[1] = add(.int(0))
        var strides = [Int64](repeating: 1, count: t.shape.count)
        var step: Int64 = 1
        for i in stride(from: t.shape.count - 1, through: 0, by: -1) {
            strides[i] = step
            step = step &* max(t.shape[i], 1)
        }
        args[3] = add(.tuple(strides.map { add(.int($0)) }))
        o.args = add(.tuple(args))
        self[t.tensorNode] = .object(o)
    }
}
