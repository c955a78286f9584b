import Foundation

/// A `torch.distributed.checkpoint` (DCP) folder, read as the state dict `dcp_to_torch_save` would `torch.save`
/// (torch/distributed/checkpoint/format_utils.py; the layout is in docs/formats-dcp-deepspeed.md §1).
///
/// - `FileSystemWriter` folders: `.metadata` (or, saved with `use_collectives=False`, one `__R.metadata` per rank)
///   is a pickle of `Metadata`, decoded by ``PickleDecoder`` (never run) and interpreted by ``DCPMetadata``. Each
///   item it lists is at `[offset, offset + length)` of its `relative_path`: a whole `torch.save` zip holding one
///   tensor chunk or one non-tensor value. With `serialization_format=SAFETENSORS` the data files are safetensors
///   files instead, holding each rank's chunks by name.
/// - `HuggingFaceStorageWriter(save_distributed=True)` folders: one `shard-0000R-model-00001-of-00001.safetensors`
///   per rank, whose `__metadata__.DCP_SHARDING_INFO` gives each chunk's offsets (``DCPHuggingFace``).
///
/// The graph is nested again through `planner_data` (``StateDictGraph/set(_:_:)``), in `state_dict_metadata` order;
/// tensors are storages of a ``GatheredSource`` whose chunks are located lazily, when first read.
enum DCPReader {
    /// The folder as a checkpoint, or nil when it is not a DCP folder.
    static func open(folder: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer? {
        if let files = metadataFiles(folder: folder) { return try openFileSystem(folder: folder, metadata: files, limits: limits) }
        if let shards = DCPHuggingFace.shards(folder: folder) { return try DCPHuggingFace.open(folder: folder, shards: shards) }
        return nil
    }

    /// The format as `info` names it.
    static let formatName = "torch.distributed.checkpoint (DCP)"

    /// The metadata files of a `FileSystemWriter` folder: `.metadata`, else the `__R.metadata` files
    /// (`_get_metadata_path`, filesystem.py) in rank order; nil when it has neither.
    static func metadataFiles(folder: String) -> [String]? {
        var st = stat()
        if stat(folder + "/.metadata", &st) == 0 { return [".metadata"] }
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return nil }
        let ranked = names.compactMap { n -> (Int, String)? in
            guard n.hasPrefix("__"), n.hasSuffix(".metadata") else { return nil }
            return Int(n.dropFirst(2).dropLast(9)).map { ($0, n) }
        }
        return ranked.isEmpty ? nil : ranked.sorted { $0.0 < $1.0 }.map(\.1)
    }

    /// Largest `.metadata` read (it is held in memory, as every pickle ckpt decodes).
    static let maxMetadataBytes: UInt64 = Checkpoint.maxPickleBytes

    /// Reads and decodes one metadata pickle; refuses globals outside the DCP allow-list.
    static func readBytes(_ path: String) throws(CheckpointError) -> [UInt8] {
        let name = (path as NSString).lastPathComponent
        let file = try FileRange.open(path)
        let size = try FileRange.size(file)
        guard size <= maxMetadataBytes else { throw .io("\(name) is \(size) bytes (the limit is \(maxMetadataBytes))") }
        return try FileRange.readBytes(file, at: 0, count: Int(size), what: name)
    }

    /// How torch's own loader unpickles a DCP folder (filesystem.py `FileSystemReader.read_metadata` / `read_data`,
    /// default_planner.py `load_bytes`), for `scan`.
    static let torchLoads = "torch.load does not read a folder: dcp.load and dcp_to_torch_save unpickle .metadata with "
        + "pickle.load (any global), non-tensor items with torch.load(weights_only=False), and tensor chunks with "
        + "torch.load(weights_only=True)"

    static func readMetadata(_ path: String, name: String, limits: PickleLimits) throws(CheckpointError) -> (bytes: [UInt8], meta: DCPMetadata) {
        let bytes = try readBytes(path)
        let graph: PickleGraph
        do { graph = try PickleDecoder.decode(bytes, limits: limits) } catch { throw .pickle(record: name, error) }
        for node in graph.nodes {
            guard case .global(let m, let n) = node else { continue }
            guard DCPMetadata.allowed(module: m, name: n) else {
                throw .notACheckpoint("\(name) names \(m).\(n), which is not one of the DCP metadata classes: "
                    + "it is not read (ckpt scan judges it)")
            }
        }
        return (bytes, try DCPMetadata(graph, file: name))
    }

    private static func openFileSystem(folder: String, metadata files: [String], limits: PickleLimits) throws(CheckpointError) -> OpenedContainer {
        var metas: [(name: String, bytes: [UInt8], meta: DCPMetadata)] = []
        for name in files {
            let (bytes, meta) = try readMetadata(folder + "/" + name, name: name, limits: limits)
            metas.append((name, bytes, meta))
        }
        var notes: [String] = []
        let meta: DCPMetadata
        if metas.count == 1 {
            meta = metas[0].meta
        } else {
            // use_collectives=False: each rank wrote its own plan. Merged in rank order as the global plan would be
            // (create_default_global_save_plan); a chunk two ranks both saved is read from the lower rank, as dedup
            // would have kept it. dcp_to_torch_save itself reads only __0.metadata (read_metadata(rank=0)).
            meta = try DCPMetadata.merging(metas.map { ($0.name, $0.meta) })
            notes.append("saved with use_collectives=False: \(files.count) per-rank metadata files merged in rank order "
                + "(dcp_to_torch_save reads only \(files[0]))")
        }
        return try DCPFolderReader(folder: folder, metadataFiles: metas.map { ($0.name, $0.bytes) }, meta: meta,
                                   notes: notes, limits: limits).opened()
    }
}

/// `Metadata` (torch/distributed/checkpoint/metadata.py) as read from its pickle: the items in order, the nesting,
/// and where each item is stored.
struct DCPMetadata {
    enum Item {
        case tensor(dtype: DType, size: [Int64], chunks: [(offsets: [Int64], sizes: [Int64])])
        case bytes
    }

    /// Where an item is stored: `_StorageInfo` (filesystem.py).
    struct Storage {
        var relativePath: String
        var offset: UInt64
        var length: UInt64
        var transforms: [String]
    }

    /// `MetadataIndex` as matched by the reader: fqn and chunk offsets (nil for bytes); `index` is only a hint.
    struct StorageKey: Hashable {
        var fqn: String
        var offsets: [Int64]?
    }

    /// `state_dict_metadata`, in its order.
    var items: [(fqn: String, item: Item)] = []
    /// `planner_data`: each flat name's path in the nested state dict (nil when saved without flattening).
    var planner: [String: [StateDictGraph.PathKey]]? = nil
    var storage: [StorageKey: Storage] = [:]
    var version: String? = nil

    static let module = "torch.distributed.checkpoint.metadata"

    /// The globals a `.metadata` pickle may name (docs/formats-dcp-deepspeed.md §3): the metadata dataclasses,
    /// `torch.Size`, dtypes, the layout and a checkpoint id path. Names only: nothing is imported or called.
    static func allowed(module m: String, name n: String) -> Bool {
        switch m {
        case module:
            return ["Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata", "TensorProperties",
                    "_MEM_FORMAT_ENCODING", "MetadataIndex", "StorageMeta"].contains(n)
        case "torch.distributed.checkpoint.filesystem": return n == "_StorageInfo"
        case "torch": return n == "Size" || DType(torchGlobal: "torch." + n) != nil
        case "torch.serialization": return n == "_get_layout"
        case "pathlib": return ["PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"].contains(n)
        default: return false
        }
    }

    init() {}

    /// Interprets the decoded `Metadata` pickle; anything else is refused naming what.
    init(_ g: PickleGraph, file: String) throws(CheckpointError) {
        let r = MetadataGraph(g: g, file: file)
        let top = try r.fields(g.root, "Metadata")
        guard let sdmID = top["state_dict_metadata"], let sdm = g.dictEntries(sdmID) else {
            throw r.bad("Metadata.state_dict_metadata is not a dict")
        }
        for e in sdm {
            guard let fqn = g.string(e.key) else { throw r.bad("a state_dict_metadata key is not a string") }
            let cls = r.className(e.value)
            if cls == DCPMetadata.module + ".BytesStorageMetadata" {
                _ = try r.fields(e.value, "BytesStorageMetadata")
                items.append((fqn, .bytes))
                continue
            }
            let f = try r.fields(e.value, "TensorStorageMetadata")
            guard let p = f["properties"], let s = f["size"], let c = f["chunks"] else {
                throw r.bad("TensorStorageMetadata of '\(fqn)' lacks properties, size or chunks")
            }
            let dtype = try r.dtype(p, fqn)
            let size = try r.sizes(s, "size of '\(fqn)'")
            guard let chunkIDs = g.sequence(c) else { throw r.bad("the chunks of '\(fqn)' are not a list") }
            var chunks: [(offsets: [Int64], sizes: [Int64])] = []
            for id in chunkIDs {
                let cf = try r.fields(id, "ChunkStorageMetadata")
                guard let o = cf["offsets"], let z = cf["sizes"] else { throw r.bad("a chunk of '\(fqn)' lacks offsets or sizes") }
                chunks.append((try r.sizes(o, "chunk offsets of '\(fqn)'"), try r.sizes(z, "chunk sizes of '\(fqn)'")))
            }
            items.append((fqn, .tensor(dtype: dtype, size: size, chunks: chunks)))
        }
        if let pd = top["planner_data"], !g.isNone(pd) {
            guard let entries = g.dictEntries(pd) else { throw r.bad("Metadata.planner_data is not a dict") }
            var planner: [String: [StateDictGraph.PathKey]] = [:]
            for e in entries {
                guard let fqn = g.string(e.key), let parts = g.sequence(e.value), !parts.isEmpty else {
                    throw r.bad("a planner_data entry is not a name and a non-empty tuple path")
                }
                var path: [StateDictGraph.PathKey] = []
                for p in parts {
                    if let s = g.string(p) { path.append(.key(s)) } else if case .int(let i) = g[p], i >= 0, i < 1 << 24 {
                        path.append(.index(Int(i)))
                    } else {
                        throw r.bad("the planner_data path of '\(fqn)' holds something other than str keys and list indices")
                    }
                }
                guard case .key = path[0] else { throw r.bad("the planner_data path of '\(fqn)' starts with a list index") }
                planner[fqn] = path
            }
            self.planner = planner
        }
        guard let sd = top["storage_data"], let storageEntries = g.dictEntries(sd) else {
            throw r.bad("Metadata.storage_data is not a dict")
        }
        for e in storageEntries {
            let k = try r.fields(e.key, "MetadataIndex")
            guard let fqnID = k["fqn"], let fqn = g.string(fqnID) else { throw r.bad("a MetadataIndex has no fqn") }
            var offsets: [Int64]? = nil
            if let id = k["offset"], !g.isNone(id) { offsets = try r.sizes(id, "MetadataIndex offset of '\(fqn)'") }
            let v = try r.fields(e.value, "_StorageInfo", module: "torch.distributed.checkpoint.filesystem")
            guard let pathID = v["relative_path"], let path = g.string(pathID),
                  let offID = v["offset"], let off = g.int(offID), off >= 0,
                  let lenID = v["length"], let len = g.int(lenID), len >= 0
            else { throw r.bad("the _StorageInfo of '\(fqn)' lacks relative_path, offset or length") }
            guard !path.isEmpty, !path.hasPrefix("/"), !path.split(separator: "/").contains(".."), !path.contains("\0") else {
                throw r.bad("item '\(fqn)' is stored in '\(path)', which is not a file inside the folder")
            }
            var transforms: [String] = []
            if let t = v["transform_descriptors"], !g.isNone(t) {
                guard let ts = g.sequence(t) else { throw r.bad("transform_descriptors of '\(fqn)' is not a list") }
                transforms = ts.map { g.string($0) ?? "?" }
            }
            let key = StorageKey(fqn: fqn, offsets: offsets)
            guard storage[key] == nil else { throw r.bad("item '\(fqn)' at \(offsets ?? []) is stored twice") }
            storage[key] = Storage(relativePath: path, offset: UInt64(off), length: UInt64(len), transforms: transforms)
        }
        if let v = top["version"], let s = g.string(v) { version = s }
    }

    /// The per-rank metadata of a `use_collectives=False` save as one: items in rank order, a tensor's chunks from
    /// every rank (one box saved by two ranks is kept from the first), the first rank's value of a bytes item.
    static func merging(_ metas: [(name: String, meta: DCPMetadata)]) throws(CheckpointError) -> DCPMetadata {
        var out = DCPMetadata()
        var position: [String: Int] = [:]
        for (name, m) in metas {
            for (fqn, item) in m.items {
                guard let i = position[fqn] else {
                    position[fqn] = out.items.count
                    out.items.append((fqn, item))
                    for (k, v) in m.storage where k.fqn == fqn { out.storage[k] = v }
                    continue
                }
                switch (out.items[i].item, item) {
                case (.bytes, .bytes): continue
                case (.tensor(let d0, let s0, var c0), .tensor(let d1, let s1, let c1)):
                    guard d0 == d1, s0 == s1 else {
                        throw .notACheckpoint("\(name): tensor '\(fqn)' is \(d1.rawValue) \(s1), another rank's metadata says \(d0.rawValue) \(s0)")
                    }
                    for c in c1 where !c0.contains(where: { $0.offsets == c.offsets && $0.sizes == c.sizes }) {
                        c0.append(c)
                        out.storage[StorageKey(fqn: fqn, offsets: c.offsets)] = m.storage[StorageKey(fqn: fqn, offsets: c.offsets)]
                    }
                    out.items[i].item = .tensor(dtype: d0, size: s0, chunks: c0)
                default:
                    throw .notACheckpoint("\(name): '\(fqn)' is a tensor in one rank's metadata and not in another's")
                }
            }
            if let p = m.planner { out.planner = (out.planner ?? [:]).merging(p) { a, _ in a } }
            if out.version == nil { out.version = m.version }
        }
        return out
    }

    /// Where a flat name goes in the nested state dict.
    func path(_ fqn: String) -> [StateDictGraph.PathKey] { planner?[fqn] ?? [.key(fqn)] }
}

/// Reading the dataclasses of a `.metadata` graph (NEWOBJ of the class, then BUILD with its `__dict__`).
private struct MetadataGraph {
    let g: PickleGraph
    let file: String

    func bad(_ why: String) -> CheckpointError { .notACheckpoint("\(file): \(why)") }

    func className(_ id: NodeID) -> String? {
        guard case .object(let o) = g[id] else { return nil }
        return g.globalName(o.callable)
    }

    /// The fields of an object of class `module.name` built as a dataclass is pickled (NEWOBJ with no arguments,
    /// then BUILD with a dict of str keys, or no BUILD for one without fields).
    /// The fields a class may have (dataclass fields, metadata.py and filesystem.py): any other one is refused, since
    /// it could change what an item means. `StorageMeta` (ids and module names) is not read.
    static let known: [String: Set<String>] = [
        "Metadata": ["state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"],
        "TensorStorageMetadata": ["properties", "size", "chunks"],
        "ChunkStorageMetadata": ["offsets", "sizes"],
        "BytesStorageMetadata": [],
        "MetadataIndex": ["fqn", "offset", "index"],
        "_StorageInfo": ["relative_path", "offset", "length", "transform_descriptors"],
    ]

    func fields(_ id: NodeID, _ name: String, module: String = DCPMetadata.module) throws(CheckpointError) -> [String: NodeID] {
        guard case .object(let o) = g[id], g.globalName(o.callable) == module + "." + name else {
            throw bad("expected a \(name), found \(describe(id))")
        }
        guard o.construction == .newObj, g.sequence(o.args)?.isEmpty == true, o.listItems.isEmpty, o.dictItems.isEmpty else {
            throw bad("\(name) is not built as a dataclass is pickled")
        }
        guard let s = o.state else { return [:] }
        guard let entries = g.dictEntries(s) else { throw bad("the state of a \(name) is not a dict") }
        var out: [String: NodeID] = [:]
        for e in entries {
            guard let k = g.string(e.key) else { throw bad("a field name of a \(name) is not a string") }
            if let allowed = Self.known[name], !allowed.contains(k) {
                throw bad("a \(name) has a field '\(k)' ckpt does not know")
            }
            out[k] = e.value
        }
        return out
    }

    func describe(_ id: NodeID) -> String {
        if let c = className(id) { return "an object of \(c)" }
        switch g[id] {
        case .none: return "None"
        case .dict: return "a dict"
        case .list: return "a list"
        case .tuple: return "a tuple"
        case .string(let s): return "the string '\(s.prefix(40))'"
        case .int(let i): return "the int \(i)"
        default: return "another value"
        }
    }

    /// A `torch.Size` (REDUCE of `torch.Size` with a tuple of ints) or a plain tuple or list of ints.
    func sizes(_ id: NodeID, _ what: String) throws(CheckpointError) -> [Int64] {
        var items = g.sequence(id)
        if case .object(let o) = g[id], g.globalName(o.callable) == "torch.Size", o.construction == .reduce,
           let args = g.sequence(o.args), args.count == 1
        {
            items = g.sequence(args[0])
        }
        guard let items else { throw bad("\(what) is not a torch.Size") }
        var out: [Int64] = []
        for i in items {
            guard case .int(let v) = g[i], v >= 0 else { throw bad("\(what) holds something other than sizes") }
            out.append(v)
        }
        return out
    }

    /// `TensorProperties.dtype`: the first item of its `__getstate__` tuple (metadata.py), or the `dtype` field of a
    /// dict state; a layout other than `torch.strided` is refused.
    func dtype(_ id: NodeID, _ fqn: String) throws(CheckpointError) -> DType {
        guard case .object(let o) = g[id], g.globalName(o.callable) == DCPMetadata.module + ".TensorProperties",
              o.construction == .newObj, let s = o.state
        else { throw bad("the properties of '\(fqn)' are not a TensorProperties") }
        var dtypeID: NodeID?, layoutID: NodeID?
        if let t = g.sequence(s), t.count == 5 {
            (dtypeID, layoutID) = (t[0], t[1])
        } else if let entries = g.dictEntries(s) {
            for e in entries {
                if g.string(e.key) == "dtype" { dtypeID = e.value }
                if g.string(e.key) == "layout" { layoutID = e.value }
            }
        }
        guard let d = dtypeID, let name = g.globalName(d), let dtype = DType(torchGlobal: name) else {
            throw bad("the dtype of '\(fqn)' is not a torch dtype")
        }
        if let l = layoutID, case .object(let lo) = g[l] {
            guard g.globalName(lo.callable) == "torch.serialization._get_layout", let a = g.sequence(lo.args), a.count == 1,
                  let layout = g.string(a[0]) else { throw bad("the layout of '\(fqn)' is not readable") }
            guard layout == "torch.strided" else { throw bad("tensor '\(fqn)' has layout \(layout); only torch.strided is read") }
        }
        return dtype
    }
}

/// The `FileSystemWriter` folder being opened: files, tensors, graph.
private struct DCPFolderReader {
    let folder: String
    let metadataFiles: [(name: String, bytes: [UInt8])]
    let meta: DCPMetadata
    var notes: [String]
    let limits: PickleLimits

    init(folder: String, metadataFiles: [(name: String, bytes: [UInt8])], meta: DCPMetadata, notes: [String],
         limits: PickleLimits)
    {
        self.folder = folder
        self.metadataFiles = metadataFiles
        self.meta = meta
        self.notes = notes
        self.limits = limits
    }

    func opened() throws(CheckpointError) -> OpenedContainer {
        // The data files, as the items name them (never guessed), in name order.
        let relPaths = Set(meta.storage.values.map(\.relativePath)).sorted { DCPNames.natural($0, $1) }
        for p in relPaths {
            var st = stat()
            guard stat(folder + "/" + p, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                let n = meta.storage.filter { $0.value.relativePath == p }.count
                throw .io("\(p) is missing: \(metadataFiles[0].name) lists \(n) item\(n == 1 ? "" : "s") stored in it")
            }
        }
        let files = try GatheredFiles(paths: relPaths.map { folder + "/" + $0 })
        let fileIndex = Dictionary(uniqueKeysWithValues: relPaths.enumerated().map { ($1, $0) })
        // In file and offset order, so that the item named for a damaged file is always the same.
        for (key, s) in meta.storage.sorted(by: { ($0.value.relativePath, $0.value.offset) < ($1.value.relativePath, $1.value.offset) }) {
            let what = "item '\(key.fqn)'" + (key.offsets.map { " at \($0)" } ?? "")
            if !s.transforms.isEmpty {
                throw .notACheckpoint("\(s.relativePath): \(what) was stored through \(s.transforms.joined(separator: ", "))"
                    + (s.transforms.contains { $0.contains("zstd") } ? " (zstd compression)" : "")
                    + ", which ckpt does not read")
            }
            try files.checkRange(fileIndex[s.relativePath]!, s.offset, s.length, what: what)
        }
        let kinds = DCPItemKinds(files: files)

        var sd = StateDictGraph()
        var tensors: [GatheredTensor] = []
        var checkedRecords: [CheckedRecord] = []  // the records of non-tensor items holding storages
        var chunkStorage: [[DCPMetadata.Storage]] = []
        var others: [(name: String, value: String)] = []
        var bytesItems: [(fqn: String, storage: DCPMetadata.Storage)] = []
        var chunkCounts: [(name: String, count: Int)] = []
        var modelBytes: Int64 = 0, optimizerBytes: Int64 = 0
        for (fqn, item) in meta.items {
            let path = meta.path(fqn)
            switch item {
            case .tensor(let dtype, let size, let chunks):
                let (numel, o) = size.reduce((Int64(1), false)) { acc, s in
                    let (p, o) = acc.0.multipliedReportingOverflow(by: s)
                    return (p, acc.1 || o)
                }
                let (bytes, o2) = numel.multipliedReportingOverflow(by: Int64(dtype.itemSize))
                guard !o, !o2 else { throw .notACheckpoint("tensor '\(fqn)': the element count of shape \(size) overflows") }
                var located: [DCPMetadata.Storage] = []
                for c in chunks {
                    guard let s = meta.storage[.init(fqn: fqn, offsets: c.offsets)] else {
                        throw .notACheckpoint("no storage_data entry holds the chunk of '\(fqn)' at \(c.offsets)")
                    }
                    located.append(s)
                }
                let t = GatheredTensor(name: fqn, dtype: dtype, shape: size,
                                       layout: .boxes(chunks.map { GatheredChunk(offsets: $0.offsets, sizes: $0.sizes) }))
                try t.checkCoverage()
                let node = sd.tensor(dtype: dtype, shape: size, storageKey: String(tensors.count))
                try sd.set(path, node)
                tensors.append(t)
                chunkStorage.append(located)
                chunkCounts.append((fqn, chunks.count))
                if DCPNames.isOptimizer(path) { optimizerBytes += bytes } else { modelBytes += bytes }
            case .bytes:
                guard let s = meta.storage[.init(fqn: fqn, offsets: nil)] else {
                    throw .notACheckpoint("no storage_data entry holds the non-tensor item '\(fqn)'")
                }
                let i = fileIndex[s.relativePath]!
                let what = "non-tensor item '\(fqn)'"
                let (g, z) = try DCPItems.readPickle(path: files.paths[i], name: s.relativePath, storage: s,
                                                     what: what, limits: limits)
                // A value holding tensors (saved with DefaultSavePlanner(flatten_state_dict=False), which stores every
                // top-level value that is not a tensor as one bytes item: a whole torch.save zip). Its storages are
                // records of that zip, served from their byte ranges; its graph is the value (dcp_to_torch_save
                // torch.loads the item).
                var renamed: [String: String] = [:]
                for id in g.nodes.indices {
                    guard case .persistent = g.nodes[id] else { continue }
                    let ref = try DCPItems.itemStorage(g, NodeID(id), zip: z, file: i, storage: s, what: what,
                                                       records: &checkedRecords)
                    guard renamed[ref.key] == nil else { continue }
                    renamed[ref.key] = String(tensors.count)
                    tensors.append(ref.tensor)
                    chunkStorage.append([])
                    let bytes = ref.tensor.numel * Int64(ref.tensor.dtype.itemSize)
                    if DCPNames.isOptimizer(path) { optimizerBytes += bytes } else { modelBytes += bytes }
                }
                var memo: [NodeID: NodeID] = [:]
                let node = sd.importing(g.root, from: g, memo: &memo) { renamed[$0] ?? $0 }
                try sd.set(path, node)
                others.append((fqn, DCPNames.repr(g, g.root)))
                bytesItems.append((fqn, s))
            }
        }

        // Chunks are located when first read: the nested zip's directory and data.pkl, or the safetensors header.
        let limits = limits
        var safetensorsReaders: [Int: SafetensorsReader] = [:]  // by file, of the safetensors blob of each file
        let tensorList = tensors
        let locate: (Int, Int) throws -> ChunkLocation = { t, c in
            let tensor = tensorList[t]
            guard case .boxes(let chunks) = tensor.layout else { throw CheckpointError.io("tensor \(t) has no chunks") }
            let s = chunkStorage[t][c]
            let fi = fileIndex[s.relativePath]!
            let label = "\(s.relativePath), chunk of '\(tensor.name)' at \(chunks[c].offsets)"
            if try kinds.isSafetensors(fi, s.offset) {
                // serialization_format=SAFETENSORS: the rank's chunks are one safetensors blob after the file's
                // non-tensor items, starting at each chunk's `offset` (filesystem.py _write_files_from_queue).
                if safetensorsReaders[fi] == nil || safetensorsReaders[fi]!.start != s.offset {
                    do { safetensorsReaders[fi] = try SafetensorsReader(path: files.paths[fi], from: s.offset) } catch {
                        throw CheckpointError.io("\(s.relativePath): the safetensors data at byte \(s.offset): \(error)")
                    }
                }
                return try DCPItems.locateSafetensors(safetensorsReaders[fi]!, file: fi, tensor: tensor, chunk: chunks[c],
                                                      label: label)
            }
            return try DCPItems.locateZip(path: files.paths[fi], file: fi, storage: s, tensor: tensor, chunk: chunks[c],
                                          label: label, limits: limits)
        }
        let source = GatheredSource(tensors: tensors, files: files, records: checkedRecords, locate: locate)

        let ranks = DCPNames.ranks(folder: folder, referenced: relPaths)
        // The variant, by the first chunk's bytes: a torch.save zip, or a safetensors header.
        let first = chunkStorage.first?.first
        let safetensorsData = try first.map { s throws(CheckpointError) in try kinds.isSafetensors(fileIndex[s.relativePath]!, s.offset) } ?? false
        let format = safetensorsData ? "torch.distributed.checkpoint (DCP, safetensors files)" : DCPReader.formatName
        let layout = DistributedLayout(format: format, worldSize: ranks, files: relPaths, chunks: chunkCounts,
                                       modelBytes: modelBytes, optimizerBytes: optimizerBytes, otherItems: others,
                                       notes: notes, torchLoads: DCPReader.torchLoads)
        let metaBytes = metadataFiles.reduce(UInt64(0)) { $0 + UInt64($1.bytes.count) }
        let scans: () -> [PickleScan] = { [metadataFiles, files, chunkStorage, tensorList] in
            var out = metadataFiles.map { PickleScanner.scan($0.bytes, label: $0.name, limits: limits) }
            for (fqn, s) in bytesItems {
                out += DCPItems.scanItem(path: folder + "/" + s.relativePath, storage: s, what: "'\(fqn)'", limits: limits)
            }
            for (t, tensor) in tensorList.enumerated() {
                guard case .boxes(let chunks) = tensor.layout else { continue }
                for (c, s) in chunkStorage[t].enumerated() where (try? kinds.isSafetensors(fileIndex[s.relativePath]!, s.offset)) != true {
                    out += DCPItems.scanItem(path: files.paths[fileIndex[s.relativePath]!], storage: s,
                                             what: "'\(tensor.name)' at \(chunks[c].offsets)", limits: limits)
                }
            }
            return out
        }
        var metadata: [(key: String, value: String)] = []
        if let v = meta.version { metadata.append(("version", v)) }
        return OpenedContainer(graph: sd.finished(plainDict: true), source: source, format: .distributed(format),
                               fileSize: metaBytes + files.sizes.reduce(0, +), recordCount: tensors.count,
                               byteOrder: nil, metadata: metadata, scanPickles: scans, distributed: layout)
    }
}

/// Whether the data at an item's offset is a safetensors blob (`serialization_format=SAFETENSORS`) rather than a
/// `torch.save` zip (`PK\x03\x04`): read once per (file, offset).
final class DCPItemKinds {
    let files: GatheredFiles
    private var known: [Int: [UInt64: Bool]] = [:]

    init(files: GatheredFiles) { self.files = files }

    func isSafetensors(_ file: Int, _ offset: UInt64) throws(CheckpointError) -> Bool {
        if let k = known[file]?[offset] { return k }
        let n = Int(min(16, files.sizes[file] - min(offset, files.sizes[file])))
        let handle = try files.handle(file)
        let head = try FileRange.readBytes(handle, at: offset, count: n, what: "\(files.names[file]) at byte \(offset)")
        let result = !head.starts(with: [0x50, 0x4B, 0x03, 0x04])
            && SafetensorsReader.looksLikeSafetensors(head: head, fileSize: files.sizes[file] - offset)
        known[file, default: [:]][offset] = result
        return result
    }
}

/// Reading the items of a `.distcp` file: each a whole `torch.save` zip at `[offset, offset + length)`.
enum DCPItems {
    /// Largest item pickle read (a chunk's data.pkl is a few hundred bytes; a non-tensor item's is its value).
    static let maxItemPickle: UInt64 = 256 << 20

    static func zip(path: String, name: String, storage s: DCPMetadata.Storage, what: String) throws(CheckpointError) -> ZipReader {
        do {
            return try ZipReader(path: path, window: s.offset..<(s.offset + s.length))
        } catch {
            throw .io("\(name): \(what) at bytes \(s.offset)..<\(s.offset + s.length) is not a torch.save zip: \(error.description)")
        }
    }

    /// The decoded data.pkl of an item, with its zip.
    static func readPickle(path: String, name: String, storage s: DCPMetadata.Storage, what: String,
                           limits: PickleLimits) throws(CheckpointError) -> (PickleGraph, ZipReader)
    {
        let z = try zip(path: path, name: name, storage: s, what: what)
        guard let pkl = z.entry(named: "data.pkl") else { throw .io("\(name): \(what) has no data.pkl") }
        let bytes: [UInt8]
        do { bytes = try z.readAll(pkl, limit: maxItemPickle) } catch { throw .io("\(name): \(what): \(error.description)") }
        do { return (try PickleDecoder.decode(bytes, limits: limits), z) } catch {
            throw .pickle(record: "\(name) (\(what)) \(pkl.name)", error)
        }
    }

    /// A storage of a non-tensor item's `torch.save` zip, as one gathered tensor: its record `data/<key>`, stored
    /// (uncompressed, as torch.save writes it), one byte run of the `.distcp` file, of the storage's dtype (bytes for
    /// an untyped storage) and element count. Its CRC-32 is checked before the storage is first read (a
    /// ``CheckedRecord`` appended to `records`).
    static func itemStorage(_ g: PickleGraph, _ id: NodeID, zip z: ZipReader, file: Int, storage s: DCPMetadata.Storage,
                            what: String, records: inout [CheckedRecord])
        throws(CheckpointError) -> (key: String, tensor: GatheredTensor)
    {
        func bad(_ why: String) -> CheckpointError { .io("\(s.relativePath): \(what): \(why)") }
        guard let ref = g.storageRef(id) else { throw bad("a persistent id that is not a torch storage") }
        let dtype = ref.dtype ?? .uint8
        guard let record = z.entry(named: "data/\(ref.key)") else { throw bad("its storage record data/\(ref.key) is missing") }
        let (bytes, o) = ref.numel.multipliedReportingOverflow(by: Int64(dtype.itemSize))
        guard ref.numel >= 0, !o, UInt64(bytes) == record.size else {
            throw bad("storage data/\(ref.key) is \(record.size) bytes, its \(ref.storageName) of \(ref.numel) needs \(bytes)")
        }
        let dataOffset: UInt64?
        do { dataOffset = try z.dataOffset(of: record) } catch { throw bad(error.description) }
        guard let start = dataOffset.map({ $0 + s.offset }) else { throw bad("its storage record data/\(ref.key) is compressed") }
        var checked: Int? = nil
        if record.hasChecksum {
            checked = records.count
            records.append(CheckedRecord(file: file, range: start..<(start + record.size), crc: record.crc32,
                                         label: "\(s.relativePath): \(what), record '\(record.name)'"))
        }
        let t = GatheredTensor(name: "\(what) storage \(ref.key)", dtype: dtype, shape: [ref.numel],
                               layout: .runs([ByteRun(file: file, offset: start, count: record.size, record: checked)]))
        try t.checkCoverage()
        return (ref.key, t)
    }

    /// Where a chunk stored as a `torch.save` zip item is: its data.pkl must be one tensor of the metadata's dtype
    /// and the chunk's sizes; its elements are read through the pickle's storage offset and strides.
    static func locateZip(path: String, file: Int, storage s: DCPMetadata.Storage, tensor: GatheredTensor,
                          chunk: GatheredChunk, label: String, limits: PickleLimits) throws(CheckpointError) -> ChunkLocation
    {
        let name = (path as NSString).lastPathComponent
        let what = "the chunk of '\(tensor.name)' at \(chunk.offsets)"
        let (g, z) = try readPickle(path: path, name: name, storage: s, what: what, limits: limits)
        func bad(_ why: String) -> CheckpointError { .tensor(TensorCheckError(tensor: tensor.name, reason: "\(label): \(why)")) }
        let ref: TensorRef?
        do { ref = try g.tensor(g.root) } catch { throw bad(error.reason) }
        guard let t = ref else { throw bad("the item is not one tensor") }
        guard t.dtype == tensor.dtype else { throw bad("the chunk is \(t.dtype.rawValue), the metadata says \(tensor.dtype.rawValue)") }
        guard t.shape == chunk.sizes else { throw bad("the chunk has shape \(t.shape), the metadata says \(chunk.sizes)") }
        guard let record = z.entry(named: "data/\(t.storage.key)") else { throw bad("its storage record data/\(t.storage.key) is missing") }
        do { try t.check(name: tensor.name, recordBytes: Int64(record.size)) } catch { throw bad(error.reason) }
        let dataOffset: UInt64?
        do { dataOffset = try z.dataOffset(of: record) } catch { throw bad(error.description) }
        guard let start = dataOffset.map({ $0 + s.offset }) else { throw bad("its storage record is compressed") }
        return ChunkLocation(file: file, base: start + UInt64(t.storageOffset) * UInt64(t.dtype.itemSize), strides: t.stride,
                             extent: start..<(start + record.size), label: "\(label), record '\(record.name)'",
                             checksum: record.hasChecksum ? record.crc32 : nil)
    }

    /// Where a chunk is in a safetensors `.distcp` (`serialization_format=SAFETENSORS`): the tensor of its name,
    /// whose `DCP_SHARDING_INFO` offsets, dtype and shape must be the chunk's.
    static func locateSafetensors(_ r: SafetensorsReader, file: Int, tensor: GatheredTensor, chunk: GatheredChunk,
                                  label: String) throws(CheckpointError) -> ChunkLocation
    {
        func bad(_ why: String) -> CheckpointError { .tensor(TensorCheckError(tensor: tensor.name, reason: "\(label): \(why)")) }
        guard let e = r.entries.first(where: { $0.name == tensor.name }) else { throw bad("the file holds no tensor of that name") }
        if let info = DCPHuggingFace.shardingInfo(r), let saved = info[tensor.name], saved != chunk.offsets {
            throw bad("the file's DCP_SHARDING_INFO puts it at \(saved)")
        }
        guard e.dtype == tensor.dtype else { throw bad("the chunk is \(e.dtype.rawValue), the metadata says \(tensor.dtype.rawValue)") }
        guard e.shape == chunk.sizes else { throw bad("the chunk has shape \(e.shape), the metadata says \(chunk.sizes)") }
        let at = r.start + e.offset
        return ChunkLocation(file: file, base: at, strides: StateDictGraph.contiguousStrides(e.shape),
                             extent: at..<(at + e.bytes), label: label)
    }

    /// The scans of an item's pickles (data.pkl and any other .pkl record), labelled with the file and byte range;
    /// an item that is no zip is one malformed scan.
    static func scanItem(path: String, storage s: DCPMetadata.Storage, what: String, limits: PickleLimits) -> [PickleScan] {
        let name = (path as NSString).lastPathComponent
        let label = "\(name)@\(s.offset) (\(what))"
        guard let z = try? ZipReader(path: path, window: s.offset..<(s.offset + s.length), lenient: true) else {
            return [PickleScanner.scan([], label: label + " (not a zip)", limits: limits)]
        }
        return ContainerPickles.records(of: z).compactMap { e in
            guard let b = try? z.readAll(e, limit: maxItemPickle, verifyCRC: false) else { return nil }
            return PickleScanner.scan(b, label: "\(label) \(e.name)", limits: limits)
        }
    }
}

/// `HuggingFaceStorageWriter(save_distributed=True)` folders (torch/distributed/checkpoint/hf_storage.py): per-rank
/// `shard-0000R-model-00001-of-00001.safetensors` files (R from 1), each holding that rank's chunks by name with
/// `__metadata__.DCP_SHARDING_INFO = {name: {"saved_offsets": [...]}}`; no `.metadata`. Read as
/// `HuggingFaceStorageReader.read_metadata` reads them: files in name order, each file's names in sorted order (what
/// `safe_open(...).keys()` gives); a tensor's global size is the largest offset + size over its chunks.
enum DCPHuggingFace {
    /// The shard files of a folder that is one (and not a Hugging Face model folder): every `.safetensors` file is
    /// named as `_gen_file_name` names a rank's shard (`shard-00001-model-00001-of-00001.safetensors`, _hf_utils.py),
    /// and none of a model folder's weights files is there. Their contents are checked when opened, so that a damaged
    /// one is refused by name.
    static func shards(folder: String) -> [String]? {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return nil }
        if names.contains(where: { InputPath.huggingFaceWeights.contains($0) }) { return nil }
        let st = names.filter { $0.hasSuffix(".safetensors") }
        guard !st.isEmpty, st.allSatisfy(isShardName) else { return nil }
        return st.sorted { DCPNames.natural($0, $1) }
    }

    /// `shard-<digits>-model-<digits>-of-<digits>.safetensors`.
    static func isShardName(_ name: String) -> Bool {
        let parts = name.dropLast(".safetensors".count).split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 6, parts[0] == "shard", parts[2] == "model", parts[4] == "of" else { return false }
        return [parts[1], parts[3], parts[5]].allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }
    }

    /// `__metadata__.DCP_SHARDING_INFO` as name -> saved offsets; nil when absent or unreadable.
    static func shardingInfo(_ r: SafetensorsReader) -> [String: [Int64]]? {
        guard let text = r.metadata.first(where: { $0.key == "DCP_SHARDING_INFO" })?.value,
              let json = try? JSONParser.parse(Array(text.utf8)), case .object(let pairs) = json else { return nil }
        var out: [String: [Int64]] = [:]
        for (name, v) in pairs {
            guard case .array(let offs)? = v["saved_offsets"] else { return nil }
            var o: [Int64] = []
            for x in offs {
                guard case .int(let i) = x, i >= 0 else { return nil }
                o.append(i)
            }
            out[name] = o
        }
        return out
    }

    static func open(folder: String, shards: [String]) throws(CheckpointError) -> OpenedContainer {
        let files = try GatheredFiles(paths: shards.map { folder + "/" + $0 })
        var order: [String] = []
        var found: [String: (dtype: DType, size: [Int64], chunks: [GatheredChunk])] = [:]
        for (fi, name) in shards.enumerated() {
            let r: SafetensorsReader
            do { r = try SafetensorsReader(path: files.paths[fi]) } catch { throw .io("\(name): \(error.description)") }
            // No DCP_SHARDING_INFO: every chunk at offset 0, as HuggingFaceStorageReader.read_metadata takes it.
            let hasInfo = r.metadata.contains { $0.key == "DCP_SHARDING_INFO" }
            guard let info = hasInfo ? shardingInfo(r) : [:] else {
                throw .notACheckpoint("\(name): its DCP_SHARDING_INFO is not readable")
            }
            for e in r.entries.sorted(by: { $0.name.unicodeScalars.lexicographicallyPrecedes($1.name.unicodeScalars) }) {
                guard let offsets = hasInfo ? info[e.name] : [Int64](repeating: 0, count: e.shape.count) else {
                    throw .notACheckpoint("\(name): tensor '\(e.name)' has no DCP_SHARDING_INFO entry")
                }
                guard offsets.count == e.shape.count else {
                    throw .notACheckpoint("\(name): tensor '\(e.name)' has \(e.shape.count) dimensions but \(offsets.count) saved offsets")
                }
                let chunk = GatheredChunk(offsets: offsets, sizes: e.shape,
                                          location: ChunkLocation(file: fi, base: e.offset,
                                                                  strides: StateDictGraph.contiguousStrides(e.shape),
                                                                  extent: e.offset..<(e.offset + e.bytes),
                                                                  label: "\(name), chunk of '\(e.name)' at \(offsets)"))
                let end = zip(offsets, e.shape).map { $0 + $1 }
                if var f = found[e.name] {
                    guard f.dtype == e.dtype, f.size.count == end.count else {
                        throw .notACheckpoint("\(name): tensor '\(e.name)' is \(e.dtype.rawValue) with \(end.count) dimensions, "
                            + "another rank saved it as \(f.dtype.rawValue) with \(f.size.count)")
                    }
                    f.size = zip(f.size, end).map { max($0, $1) }
                    f.chunks.append(chunk)
                    found[e.name] = f
                } else {
                    order.append(e.name)
                    found[e.name] = (e.dtype, end, [chunk])
                }
            }
        }
        var sd = StateDictGraph()
        var tensors: [GatheredTensor] = []
        var modelBytes: Int64 = 0, optimizerBytes: Int64 = 0
        for name in order {
            let f = found[name]!
            let t = GatheredTensor(name: name, dtype: f.dtype, shape: f.size, layout: .boxes(f.chunks))
            try t.checkCoverage()
            try sd.set([.key(name)], sd.tensor(dtype: f.dtype, shape: f.size, storageKey: String(tensors.count)))
            tensors.append(t)
            let bytes = t.numel * Int64(f.dtype.itemSize)
            if DCPNames.isOptimizer([.key(String(name.prefix { $0 != "." }))]) { optimizerBytes += bytes } else { modelBytes += bytes }
        }
        let format = "torch.distributed.checkpoint (DCP, Hugging Face save_distributed safetensors)"
        let layout = DistributedLayout(format: format, worldSize: shards.count, files: shards,
                                       chunks: order.map { ($0, found[$0]!.chunks.count) },
                                       modelBytes: modelBytes, optimizerBytes: optimizerBytes, otherItems: [],
                                       torchLoads: "torch.load does not read a folder: HuggingFaceStorageReader reads "
                                           + "the safetensors files, which hold no pickle")
        return OpenedContainer(graph: sd.finished(plainDict: true), source: GatheredSource(tensors: tensors, files: files),
                               format: .distributed(format), fileSize: files.sizes.reduce(0, +), recordCount: tensors.count,
                               byteOrder: nil, distributed: layout)
    }
}

/// Names and values of DCP folders, for `info`.
enum DCPNames {
    /// Numeric-aware name order (`__2_0` before `__10_0`).
    static func natural(_ a: String, _ b: String) -> Bool {
        a.compare(b, options: [.numeric, .literal]) == .orderedAscending
    }

    /// Whether an item is optimizer state: its path's first element (the state dict's top-level key, e.g. `optim`
    /// from `{"model": ..., "optim": get_state_dict(...)[1]}`) starts with `optim` (`optim`, `optimizer`,
    /// `optimizer_state`, ...). Everything else counts as the model's.
    static func isOptimizer(_ path: [StateDictGraph.PathKey]) -> Bool {
        guard case .key(let first)? = path.first else { return false }
        return first.lowercased().hasPrefix("optim")
    }

    /// Bytes as Python's `repr` writes them (`b'\\x80\\x04K\\x07.'`: CPython's bytes_repr quoting and escapes), the
    /// first 64 bytes.
    static func bytesRepr(_ b: [UInt8]) -> String {
        let quote: UInt8 = b.contains(0x27) && !b.contains(0x22) ? 0x22 : 0x27
        var out = "b" + String(UnicodeScalar(quote))
        for c in b.prefix(64) {
            switch c {
            case quote, 0x5C: out += "\\" + String(UnicodeScalar(c))
            case 0x09: out += "\\t"
            case 0x0A: out += "\\n"
            case 0x0D: out += "\\r"
            case 0x20..<0x7F: out.append(Character(UnicodeScalar(c)))
            default: out += "\\x" + (c < 16 ? "0" : "") + String(c, radix: 16)
            }
        }
        return out + (b.count > 64 ? "..." : "") + String(UnicodeScalar(quote))
    }

    /// The world size: ranks numbered in the `__R_N.distcp` names (`prepare_global_plan`'s `__{i}_` prefix) of the
    /// items and of the folder's other data files (a rank whose plan was emptied by dedup still writes one).
    static func ranks(folder: String, referenced: [String]) -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        var top = -1
        for n in Set(referenced + names.filter { $0.hasSuffix(".distcp") }) {
            let base = (n as NSString).lastPathComponent
            guard base.hasPrefix("__"), let r = Int(base.dropFirst(2).prefix { $0 != "_" }) else { continue }
            top = max(top, r)
        }
        return top + 1
    }

    /// A value as Python's `repr` writes it, shortened (`3`, `0.1`, `'x'`, `[1, 2.5, None]`, `{'lr': 0.1}`).
    static func repr(_ g: PickleGraph, _ id: NodeID, depth: Int = 0) -> String {
        guard depth < 6 else { return "..." }
        func items(_ ids: [NodeID]) -> String {
            ids.prefix(16).map { repr(g, $0, depth: depth + 1) }.joined(separator: ", ") + (ids.count > 16 ? ", ..." : "")
        }
        switch g[id] {
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let v): return String(v)
        case .float(let d): return d == d.rounded() && abs(d) < 1e16 ? String(format: "%.1f", d) : "\(d)"
        case .string(let s): return "'" + (s.count > 64 ? String(s.prefix(61)) + "..." : s) + "'"
        case .list(let ids): return "[" + items(ids) + "]"
        case .tuple(let ids): return "(" + items(ids) + (ids.count == 1 ? ",)" : ")")
        case .bytearray(let b): return "bytearray(" + bytesRepr(b) + ")"
        default:
            // A tensor inside a non-tensor item (saved with flatten_state_dict=False): its dtype and shape.
            if let t = (try? g.tensor(id)) ?? nil { return "<tensor \(t.dtype.rawValue) \(t.shape)>" }
            // bytes, also as protocol 2 pickles them: `_codecs.encode(str, 'latin1')`, which torch's weights_only
            // unpickler allows for this (torch/_weights_only_unpickler.py); read as data (``PickleGraph/bytesValue(_:)``).
            if let b = g.bytesValue(id) {
                return g.className(id)?.hasSuffix(".bytearray") == true ? "bytearray(" + bytesRepr(b) + ")" : bytesRepr(b)
            }
            if let entries = g.dictEntries(id) {
                return "{" + entries.prefix(16).map { repr(g, $0.key, depth: depth + 1) + ": " + repr(g, $0.value, depth: depth + 1) }
                    .joined(separator: ", ") + (entries.count > 16 ? ", ..." : "") + "}"
            }
            if case .object(let o) = g[id], let c = g.globalName(o.callable) { return "<\(c)>" }
            return "..."
        }
    }
}
