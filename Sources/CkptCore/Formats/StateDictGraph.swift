/// Builds the graph `torch.save` pickles for a state dict: an `OrderedDict` of tensors (what a format without a
/// pickle (safetensors, ONNX) or a merged set of shards presents to the rest of ckpt), or a nested dict of dicts,
/// lists, tensors and other values (a distributed checkpoint consolidated as its own tool would, ``set(_:_:)``).
///
/// A tensor is `_rebuild_tensor_v2(('storage', torch.<Type>Storage, key, 'cpu', numel), 0, size, stride, False,
/// OrderedDict())`; a dtype without a typed storage class (uint16/32/64, float8, ...) uses
/// `torch.storage.UntypedStorage` (numel in bytes) and `_rebuild_tensor_v3` with the dtype as a last argument, as
/// torch 2.x does. The strings `'storage'` and `'cpu'` are shared nodes, so the pickle memoizes them as torch's does.
struct StateDictGraph {
    private(set) var graph = PickleGraph()
    private let orderedDict: NodeID
    private let storageWord: NodeID
    private let cpu: NodeID
    private let rebuildV2: NodeID
    private let rebuildV3: NodeID
    private let untyped: NodeID
    private var globals: [String: NodeID] = [:]
    /// The containers being filled, by their placeholder node (a `.none` until ``finished()``): dicts with their
    /// entries and an index of their keys, lists with their items.
    private var dicts: [NodeID: (entries: [DictEntry], index: [PathKey: Int])] = [:]
    private var lists: [NodeID: [NodeID]] = [:]
    /// The top-level dict.
    private let top: NodeID

    /// One element of a value's path from the top level: a dict key (`str`, or an int key of a dict) or a list index.
    enum PathKey: Hashable, CustomStringConvertible {
        case key(String)
        case index(Int)
        var description: String {
            switch self {
            case .key(let s): s
            case .index(let i): String(i)
            }
        }
    }

    init() {
        var g = PickleGraph()
        orderedDict = g.add(.global(module: "collections", name: "OrderedDict"))
        storageWord = g.add(.string("storage"))
        cpu = g.add(.string("cpu"))
        rebuildV2 = g.add(.global(module: "torch._utils", name: "_rebuild_tensor_v2"))
        rebuildV3 = g.add(.global(module: "torch._utils", name: "_rebuild_tensor_v3"))
        untyped = g.add(.global(module: "torch.storage", name: "UntypedStorage"))
        top = g.add(.none)
        graph = g
        dicts[top] = ([], [:])
    }

    private mutating func global(_ module: String, _ name: String) -> NodeID {
        let k = module + "." + name
        if let id = globals[k] { return id }
        let id = graph.add(.global(module: module, name: name))
        globals[k] = id
        return id
    }

    /// Strides of a contiguous (row-major) tensor of this shape, as torch computes them (a size-0 or size-1 dim
    /// still gets the product of the sizes after it, each taken as at least 1).
    static func contiguousStrides(_ shape: [Int64]) -> [Int64] {
        var strides = [Int64](repeating: 1, count: shape.count)
        var acc: Int64 = 1
        for d in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[d] = acc
            acc = acc.multipliedReportingOverflow(by: max(shape[d], 1)).partialValue
        }
        return strides
    }

    /// Appends `name: tensor` whose bytes are the whole storage `key`: a contiguous tensor at offset 0.
    /// `numel` must not overflow (callers check shapes first).
    mutating func append(name: String, dtype: DType, shape: [Int64], storageKey key: String) {
        let tensor = tensor(dtype: dtype, shape: shape, storageKey: key)
        setTop(name, tensor)
    }

    /// A tensor node whose bytes are the whole storage `key`: a contiguous tensor at offset 0, as `torch.save` pickles
    /// it. `numel` must not overflow (callers check shapes first).
    mutating func tensor(dtype: DType, shape: [Int64], storageKey key: String) -> NodeID {
        let numel = shape.reduce(Int64(1)) { $0 * $1 }
        let typed = dtype.storageClass
        let storageClass = typed.map { global("torch", $0) } ?? untyped
        let storageNumel = typed != nil ? numel : numel * Int64(dtype.itemSize)
        let pidTuple = graph.add(.tuple([storageWord, storageClass, graph.add(.string(key)), cpu,
                                         graph.add(.int(storageNumel))]))
        let pid = graph.add(.persistent(pid: pidTuple))
        let size = graph.add(.tuple(shape.map { graph.add(.int($0)) }))
        let strides = graph.add(.tuple(Self.contiguousStrides(shape).map { graph.add(.int($0)) }))
        let hooks = graph.add(.object(PickleObject(construction: .reduce, callable: orderedDict, args: graph.add(.tuple([])))))
        var args = [pid, graph.add(.int(0)), size, strides, graph.add(.bool(false)), hooks]
        if typed == nil {
            let (module, name) = ("torch", dtype.rawValue)
            args.append(global(module, name))
        }
        return graph.add(.object(PickleObject(construction: .reduce, callable: typed != nil ? rebuildV2 : rebuildV3,
                                              args: graph.add(.tuple(args)))))
    }

    /// Appends a top-level entry of a flat state dict (as the flat readers always did: every call adds an entry).
    private mutating func setTop(_ name: String, _ value: NodeID) {
        let key = PathKey.key(name)
        if dicts[top]!.index[key] == nil { dicts[top]!.index[key] = dicts[top]!.entries.count }
        dicts[top]!.entries.append(DictEntry(key: graph.add(.string(name)), value: value))
    }

    /// Sets the value at `path` of the nested state dict, creating the dicts and lists on the way as torch's
    /// `set_element` does (torch/distributed/checkpoint/_traverse.py): the container under a key is a dict when the
    /// next path element is a `str`, a list when it is an int; lists are extended with None up to an index. A place
    /// that already holds a value (other than the None a list was extended with) is refused: torch's flattening never
    /// sends two items to one place, and its `set_element` would silently keep only the last.
    /// - Throws: when the path goes through a value that is not a container, or a list is given a `str` key
    ///   (where torch would fail too).
    mutating func set(_ path: [PathKey], _ value: NodeID) throws(CheckpointError) {
        guard !path.isEmpty else { throw .notACheckpoint("an item has an empty path") }
        func bad(_ why: String) -> CheckpointError {
            .notACheckpoint("item \(path.map(\.description).joined(separator: ".")): \(why)")
        }
        var current = top
        for i in 1..<path.count {
            let key = path[i - 1]
            let makeList: Bool = if case .index = path[i] { true } else { false }
            let existing = try child(current, key, bad)
            if let e = existing, dicts[e] != nil || lists[e] != nil {
                current = e
            } else if existing == nil || graph.isNone(existing!) {
                let made = graph.add(.none)
                if makeList { lists[made] = [] } else { dicts[made] = ([], [:]) }
                try put(current, key, made, bad)
                current = made
            } else {
                throw bad("\(key) holds a value, not a dict or list")
            }
        }
        try put(current, path[path.count - 1], value, bad)
    }

    /// The value under `key` of container `c`, nil when absent.
    private func child(_ c: NodeID, _ key: PathKey, _ bad: (String) -> CheckpointError) throws(CheckpointError) -> NodeID? {
        if let d = dicts[c] { return d.index[key].map { d.entries[$0].value } }
        guard case .index(let i) = key else { throw bad("the key '\(key)' indexes a list") }
        let items = lists[c]!
        return i < items.count ? items[i] : nil
    }

    private mutating func put(_ c: NodeID, _ key: PathKey, _ value: NodeID, _ bad: (String) -> CheckpointError) throws(CheckpointError) {
        if dicts[c] != nil {
            if let i = dicts[c]!.index[key] {
                // torch's flatten_state_dict gives every value its own path: two items at one place (a crafted
                // planner_data) would lose one of them, so the folder is refused rather than read with one missing.
                guard isFree(dicts[c]!.entries[i].value) else { throw bad("another item is already at this place") }
                dicts[c]!.entries[i].value = value
            } else {
                let k: NodeID = switch key {
                case .key(let s): graph.add(.string(s))
                case .index(let n): graph.add(.int(Int64(n)))
                }
                dicts[c]!.index[key] = dicts[c]!.entries.count
                dicts[c]!.entries.append(DictEntry(key: k, value: value))
            }
            return
        }
        guard case .index(let i) = key else { throw bad("the key '\(key)' indexes a list") }
        guard i >= 0, i < 1 << 24 else { throw bad("list index \(i) is out of range") }
        while lists[c]!.count <= i { lists[c]!.append(graph.add(.none)) }
        guard isFree(lists[c]![i]) else { throw bad("another item is already at this place") }
        lists[c]![i] = value
    }

    /// Whether a place holds nothing yet: None, and not a dict or list made on the way (those are None nodes until
    /// ``finished(plainDict:)`` fills them in).
    private func isFree(_ node: NodeID) -> Bool { graph.isNone(node) && dicts[node] == nil && lists[node] == nil }

    /// Copies a value of another graph (an item's own pickle) into this one (see ``PickleGraph/importing``).
    mutating func importing(_ node: NodeID, from other: PickleGraph, memo: inout [NodeID: NodeID]) -> NodeID {
        graph.importing(node, from: other, memo: &memo) { $0 }
    }

    /// Appends `name: <a tensor node of another graph>`, copying the nodes it reaches (sharing kept through
    /// `memo`) and renaming its storage keys with `renameKey`.
    mutating func append(name: String, importing node: NodeID, from other: PickleGraph, memo: inout [NodeID: NodeID],
                         renameKey: (String) -> String)
    {
        let copied = graph.importing(node, from: other, memo: &memo, renameStorageKey: renameKey)
        setTop(name, copied)
    }

    /// The finished graph: its root is the `OrderedDict` (or, with `plainDict`, the `dict` that `torch.save` of a
    /// `{}` pickles), nested dicts are dicts and lists are lists.
    func finished(plainDict: Bool = false) -> PickleGraph {
        var g = graph
        for (id, d) in dicts where id != top { g[id] = .dict(d.entries) }
        for (id, items) in lists { g[id] = .list(items) }
        let entries = dicts[top]!.entries
        if plainDict {
            g[top] = .dict(entries)
            g.root = top
        } else {
            var od = PickleObject(construction: .reduce, callable: orderedDict, args: g.add(.tuple([])))
            od.dictItems = entries
            g.root = g.add(.object(od))
        }
        return g
    }
}

extension PickleGraph {
    /// Copies the nodes reachable from `node` in `other` into this graph and returns the copy of `node`.
    /// Nodes met twice are copied once (`memo` maps other's ids to ours), so shared storages stay shared; the key of
    /// every storage persistent id is replaced by `renameStorageKey(key)`.
    mutating func importing(_ node: NodeID, from other: PickleGraph, memo: inout [NodeID: NodeID],
                            renameStorageKey: (String) -> String) -> NodeID
    {
        if let done = memo[node] { return done }
        // Iterative: reserve a node for every id first, then fill each in with remapped children.
        var order: [NodeID] = []
        var stack = [node]
        while let id = stack.popLast() {
            guard memo[id] == nil else { continue }
            memo[id] = add(.none)
            order.append(id)
            stack.append(contentsOf: other.children(of: id))
        }
        func m(_ id: NodeID) -> NodeID { memo[id]! }
        for id in order {
            let copy: PickleNode
            switch other[id] {
            case .tuple(let items): copy = .tuple(items.map(m))
            case .list(let items): copy = .list(items.map(m))
            case .set(let items): copy = .set(items.map(m))
            case .frozenset(let items): copy = .frozenset(items.map(m))
            case .dict(let entries): copy = .dict(entries.map { DictEntry(key: m($0.key), value: m($0.value)) })
            case .persistent(let pid):
                if let s = other.storageRef(id), let items = other.sequence(pid) {
                    var newItems = items.map(m)
                    newItems[2] = add(.string(renameStorageKey(s.key)))
                    copy = .persistent(pid: add(.tuple(newItems)))
                } else {
                    copy = .persistent(pid: m(pid))
                }
            case .object(let o):
                var c = o
                c.callable = m(o.callable)
                c.args = m(o.args)
                c.kwargs = o.kwargs.map(m)
                c.listItems = o.listItems.map(m)
                c.dictItems = o.dictItems.map { DictEntry(key: m($0.key), value: m($0.value)) }
                c.state = o.state.map(m)
                copy = .object(c)
            case let leaf: copy = leaf
            }
            self[m(id)] = copy
        }
        return m(node)
    }
}
