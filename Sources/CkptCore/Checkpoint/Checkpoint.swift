import Foundation

/// A checkpoint opened for reading: its container, its decoded pickle, and where each storage's
/// bytes are. Storage bytes are never loaded whole; they are streamed on request.
///
/// Every format opens into the same two parts (see ``StorageSource``): the graph and a storage source.
public final class Checkpoint {
    /// The path as given.
    public let path: String
    /// The file read: `path`, or the weights file a Hugging Face model folder names (see ``InputPath``).
    public let file: String
    /// The file's size in bytes.
    public let fileSize: UInt64
    /// The decoded `data.pkl`.
    public let graph: PickleGraph
    /// The zip's root folder (`best` for `best.pt`, `archive` for files saved to a buffer).
    public let root: String
    /// Number of records in a zip container; for the other formats, the number of storages.
    public let recordCount: Int
    /// Contents of `.format_version`, when present.
    public let formatVersion: String?
    /// Contents of `version`, when present.
    public let version: String?
    /// Contents of `byteorder`, when present.
    public let byteOrder: String?
    /// The container the checkpoint was read from.
    public let containerFormat: ContainerFormat
    /// ``containerFormat`` as text (`torch zip`, `TorchScript`, `torch legacy`, `safetensors`, `onnx`,
    /// `sharded <format> (N shards)`, ...), followed by `, from FILE` when the path is a folder that FILE was read from.
    public let format: String
    /// Metadata the format carries besides tensors: safetensors' `__metadata__`, an ONNX model's producer and
    /// opsets, a sharded index's `metadata` and shard files. Empty for torch files.
    public let metadata: [(key: String, value: String)]
    /// For a TorchScript archive (`torch.jit.save`), its other records, class declarations and constants; the
    /// graph is its data.pkl, whose module objects the state_dict view reads through those declarations.
    public let torchScript: TorchScriptArchive?
    /// For a Hugging Face Trainer `checkpoint-N/` folder, its files by role (weights, config, training state); nil for
    /// a file or a model folder without training state. Evidence for framework `hf-trainer`.
    public let trainerFolder: TrainerFolder?
    /// For a distributed checkpoint folder (DCP, DeepSpeed ZeRO), its layout; nil otherwise.
    public let distributed: DistributedLayout?
    /// Serves storage bytes by the keys the graph's persistent ids name.
    let source: any StorageSource
    /// What a raw pass over each pickle found (globals, weights_only verdict): `data.pkl` (and any other `.pkl`
    /// record) of a zip, the five pickles of a legacy file, every shard's for a sharded checkpoint; none for
    /// safetensors and ONNX. See ``ScanBuilder``.
    public private(set) lazy var pickleScans: [PickleScan] = scanPickles()
    /// The framework detected from the records, classes and folder files (``FrameworkConvention/detect(in:)``).
    public private(set) lazy var detectedFramework: DetectedFramework? = FrameworkConvention.detect(in: self)
    /// Set by ``useFramework(_:)`` (`--framework NAME`).
    var frameworkOverride: DetectedFramework?
    private let scanPickles: () -> [PickleScan]

    /// Largest `data.pkl` accepted (the pickle is held in memory; storages are not).
    public static let maxPickleBytes: UInt64 = 1 << 31

    /// Opens a checkpoint: a torch zip or legacy file, a `.safetensors` file, a sharded checkpoint's index
    /// (`pytorch_model.bin.index.json`, `model.safetensors.index.json`), an `.onnx` model, or a Hugging Face model
    /// folder (its weights file, as `from_pretrained` picks it). Formats other than torch's present the graph
    /// `torch.save` would write for their state dict. Nothing in a file is executed. A path that is no checkpoint
    /// (a FIFO, a device, an empty, HTML or text file, another folder) is refused with
    /// ``CheckpointError/wrongKind(_:)`` before it is read.
    public convenience init(path: String, limits: PickleLimits = PickleLimits()) throws(CheckpointError) {
        try self.init(path: path, limits: limits, part: false)
    }

    /// Opens a checkpoint; with `part`, also a file that is one part of a distributed folder (its reader opens them:
    /// ``DistributedFolder/refusePart(file:)`` refuses them otherwise).
    init(path: String, limits: PickleLimits, part: Bool) throws(CheckpointError) {
        self.path = path
        let file: String
        let c: OpenedContainer
        if let d = try DistributedFolder.open(path: path, limits: limits) {
            (file, c) = (path, d)
        } else {
            file = try InputPath.resolve(path)
            if !part { try DistributedFolder.refusePart(file: file) }
            c = try Self.open(file: file, limits: limits)
        }
        self.file = file
        graph = c.graph
        source = c.source
        containerFormat = c.format
        format = file == path ? c.format.description : "\(c.format), from \((file as NSString).lastPathComponent)"
        fileSize = c.fileSize
        root = c.root
        recordCount = c.recordCount
        formatVersion = c.formatVersion
        version = c.version
        byteOrder = c.byteOrder
        metadata = c.metadata
        scanPickles = c.scanPickles
        torchScript = c.torchScript
        distributed = c.distributed
        trainerFolder = file == path ? nil
            : TrainerFolder.read(folder: path, weightsFile: file,
                                 shards: (c.source as? ShardedCheckpoint)?.shards.map(\.file) ?? [])
        try validate(limits: limits)
    }

    private static func open(file: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer {
        switch try ContainerKind.detect(path: file) {
        case .zip: try Self.openZip(path: file, limits: limits)
        case .legacy: try Self.openLegacy(path: file, limits: limits)
        case .legacyTar: try LegacyTarReader.open(path: file, limits: limits)
        case .safetensors: try SafetensorsReader.open(path: file)
        case .shardIndex: try ShardedCheckpoint.open(path: file, limits: limits)
        case .onnx: try ONNXReader.open(path: file)
        }
    }

    private static func openLegacy(path: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer {
        let l = try LegacyReader(path: path, limits: limits)
        return OpenedContainer(graph: l.graph, source: l.table, format: .torchLegacy, fileSize: l.fileSize,
                               recordCount: l.table.order.count, scanPickles: { l.scans })
    }

    private static func openZip(path: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer {
        let zip: ZipReader
        do { zip = try ZipReader(path: path) } catch { throw .container(error) }
        guard let pkl = zip.entry(named: "data.pkl") else { throw .missingRecord("\(zip.root)/data.pkl") }
        func small(_ name: String) -> String? {
            guard let e = zip.entry(named: name), e.size < 4096,
                  let b = try? zip.readAll(e, limit: 4096) else { return nil }
            return String(decoding: b, as: UTF8.self)
        }
        let byteOrder = small("byteorder")
        if let order = byteOrder, order != "little" {
            throw .notACheckpoint("byte order '\(order)' is not supported (only little-endian)")
        }
        let bytes: [UInt8]
        do { bytes = try zip.readAll(pkl, limit: Self.maxPickleBytes) } catch { throw .container(error) }
        var graph: PickleGraph
        do { graph = try PickleDecoder.decode(bytes, limits: limits) } catch { throw .pickle(record: pkl.name, error) }
        var script: TorchScriptArchive? = nil
        if TorchScriptArchive.isTorchScript(zip) {
            let s = try TorchScriptArchive.read(zip, graph: graph, limits: limits)
            graph.scriptClasses = s.classes
            script = s
        }
        var others: [(label: String, bytes: [UInt8])] = []
        for e in ContainerPickles.records(of: zip) where e != pkl {
            do { others.append((e.name, try zip.readAll(e, limit: Self.maxPickleBytes))) } catch { throw .container(error) }
        }
        let scans = { [label = pkl.name] in
            [PickleScanner.scan(bytes, label: label, limits: limits)]
                + others.map { PickleScanner.scan($0.bytes, label: $0.label, limits: limits) }
        }
        return OpenedContainer(graph: graph, source: ZipStorageSource(zip), format: script == nil ? .torchZip : .torchScript,
                               fileSize: zip.fileSize, root: zip.root, recordCount: zip.entries.count,
                               formatVersion: small(".format_version"), version: small("version"),
                               byteOrder: byteOrder, scanPickles: scans, torchScript: script)
    }

    /// What torch.load checks before it builds a tensor, checked up front so that every command answers a bad
    /// file with one error instead of failing later: every persistent id is a storage of a type torch has,
    /// whose record exists and holds exactly the declared bytes, and every tensor passes
    /// ``TensorRef/check(name:recordBytes:)`` (strides, offsets, overflow, bounds). Also walks the state_dict
    /// view once, so that nesting past ``PickleLimits/maxNesting`` or memo abuse is refused at open by every command.
    ///
    /// Storages and tensors are found by one pass over the arena, reachable from the root or not: unpickling runs
    /// every opcode, so torch.load calls persistent_load and the tensor rebuild functions for each one it meets.
    func validate(limits: PickleLimits) throws(CheckpointError) {
        var checked = Set<String>()
        for (i, node) in graph.nodes.enumerated() {
            let id = NodeID(i)
            switch node {
            case .persistent:
                guard let s = graph.storageRef(id) else { throw .notACheckpoint("persistent id \(id) is not a torch storage") }
                guard checked.insert(s.key).inserted else { continue }
                guard s.dtype != nil || s.storageClass == "torch.storage.UntypedStorage" else {
                    throw .notACheckpoint("storage \(s.key) has type \(s.storageClass), which torch does not have")
                }
                guard let record = storageRecordBytes(s.key) else {
                    throw .missingRecord(root.isEmpty ? "storage \(s.key)" : "\(root)/data/\(s.key)")
                }
                guard s.numel >= 0, let declared = s.byteCount else {
                    throw .tensor(TensorCheckError(tensor: "storage \(s.key)", reason: "element count \(s.numel) is impossible"))
                }
                guard declared == record else {
                    throw .tensor(TensorCheckError(tensor: "storage \(s.key)",
                        reason: "declares \(s.numel) elements (\(declared) bytes) but its record holds \(record) bytes"))
                }
            case .object(let o):
                // A dict whose constructor call holds what this reader cannot turn into entries (see
                // PickleGraph.dictEntries) would be read as fewer entries than torch.load builds.
                if case .tuple(let a) = graph[o.args], !a.isEmpty, let why = graph.dictConstructorProblem(id) {
                    throw .notACheckpoint(why)
                }
                // Names are spelled only for a tensor that fails, not for the thousands that pass.
                do {
                    try graph.tensor(id)?.check(name: "", recordBytes: nil)
                } catch {
                    throw .tensor(TensorCheckError(tensor: try tensorName(id, limits: limits), reason: error.reason))
                }
            default:
                continue
            }
        }
        try graph.checkStateDictWalk(graph.root, limits: limits)
    }

    /// The path of a tensor node as ``PickleGraph/allTensors(from:limits:)`` names it (for an error message);
    /// `#N` when it is not reachable from the root.
    private func tensorName(_ id: NodeID, limits: PickleLimits) throws(CheckpointError) -> String {
        let named = try graph.allTensors(from: graph.root, limits: limits).first { $0.tensor.node == id || $0.tensor.tensorNode == id }
        guard let named else { return "\(id) (not reachable from the root)" }
        return named.name.isEmpty ? "at the top level" : named.name
    }

    /// Size in bytes of a storage's record, when it exists.
    public func storageRecordBytes(_ key: String) -> Int64? { source.storageBytes(key) }

    /// The zip record holding a storage's bytes, when the source keeps storages so (a torch zip)
    /// (``StorageSource/zipRecord(forStorage:)``).
    func zipRecord(forStorage key: String) -> ZipRecordHandle? { source.zipRecord(forStorage: key) }

    /// The stored byte ranges a storage is, with their CRC-32s, when the source keeps it so: what the torch writer
    /// copies inside the kernel (``StorageSource/storedPieces(forStorage:)``), and the source's words for a piece
    /// that fails its check.
    func storedPieces(forStorage key: String) throws -> [StoredPiece]? { try source.storedPieces(forStorage: key) }
    func corruptedPiece(_ name: String, declared: UInt32, actual: UInt32) -> Error {
        source.corruptedPiece(name, declared: declared, actual: actual)
    }

    /// Streams a storage's bytes in bounded chunks. Faults of this file are thrown as
    /// ``CheckpointError``; errors thrown by `body` pass through unchanged.
    public func streamStorage(_ key: String, chunkSize: Int = 1 << 20,
                              _ body: (UnsafeRawBufferPointer) throws -> Void) throws
    {
        struct BodyError: Error { var inner: any Error }
        do {
            try source.stream(key, chunkSize: chunkSize) { chunk in
                do { try body(chunk) } catch { throw BodyError(inner: error) }
            }
        } catch let b as BodyError {
            throw b.inner
        } catch {
            throw Self.sourceFault(error)
        }
    }

    /// A storage source's fault as a ``CheckpointError``.
    static func sourceFault(_ error: any Error) -> CheckpointError {
        switch error {
        case let c as CheckpointError: c
        case let z as ZipError: .container(z)
        default: .io("\(error)")
        }
    }

    /// Reads `buffer.count` bytes of a storage's record starting `offset` bytes into it: the random access
    /// that views of a storage need. Unlike ``streamStorage(_:chunkSize:_:)`` a part of a record is not CRC-checked.
    public func readStorage(_ key: String, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer)
        throws(CheckpointError)
    {
        guard offset >= 0 else { throw .io("negative offset \(offset) in storage \(key)") }
        do { try source.read(key, at: offset, into: buffer) } catch { throw Self.sourceFault(error) }
    }

    /// The CRC-32 a storage's zip record declares, when it declares one (other formats have none).
    public func storageChecksum(_ key: String) -> (record: String, crc: UInt32)? { source.checksum(key) }

    /// Every entry name in the container, in directory order.
    public var recordNames: [String] { source.recordNames }

    // MARK: - Records

    /// The top-level records when the checkpoint is a dict (`epoch`, `model`, ...), in order.
    /// Empty when the top level is a state dict or another value.
    public var records: [(name: String, node: NodeID)] {
        guard !isStateDict(graph.root), let entries = graph.dictEntries(graph.root) else { return [] }
        return entries.compactMap { e in graph.keyText(e.key).map { ($0, e.value) } }
    }

    /// Whether a node is a state dict: a dict whose values are all tensors (and at least one).
    public func isStateDict(_ id: NodeID) -> Bool {
        guard let entries = graph.dictEntries(id), !entries.isEmpty else { return false }
        return entries.allSatisfy { ((try? graph.tensor($0.value)) ?? nil) != nil }
    }

    /// The node `keys` lists by default: the first of the framework's weights records (``framework``; for files of
    /// no known framework `model`, else `ema` when `model` is None (Ultralytics), else `state_dict`, ...) that is not
    /// None, else the file itself.
    public func defaultRecord() -> (name: String?, node: NodeID) {
        let recs = records
        for n in conventions.weightsRecords {
            if let s = recs.first(where: { $0.name == n })?.node, graph[s] != .none { return (n, s) }
        }
        return (nil, graph.root)
    }

    /// A record by name; dotted names reach into nested dicts (`state_dict`, `meta.x`).
    public func record(named name: String) throws(CheckpointError) -> NodeID {
        if let r = records.first(where: { $0.name == name }) { return r.node }
        var node = graph.root
        for part in name.split(separator: ".") {
            guard let next = graph.lookup(node, String(part)) else {
                throw .noSuchRecord(name, available: records.map(\.name))
            }
            node = next
        }
        return node
    }
}
