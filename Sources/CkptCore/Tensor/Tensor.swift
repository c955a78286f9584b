/// A storage as the pickle names it: `('storage', <storage type>, key, location, numel)`.
/// Its bytes stay in the container; only this reference passes through the graph.
public struct StorageRef: Hashable, Sendable {
    /// The record key: the storage's bytes are in `data/<key>`.
    public var key: String
    /// The storage class global's module and name (`torch`, `HalfStorage`); kept apart so that parsing the
    /// thousands of storages of a checkpoint builds no string.
    public var storageModule: String
    public var storageName: String
    /// The storage class global, e.g. `torch.HalfStorage` or `torch.storage.UntypedStorage`.
    public var storageClass: String { storageModule.isEmpty ? storageName : storageModule + "." + storageName }
    /// The dtype of a typed storage; nil for `UntypedStorage` (bytes; the tensor carries the dtype).
    public var dtype: DType?
    /// Device the storage was saved from ('cpu', 'cuda:0'), kept as written.
    public var location: String
    /// Element count in units of the storage class (bytes for untyped storage).
    public var numel: Int64

    /// Bytes the storage holds: numel x element size, or nil on overflow.
    public var byteCount: Int64? {
        let size = Int64(dtype?.itemSize ?? 1)
        let (v, o) = numel.multipliedReportingOverflow(by: size)
        return o ? nil : v
    }
}

extension StorageRef {
    /// A storage reference from the storage class's dotted name (`torch.FloatStorage`).
    public init(key: String, storageClass: String, dtype: DType?, location: String, numel: Int64) {
        let dot = storageClass.lastIndex(of: ".")
        self.init(key: key, storageModule: dot.map { String(storageClass[..<$0]) } ?? "",
                  storageName: dot.map { String(storageClass[storageClass.index(after: $0)...]) } ?? storageClass,
                  dtype: dtype, location: location, numel: numel)
    }
}

/// A tensor in the graph, parsed from `_rebuild_tensor_v2` / `_v3` / `_rebuild_tensor`, possibly
/// wrapped by `_rebuild_parameter`.
public struct TensorRef: Hashable, Sendable {
    /// The node that is the tensor as its container holds it (the parameter node for a parameter).
    public var node: NodeID
    /// The `_rebuild_tensor*` node itself.
    public var tensorNode: NodeID
    /// The persistent-id node of its storage.
    public var storageNode: NodeID
    public var storage: StorageRef
    public var dtype: DType
    public var storageOffset: Int64
    public var shape: [Int64]
    public var stride: [Int64]
    public var requiresGrad: Bool
    /// Whether it is an `nn.Parameter`.
    public var isParameter: Bool

    /// Product of the shape, or nil on overflow or a negative size.
    public var numel: Int64? {
        var n: Int64 = 1
        for s in shape {
            guard s >= 0 else { return nil }
            let (v, o) = n.multipliedReportingOverflow(by: s)
            if o { return nil }
            n = v
        }
        return n
    }

    /// numel x element size, or nil on overflow.
    public var byteCount: Int64? {
        guard let n = numel else { return nil }
        let (v, o) = n.multipliedReportingOverflow(by: Int64(dtype.itemSize))
        return o ? nil : v
    }
}

extension TensorRef {
    /// The bytes of its storage the tensor reaches: from its first element to just past its last (empty for an
    /// empty tensor). Only meaningful for a tensor that passed ``check(name:recordBytes:)``.
    public var byteRange: Range<Int64> {
        let item = Int64(dtype.itemSize)
        let start = storageOffset * item
        guard let n = numel, n > 0 else { return start..<start }
        var last = storageOffset
        for (size, st) in zip(shape, stride) { last += (size - 1) * st }
        return start..<((last + 1) * item)
    }
}

/// A tensor that fails a shape check.
public struct TensorCheckError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The tensor's name (state_dict key or path in the checkpoint).
    public var tensor: String
    public var reason: String
    public var description: String { "tensor \(tensor): \(reason)" }
}

extension PickleGraph {
    /// Parses the storage behind a persistent-id node.
    public func storageRef(_ id: NodeID, viewsAllowed: Bool = false) -> StorageRef? {
        // zip files: 5 fields; legacy files: a sixth, the view metadata, None unless a storage view (which
        // LegacyReader turns into a storage of its own).
        guard case .persistent(let pid) = self[id], let t = sequence(pid),
              t.count == 5 || (t.count == 6 && (viewsAllowed || self[t[5]] == .none)),
              asciiText(t[0]) == "storage", case .global(let module, let name) = self[t[1]], let key = string(t[2]),
              let loc = asciiText(t[3]), let numel = int(t[4])
        else { return nil }
        let dtype: DType?
        // torch.load takes any `<X>Storage` name as that storage type; old torch pickled CUDA storages as
        // `torch.cuda.<X>Storage`.
        if module == "torch" || module == "torch.cuda" {
            dtype = DType.storageClasses[name]
        } else {
            let cls = module + "." + name
            dtype = DType(storageClass: cls.hasPrefix("torch.") ? String(cls.dropFirst(6)) : cls)
        }
        return StorageRef(key: key, storageModule: module, storageName: name, dtype: dtype, location: loc, numel: numel)
    }

    /// A str, or bytes decoded as ASCII: torch's `_maybe_decode_ascii`, which its persistent_load applies to a
    /// storage id's tag and location (`_codecs.encode('storage', 'latin1')` is read as 'storage').
    func asciiText(_ id: NodeID) -> String? {
        if let s = string(id) { return s }
        guard let b = bytesValue(id), b.allSatisfy({ $0 < 0x80 }) else { return nil }
        return String(decoding: b, as: UTF8.self)
    }

    /// The callable's global name when the node is an object.
    public func objectCallable(_ id: NodeID) -> String? {
        guard case .object(let o) = self[id] else { return nil }
        return globalName(o.callable)
    }

    /// Parses a tensor or parameter node; nil when the node is not a tensor torch's rebuild functions
    /// describe. Throws when it names a tensor rebuild function but its arguments are malformed.
    public func tensor(_ id: NodeID) throws(TensorCheckError) -> TensorRef? {
        // Every node a walk meets comes here: rule out non-tensors before building any string.
        guard case .object(let o) = self[id], case .global(let module, let name) = self[o.callable],
              module == "torch._utils", let kind = Self.rebuildKind(name)
        else { return nil }
        let args = sequence(o.args) ?? []
        func fail(_ r: String) -> TensorCheckError { TensorCheckError(tensor: "#\(id.index)", reason: r) }
        switch kind {
        case .parameter:
            // The wrapped tensor is a rebuilt tensor, never another parameter (which also bounds the recursion).
            guard args.count >= 2, case .object(let io) = self[args[0]], case .global(let im, let iname) = self[io.callable],
                  !(im == "torch._utils" && iname.hasPrefix("_rebuild_parameter")),
                  var inner = try tensor(args[0]) else { throw fail("malformed parameter") }
            inner.node = id
            inner.isParameter = true
            if case .bool(let rg) = self[args[1]] { inner.requiresGrad = rg }
            return inner
        case .tensor:
            let isV3 = name == "_rebuild_tensor_v3"
            guard args.count >= 4 else { throw fail("torch._utils.\(name) with \(args.count) arguments") }
            guard let storage = storageRef(args[0]) else { throw fail("storage reference is malformed") }
            guard let offset = int(args[1]) else { throw fail("storage offset is not an integer") }
            guard let shapeIDs = sequence(args[2]), let strideIDs = sequence(args[3]) else {
                throw fail("size or stride is not a tuple")
            }
            let shape = shapeIDs.compactMap { int($0) }, stride = strideIDs.compactMap { int($0) }
            guard shape.count == shapeIDs.count, stride.count == strideIDs.count else {
                throw fail("size or stride holds a non-integer")
            }
            var dtype = storage.dtype
            if isV3 {
                guard args.count >= 7, let name = globalName(args[6]) else { throw fail("v3 tensor without a dtype") }
                guard let d = DType(torchGlobal: name) else { throw fail("unknown dtype \(name)") }
                guard storage.dtype == nil || storage.dtype == d else { throw fail("dtype \(d) on \(storage.storageClass)") }
                dtype = d
            }
            guard let dt = dtype else { throw fail("unknown storage type \(storage.storageClass)") }
            var rg = false
            let rgIndex = name == "_rebuild_qtensor" ? 5 : 4  // qtensor: (storage, offset, size, stride, qparams, rg, hooks)
            if args.count > rgIndex, case .bool(let b) = self[args[rgIndex]] { rg = b }
            return TensorRef(node: id, tensorNode: id, storageNode: args[0], storage: storage, dtype: dt,
                             storageOffset: offset, shape: shape, stride: stride, requiresGrad: rg, isParameter: false)
        }
    }

    /// What a `torch._utils` rebuild function makes: a parameter (which wraps a tensor) or a tensor; nil for
    /// every other name.
    enum RebuildKind { case parameter, tensor }

    static func rebuildKind(_ name: String) -> RebuildKind? {
        switch name {
        case "_rebuild_parameter", "_rebuild_parameter_with_state": return .parameter
        case "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_tensor", "_rebuild_qtensor": return .tensor
        default: return nil
        }
    }

    /// Whether a node is a call of one of torch's tensor rebuild functions (what ``tensor(_:)`` parses or refuses),
    /// found without parsing it.
    func isTensorNode(_ id: NodeID) -> Bool {
        guard case .object(let o) = self[id], case .global(let module, let name) = self[o.callable],
              module == "torch._utils" else { return false }
        return Self.rebuildKind(name) != nil
    }
}

extension TensorRef {
    /// The shape checks every tensor passes before it is written: as many strides as dims, nothing
    /// negative, an overflow-checked extent inside the storage, and (for typed storages) a known
    /// dtype. `recordBytes` is the size of the storage's record in the container, when known:
    /// it must equal the storage's numel x element size.
    public func check(name: String, recordBytes: Int64?) throws(TensorCheckError) {
        func fail(_ r: String) -> TensorCheckError { TensorCheckError(tensor: name, reason: r) }
        guard stride.count == shape.count else {
            throw fail("\(shape.count) dims but \(stride.count) strides")
        }
        guard storageOffset >= 0 else { throw fail("negative storage offset \(storageOffset)") }
        if let s = shape.first(where: { $0 < 0 }) { throw fail("negative size \(s)") }
        if let s = stride.first(where: { $0 < 0 }) { throw fail("negative stride \(s)") }
        guard storage.numel >= 0 else { throw fail("negative storage size \(storage.numel)") }
        guard let n = numel else { throw fail("element count of shape \(shape) overflows") }
        guard let storageBytes = storage.byteCount else { throw fail("storage byte count overflows") }
        // Extent in elements of the tensor's dtype.
        var extent: Int64 = storageOffset
        if n > 0 {
            for (size, st) in zip(shape, stride) {
                let (span, o1) = (size - 1).multipliedReportingOverflow(by: st)
                let (e, o2) = extent.addingReportingOverflow(span)
                guard !o1, !o2 else { throw fail("extent of shape \(shape) stride \(stride) overflows") }
                extent = e
            }
            let (e, o) = extent.addingReportingOverflow(1)
            guard !o else { throw fail("extent overflows") }
            extent = e
        }
        let (extentBytes, o) = extent.multipliedReportingOverflow(by: Int64(dtype.itemSize))
        guard !o else { throw fail("extent in bytes overflows") }
        // As torch's checkInBoundsForStorage: an empty tensor may sit anywhere (it reads nothing).
        guard n == 0 || extentBytes <= storageBytes else {
            throw fail("reaches byte \(extentBytes) of a \(storageBytes)-byte storage \(storage.key)")
        }
        if let r = recordBytes, r != storageBytes {
            throw fail("storage \(storage.key) declares \(storageBytes) bytes but its record holds \(r)")
        }
    }
}
