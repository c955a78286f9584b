/// How much of what a value holds its state_dict view shows: the tensors the pickle builds inside the value (every
/// tensor node reachable from it, once each) against the tensor nodes its view names. The view may be any list of
/// tensors of the same graph (the state_dict view of ``PickleGraph/stateDict(_:limits:)``, or another format's),
/// so the comparison is of node sets, never of counts alone: tied weights (one node, two names) count once.
public struct ViewCoverage: Sendable, Equatable {
    /// The record looked at; nil for the file's top level.
    public var record: String?
    /// Distinct tensors the pickle builds inside the value.
    public var built: Int
    /// Distinct tensors the view shows.
    public var shown: Int
    /// The tensor nodes built but not shown, in pickle order.
    public var missing: [NodeID]

    /// Whether the view shows every tensor the value holds.
    public var isComplete: Bool { missing.isEmpty }

    /// The line `keys` and `info` print on stderr when the view shows fewer tensors than the value holds:
    /// `note: 12 tensors are not in the state_dict view of 'model'; see --all` (the file's path stands for the
    /// top level). Always this form, whatever the count, so that scripts can match it.
    public func note(file: String) -> String? {
        guard !missing.isEmpty else { return nil }
        return "note: \(missing.count) tensors are not in the state_dict view of '\(record ?? file)'; see --all"
    }
}

extension PickleGraph {
    /// Every tensor node reachable from `start`, once each (the `_rebuild_tensor*` node; a parameter counts as the
    /// tensor it wraps): the tensors ``allTensors(from:limits:)`` lists, found by a plain walk over every edge
    /// (``forEachChild(of:)``) that does not look into a tensor, which is all that counting needs.
    public func tensorNodes(from start: NodeID) -> [NodeID] {
        // A bitmap over the arena and no paths: `keys` and `info` run this on every record they show.
        var seen = [Bool](repeating: false, count: nodes.count)
        var counted = [Bool](repeating: false, count: nodes.count)
        var out: [NodeID] = []
        var stack = [start]
        while let id = stack.popLast() {
            guard !seen[id.index] else { continue }
            seen[id.index] = true
            if isTensorNode(id) {
                // Checked at open; a node that does not parse counts as itself.
                let t = ((try? tensor(id)) ?? nil)?.tensorNode ?? id
                if !counted[t.index] { counted[t.index] = true; out.append(t) }
                continue
            }
            forEachChild(of: id) { if !seen[$0.index] { stack.append($0) } }
        }
        return out
    }

    /// Compares what the value at `start` holds with the tensors a view of it shows (see ``ViewCoverage``).
    public func coverage(of start: NodeID, record: String?, shown view: [TensorRef]) -> ViewCoverage {
        var shown = Set<NodeID>(minimumCapacity: view.count)
        for t in view { shown.insert(t.tensorNode) }
        let built = tensorNodes(from: start)
        return ViewCoverage(record: record, built: built.count, shown: shown.count,
                            missing: built.filter { !shown.contains($0) })
    }
}

extension Checkpoint {
    /// Refuses a view that shows nothing of a value that holds tensors: a rewrite from it would report success
    /// for work it did not do. `doing` says what the view is used for (`convert writes`); `g` is the graph the
    /// node is in (this checkpoint's by default, or a surgery's new graph).
    /// Returns what the view covers.
    @discardableResult
    func requireView(_ view: [TensorRef], of node: NodeID, record: String?, in g: PickleGraph? = nil,
                     doing: String) throws(CheckpointError) -> ViewCoverage
    {
        let g = g ?? graph
        let c = g.coverage(of: node, record: record, shown: view)
        guard view.isEmpty, c.built > 0 else { return c }
        let what = record.map { "record '\($0)'" } ?? "the file"
        throw .invalidOperation("\(what) (\(g.className(node) ?? kindDescription(g, node))) holds \(c.built) tensors but "
            + "none is in its state_dict view, which \(doing); see ckpt keys --all")
    }
}
