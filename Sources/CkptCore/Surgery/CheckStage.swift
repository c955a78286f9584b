extension Checkpoint {
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


/// The one stage between a surgery's steps and the writer: every tensor of the new graph is checked against the
/// storage it reads (shape, strides, offset, the record's size), storages are renumbered in order of first use with
/// their dtype conversions, and a plan whose weights would be empty is refused. A failed check names the tensor; no
/// plan, so nothing is written.
struct CheckStage {
    let checkpoint: Checkpoint

    /// Checks and renumbers `g`. `planned` holds storages a surgery made up (``Checkpoint/planTransfer(from:_:)``),
    /// checked after renumbering since they are no record of this checkpoint.
    func run(_ g: PickleGraph, conversions: [String: DType] = [:], planned: [String: OutputStorage] = [:])
        throws(CheckpointError) -> (graph: PickleGraph, storages: [OutputStorage], converted: Int)
    {
        if planned.isEmpty { try checkpoint.checkAll(g, againstRecords: true) }
        let out = try checkpoint.renumberStorages(g, conversions: conversions, planned: planned)
        if !planned.isEmpty { try checkpoint.checkAll(out.0) }
        return (out.0, out.1, out.2)
    }

    /// A strip's plan: ``run(_:conversions:planned:)``, then the weights it leaves counted. Never "0 parameters" from
    /// a file that holds tensors, unless --drop --force asked for it.
    func finish(_ state: SurgeryState, dropForced: Bool) throws(CheckpointError) -> SurgeryPlan {
        var report = state.report
        let (g, storages, converted) = try run(state.graph, conversions: state.conversions, planned: state.madeStorages)
        report.convertedStorages = state.conversions.count
        report.convertedTensors = converted
        var final = state
        final.graph = g
        let weights = final.weightsNode
        let view = try g.stateDict(weights)
        if view.isEmpty && !dropForced {
            let held = checkpoint.graph.tensorNodes(from: checkpoint.graph.root).count
            if held > 0 {
                try checkpoint.requireView([], of: weights, record: state.weightsName, in: g,
                                           doing: "strip counts as the weights")
                throw .invalidOperation("strip would leave no weights: \(state.weightsName.map { "'\($0)'" } ?? "the file") "
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
}
