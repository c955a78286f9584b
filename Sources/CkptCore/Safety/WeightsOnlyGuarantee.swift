/// The promise of `strip --state-dict` and of every torch file `convert` writes: the output loads with
/// `torch.load(weights_only=True)`. Checked twice: on the output's graph while planning (``check(_:context:)``: names
/// the value and its path, `opt.evolve_population: pathlib.PosixPath`, before anything is written), and on the
/// encoded `data.pkl` bytes by the writer before the rename (``verifier(for:context:)``: the same opcode-by-opcode
/// replay of torch's weights_only unpickler that `ckpt scan` runs, ``PickleScanner``). The replay is the guarantee;
/// when it refuses, the temporary file is removed and nothing is written.
public enum WeightsOnlyGuarantee {
    /// The globals of `g` that weights_only does not resolve, each with the path of the value that names it (the first
    /// path the walk meets: dict keys, attribute names and list indices, dotted), in walk order, at most `limit`.
    static func refusedGlobals(_ g: PickleGraph, limit: Int = 8) -> [(path: String, global: String)] {
        var out: [(path: String, global: String)] = []
        var seen = [Bool](repeating: false, count: g.nodes.count)
        var stack: [(NodeID, String)] = [(g.root, "")]
        func join(_ p: String, _ part: String) -> String { p.isEmpty ? part : p + "." + part }
        func pushEntries(_ entries: [DictEntry], _ path: String, into next: inout [(NodeID, String)]) {
            for (i, e) in entries.enumerated() {
                let label = g.keyText(e.key) ?? "(key \(i))"
                next.append((e.key, join(path, label)))
                next.append((e.value, join(path, label)))
            }
        }
        while let top = stack.popLast(), out.count < limit {
            let (id, path) = top
            guard id.index < seen.count, !seen[id.index] else { continue }
            seen[id.index] = true
            var next: [(NodeID, String)] = []
            switch g[id] {
            case .global(let m, let n):
                if GlobalPolicy.weightsOnlyRefusal(m, n) != nil {
                    let (pm, pn) = GlobalPolicy.pythonName(m, n)
                    out.append((path.isEmpty ? "(top level)" : path, pm + "." + pn))
                }
            case .tuple(let items), .list(let items), .set(let items), .frozenset(let items):
                for (i, item) in items.enumerated() { next.append((item, join(path, String(i)))) }
            case .dict(let entries):
                pushEntries(entries, path, into: &next)
            case .object(let o):
                // What the object is made from is named by the object's own path.
                next.append((o.callable, path))
                if case .tuple(let args) = g[o.args] {
                    seen[o.args.index] = true
                    for a in args { next.append((a, path)) }
                } else {
                    next.append((o.args, path))
                }
                if let k = o.kwargs { next.append((k, path)) }
                for (i, item) in o.listItems.enumerated() { next.append((item, join(path, String(i)))) }
                pushEntries(o.dictItems, path, into: &next)
                if let s = o.state {
                    if let attrs = g.dictEntries(s) { seen[s.index] = true; pushEntries(attrs, path, into: &next) } else { next.append((s, path)) }
                }
            default:
                break
            }
            stack.append(contentsOf: next.reversed())
        }
        return out
    }

    /// Throws naming the first value of `g` whose class weights_only does not load, with its path. `context` says who
    /// promised (`--state-dict`, `convert`).
    static func check(_ g: PickleGraph, context: String) throws(CheckpointError) {
        guard let first = refusedGlobals(g, limit: 1).first else { return }
        throw .invalidOperation("\(context): the output would not load with torch.load(weights_only=True): "
            + "\(first.path): \(first.global) is not on its allow-list; nothing written")
    }

    /// What the writer runs over the encoded `data.pkl` of `g` before the output is renamed into place: the
    /// weights_only replay. Throws a ``CheckpointError`` naming the refused value's path (from `g`) and the replay's
    /// reason; the writer then removes its temporary file.
    public static func verifier(for g: PickleGraph, context: String) -> @Sendable ([UInt8]) throws -> Void {
        { bytes in
            let scan = PickleScanner.scan(bytes, label: "data.pkl")
            let why = scan.weightsOnlyRefusal ?? scan.error.map { "the pickle does not parse: \($0)" }
            guard let why else { return }
            let at = refusedGlobals(g, limit: 1).first.map { "\($0.path): \($0.global); " } ?? ""
            throw CheckpointError.invalidOperation("\(context): the output would not load with torch.load(weights_only=True) "
                + "(\(at)the replay of its unpickler: \(why)); nothing written")
        }
    }
}
