/// `--state-dict`: the model's description travels with its weights. Run before ``ToStateDict``: when the weights
/// record is a module object (or holds module objects in dicts, lists and tuples), the attributes of each outermost
/// module that are not torch's bookkeeping and not part of the model's state go into one new top-level record,
/// ``recordName`` (`model_config`), beside the weights: YOLOv5's and Ultralytics' `yaml`, `names`, `nc`, `stride`,
/// `args`, `hyp`; timm's `pretrained_cfg` and `default_cfg`; torchvision's `inplanes`, `groups`; whatever else the
/// module's `__dict__` holds as data. Submodules are not described (their attributes are rebuilt by the top
/// module's constructor from what is described).
///
/// - The record holds the module's attributes as a dict, in `__dict__` order. When the weights record is a dict (or
///   the whole file) that holds modules, the record holds one such dict per module, keyed by its dotted path
///   (`model_config['model.G']`).
/// - A tensor attribute (YOLOv5's `stride`, `class_weights`) is carried as numbers: the nested lists of Python
///   numbers `tensor.tolist()` gives (floats for floating dtypes, ints, bools), read from its storage; one of more
///   than ``maxTensorElements`` elements, or of a dtype with no Python number (complex, quantized, float8), is left
///   out and said.
/// - An attribute that holds a module, a tensor or a storage inside it (a loss object with its weights, a list of
///   tensors) is part of the model's state, not its description: left out and said.
/// - The values are collected as they are; ``PlainData`` (which runs over every record after all steps) makes any
///   that `torch.load(weights_only=True)` refuses plain data, and lists each under its `model_config.` path.
/// - Existing records are untouched. If the file has a `model_config` record already, the description goes to the
///   first free name of `model_config_2`, `model_config_3`, ... and a warning names it. When the file is the module
///   itself (`torch.save(model)`), or a list or tuple holding it, there is no place for another record: the
///   description is not written, and a warning says what was not kept.
struct DescribeModel: SurgeryStep {
    static let recordName = "model_config"
    /// Most elements a tensor attribute may have to be carried as numbers.
    static let maxTensorElements: Int64 = 1 << 16
    /// Most nodes looked at inside one attribute when checking that it holds no module, tensor or storage.
    static let maxNodesChecked = 1 << 20

    func apply(_ state: SurgeryState, _ catalogue: StorageCatalogue) throws(CheckpointError) -> SurgeryState {
        var s = state
        let weights = s.weightsNode
        let modules = s.graph.outermostModules(weights, name: s.weightsName)
        guard !modules.isEmpty else { return s }
        var described: [(path: String, cls: String, entries: [DictEntry], names: [String])] = []
        for m in modules {
            let d = try describe(m.node, path: m.path, &s, catalogue)
            if !d.entries.isEmpty {
                let cls = s.graph.className(m.node) ?? "module"
                described.append((m.path, cls.split(separator: ".").last.map(String.init) ?? cls, d.entries, d.names))
            }
        }
        guard !described.isEmpty else { return s }
        let root = s.graph.root
        guard s.graph.dictEntries(root) != nil, s.graph.moduleFields(root) == nil else {
            let what = described.map { "\($0.path) (\($0.cls)): \($0.names.joined(separator: ", "))" }.joined(separator: "; ")
            let why = s.graph.moduleFields(root) != nil
                ? "the file is the module itself, and the state dict that replaces it has no place for"
                : "the file is \(weightsDescription(s.graph, root)), not a dict of records: it has no place for"
            s.report.warnings.append("the model's description is not kept: \(why) a \(Self.recordName) record (\(what))")
            return s
        }
        var name = Self.recordName
        var n = 2
        while s.hasRecord(name) {
            name = "\(Self.recordName)_\(n)"
            n += 1
        }
        if name != Self.recordName {
            s.report.warnings.append("a record named \(Self.recordName) is in the file already (kept as it is); "
                + "the model's description is in \(name)")
        }
        let single = described.count == 1 && modules.count == 1 && modules[0].node == weights
        let value: NodeID
        if single {
            value = s.graph.add(.dict(described[0].entries))
        } else {
            value = s.graph.add(.dict(described.map { d in
                DictEntry(key: s.graph.add(.string(d.path)), value: s.graph.add(.dict(d.entries)))
            }))
        }
        s.graph.appendRecord(name, value)
        let after = described.map { "\($0.path) (\($0.cls)): \($0.names.joined(separator: ", "))" }.joined(separator: "; ")
        s.report.recordChanges.append((name, "(new)", "the attributes of " + after))
        return s
    }

    /// The attributes of one module that describe it, and how each is listed (`stride (tensor as list)`).
    private func describe(_ module: NodeID, path: String, _ s: inout SurgeryState, _ catalogue: StorageCatalogue)
        throws(CheckpointError) -> (entries: [DictEntry], names: [String])
    {
        guard let fields = s.graph.moduleFields(module), !fields.isScript,
              let attributes = s.graph.dictEntries(fields.state) else { return ([], []) }
        var entries: [DictEntry] = []
        var names: [String] = []
        for e in attributes {
            guard let key = s.graph.string(e.key) else { continue }
            guard !Self.isTorchBookkeeping(key) else { continue }
            let where_ = "\(path).\(key)"
            if let t = (try? s.graph.tensor(e.value)) ?? nil {
                switch try numbers(t, name: where_, &s.graph, catalogue) {
                case .success(let list):
                    entries.append(DictEntry(key: e.key, value: list))
                    names.append("\(key) (tensor as numbers)")
                case .failure(let why):
                    s.report.warnings.append("\(Self.recordName): \(where_) left out: \(why)")
                }
                continue
            }
            if let part = s.graph.modelPart(in: e.value, limit: Self.maxNodesChecked) {
                s.report.warnings.append("\(Self.recordName): \(where_) left out: it holds \(part), "
                    + "part of the model's state rather than its description")
                continue
            }
            entries.append(e)
            names.append(key)
        }
        return (entries, names)
    }

    struct NotNumbers: Error { var why: String }

    /// A tensor attribute as the nested lists of Python numbers `tensor.tolist()` gives.
    private func numbers(_ t: TensorRef, name: String, _ g: inout PickleGraph, _ catalogue: StorageCatalogue)
        throws(CheckpointError) -> Result<NodeID, NotNumbers>
    {
        guard let count = t.numel, count <= Self.maxTensorElements else {
            return .failure(NotNumbers(why: "a tensor of \(t.numel.map(String.init) ?? "too many") elements (at most "
                + "\(Self.maxTensorElements) are carried as numbers)"))
        }
        guard Self.pythonNumber(t.dtype, [UInt8](repeating: 0, count: t.dtype.itemSize), at: 0) != nil else {
            return .failure(NotNumbers(why: "a \(t.dtype.rawValue) tensor, whose elements are no Python numbers"))
        }
        let bytes = try catalogue.elements(t, name)
        let size = t.dtype.itemSize
        guard bytes.count == Int(count) * size else {
            throw .tensor(TensorCheckError(tensor: name, reason: "read \(bytes.count) bytes for \(count) elements"))
        }
        var items: [NodeID] = []
        items.reserveCapacity(Int(count))
        for i in 0..<Int(count) {
            guard let v = Self.pythonNumber(t.dtype, bytes, at: i * size) else {
                return .failure(NotNumbers(why: "an element of this \(t.dtype.rawValue) tensor is no Python int"))
            }
            items.append(g.add(v))
        }
        guard let nested = PlainDecoders.nest(items, shape: t.shape.map { Int($0) }, fortran: false, in: &g) else {
            throw .tensor(TensorCheckError(tensor: name, reason: "its elements do not fill its shape"))
        }
        return .success(nested)
    }

    /// The element at `offset` as the Python number `tolist()` gives: float for floating dtypes, int, bool; nil for
    /// dtypes without one (complex, quantized, float8, bits) and for a uint64 past Int64.
    static func pythonNumber(_ dtype: DType, _ bytes: [UInt8], at offset: Int) -> PickleNode? {
        func load<T: FixedWidthInteger>(_: T.Type) -> T {
            var v: T = 0
            for i in 0..<MemoryLayout<T>.size { v |= T(truncatingIfNeeded: bytes[offset + i]) << (8 * i) }
            return v
        }
        switch dtype {
        case .float16: return .float(Double(Float16(bitPattern: load(UInt16.self))))
        case .bfloat16: return .float(Double(Float(bitPattern: UInt32(load(UInt16.self)) << 16)))
        case .float32: return .float(Double(Float(bitPattern: load(UInt32.self))))
        case .float64: return .float(Double(bitPattern: load(UInt64.self)))
        case .bool: return .bool(bytes[offset] != 0)
        case .uint8: return .int(Int64(bytes[offset]))
        case .int8: return .int(Int64(Int8(bitPattern: bytes[offset])))
        case .int16: return .int(Int64(Int16(bitPattern: load(UInt16.self))))
        case .uint16: return .int(Int64(load(UInt16.self)))
        case .int32: return .int(Int64(Int32(bitPattern: load(UInt32.self))))
        case .uint32: return .int(Int64(load(UInt32.self)))
        case .int64: return .int(Int64(bitPattern: load(UInt64.self)))
        case .uint64:
            let v = load(UInt64.self)
            return v <= UInt64(Int64.max) ? .int(Int64(v)) : nil
        default: return nil
        }
    }

    /// What torch's `nn.Module` keeps in every module's `__dict__` (torch/nn/modules/module.py, `Module.__init__` and
    /// `__setstate__`; `_backend` of torch < 1.0; `_compiled_call_impl` of `torch.compile`): never a description.
    static func isTorchBookkeeping(_ key: String) -> Bool {
        if bookkeeping.contains(key) { return true }
        return ["_forward_", "_backward_", "_state_dict_", "_load_state_dict_"].contains { key.hasPrefix($0) }
            && key.hasSuffix("hooks")
    }

    static let bookkeeping: Set<String> = [
        "training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_modules", "_is_full_backward_hook",
        "_backward_hooks", "_backward_pre_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
        "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_compiled_call_impl",
        "_backend", "_version",
    ]
}

extension PickleGraph {
    /// The module objects a weights value is or holds, outermost only, with their dotted paths as
    /// ``stateDictForm(_:name:depth:changes:limits:)`` names them: the value itself when it is a module, else the
    /// modules among a dict's values and a list's or tuple's items, at any depth (an optimizer state is not entered).
    func outermostModules(_ id: NodeID, name: String?, limits: PickleLimits = PickleLimits()) -> [(path: String, node: NodeID)] {
        var out: [(path: String, node: NodeID)] = []
        var seen = Set<NodeID>()
        func walk(_ id: NodeID, _ path: String?, _ depth: Int) {
            guard depth <= limits.maxNesting, seen.insert(id).inserted else { return }
            if moduleFields(id) != nil {
                out.append((path ?? "(top level)", id))
                return
            }
            if let items = sequence(id) {
                for (i, v) in items.enumerated() { walk(v, path.map { "\($0).\(i)" } ?? String(i), depth + 1) }
                return
            }
            guard let entries = dictEntries(id), !isOptimizerState(id) else {
                return
            }
            for e in entries {
                guard let k = keyText(e.key) else { continue }
                walk(e.value, path.map { "\($0).\(k)" } ?? k, depth + 1)
            }
        }
        walk(id, name, 0)
        return out
    }

    /// What in a value makes it part of a model's state rather than plain data: `a module`, `a tensor`, `a storage`
    /// (nil when it holds none of them). Looks at no more than `limit` nodes; past that, `more than N values`.
    func modelPart(in id: NodeID, limit: Int) -> String? {
        var seen = Set<NodeID>()
        var stack = [id]
        while let n = stack.popLast() {
            guard seen.insert(n).inserted else { continue }
            guard seen.count <= limit else { return "more than \(limit) values (not checked)" }
            if case .persistent = self[n] { return "a storage" }
            if moduleFields(n) != nil { return "a module" }
            if case .object(let o) = self[n], case .global(let m, let name) = self[o.callable], m == "torch._utils",
               name.hasPrefix("_rebuild_") {
                return "a tensor"
            }
            forEachChild(of: n) { stack.append($0) }
        }
        return nil
    }

    /// Adds a top-level record at the end of a dict root (a dict, or a dict type's object).
    mutating func appendRecord(_ name: String, _ value: NodeID) {
        let entry = DictEntry(key: add(.string(name)), value: value)
        settleDictItems(root)
        switch self[root] {
        case .dict(var entries):
            entries.append(entry)
            self[root] = .dict(entries)
        case .object(var o):
            o.dictItems.append(entry)
            self[root] = .object(o)
        default:
            break
        }
    }
}
