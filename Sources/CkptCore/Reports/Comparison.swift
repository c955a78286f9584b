/// Renames tensors by prefix so two checkpoints whose names differ can be compared: `ckpt diff best.pt best.onnx
/// --map OLD=NEW` applies the map to the second file's names (B's), so an exporter's or a wrapper's names line up
/// with the first file's.
///
/// Each name that starts with some pair's `old` has that prefix replaced by the pair's `new`; when several pairs
/// match, the one with the longest `old` wins (so `--map =model. --map head.=model.24.` works as read). An empty
/// `old` matches every name (adds a prefix); an empty `new` strips `old` (`--map module.=` drops DDP's prefix).
/// Names no pair matches stay. Order is kept.
///
/// - Returns: the renamed tensors and, for each pair in `map`, how many names it renamed (a pair that renames
///   nothing is probably a typo: callers should warn).
/// - Throws: ``CheckpointError/invalidOperation(_:)`` when two names become one.
public func renamedForComparison(_ tensors: [NamedTensor], map: [(old: String, new: String)])
    throws(CheckpointError) -> (tensors: [NamedTensor], hits: [Int])
{
    var hits = [Int](repeating: 0, count: map.count)
    var out: [NamedTensor] = []
    out.reserveCapacity(tensors.count)
    var taken: [String: String] = [:]
    for var t in tensors {
        let original = t.name
        var best: Int?
        for (i, pair) in map.enumerated() where t.name.hasPrefix(pair.old) {
            if best == nil || pair.old.count > map[best!].old.count { best = i }
        }
        if let i = best {
            t.name = map[i].new + t.name.dropFirst(map[i].old.count)
            hits[i] += 1
        }
        if let other = taken[t.name] {
            throw .invalidOperation("--map makes \(other) and \(original) both \(t.name)")
        }
        taken[t.name] = original
        out.append(t)
    }
    return (out, hits)
}
