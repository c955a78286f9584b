/// Builds the graph `torch.save` pickles for an `OrderedDict` of tensors: what a format without a pickle
/// (safetensors, ONNX) or a merged set of shards presents to the rest of ckpt.
///
/// A tensor is `_rebuild_tensor_v2(('storage', torch.<Type>Storage, key, 'cpu', numel), 0, size, stride, False,
/// OrderedDict())`; a dtype without a typed storage class (uint16/32/64, float8, ...) uses
/// `torch.storage.UntypedStorage` (numel in bytes) and `_rebuild_tensor_v3` with the dtype as a last argument, as
/// torch 2.x does. The strings `'storage'` and `'cpu'` are shared nodes, so the pickle memoizes them as torch's does.
struct StateDictGraph {
    private(set) var graph = PickleGraph()
    private var entries: [DictEntry] = []
    private let orderedDict: NodeID
    private let storageWord: NodeID
    private let cpu: NodeID
    private let rebuildV2: NodeID
    private let rebuildV3: NodeID
    private let untyped: NodeID
    private var globals: [String: NodeID] = [:]

    init() {
        var g = PickleGraph()
        orderedDict = g.add(.global(module: "collections", name: "OrderedDict"))
        storageWord = g.add(.string("storage"))
        cpu = g.add(.string("cpu"))
        rebuildV2 = g.add(.global(module: "torch._utils", name: "_rebuild_tensor_v2"))
        rebuildV3 = g.add(.global(module: "torch._utils", name: "_rebuild_tensor_v3"))
        untyped = g.add(.global(module: "torch.storage", name: "UntypedStorage"))
        graph = g
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
        let tensor = graph.add(.object(PickleObject(construction: .reduce, callable: typed != nil ? rebuildV2 : rebuildV3,
                                                    args: graph.add(.tuple(args)))))
        entries.append(DictEntry(key: graph.add(.string(name)), value: tensor))
    }

    /// Appends `name: <a tensor node of another graph>`, copying the nodes it reaches (sharing kept through
    /// `memo`) and renaming its storage keys with `renameKey`.
    mutating func append(name: String, importing node: NodeID, from other: PickleGraph, memo: inout [NodeID: NodeID],
                         renameKey: (String) -> String)
    {
        let copied = graph.importing(node, from: other, memo: &memo, renameStorageKey: renameKey)
        entries.append(DictEntry(key: graph.add(.string(name)), value: copied))
    }

    /// The finished graph: its root is the `OrderedDict`.
    func finished() -> PickleGraph {
        var g = graph
        var od = PickleObject(construction: .reduce, callable: orderedDict, args: g.add(.tuple([])))
        od.dictItems = entries
        g.root = g.add(.object(od))
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
