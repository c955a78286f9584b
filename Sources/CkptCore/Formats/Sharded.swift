import Foundation

/// A Hugging Face sharded checkpoint, opened through its index (`pytorch_model.bin.index.json`,
/// `model.safetensors.index.json`): `{"metadata": {...}, "weight_map": {tensor name: shard file}}`, the shards
/// beside it. The shards read as one state dict: each shard's tensors in its own order, the shards in file-name
/// order (`-00001-of-00003` first), which is what loading the shards one after another and merging them gives.
/// Every weight_map entry must be in the shard it names; a name in two shards is refused.
final class ShardedCheckpoint: StorageSource {
    /// The opened shards, in order.
    let shards: [Checkpoint]
    /// Storage key of the merged graph -> (shard index, the shard's own key).
    let keys: [String: (shard: Int, key: String)]
    private let keyOrder: [String]

    /// Largest index file read.
    static let maxIndexBytes: UInt64 = 256 << 20

    private init(shards: [Checkpoint], keys: [String: (shard: Int, key: String)], keyOrder: [String]) {
        self.shards = shards
        self.keys = keys
        self.keyOrder = keyOrder
    }

    static func open(path: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer {
        func bad(_ why: String) -> CheckpointError { .invalidFile(format: "sharded checkpoint index", why) }
        let file = try FileRange.open(path)
        let size = try FileRange.size(file)
        guard size <= maxIndexBytes else { throw bad("the index is \(size) bytes (the limit is \(maxIndexBytes))") }
        let bytes = try FileRange.readBytes(file, at: 0, count: Int(size), what: "the index")
        let json: JSONValue
        do { json = try JSONParser.parse(bytes) } catch { throw bad("\(error)") }
        guard case .object(let wm)? = json["weight_map"] else { throw bad("it has no \"weight_map\" object") }
        let folder = (path as NSString).deletingLastPathComponent
        var shardNames: [String] = []
        var expected: [String: String] = [:]
        for (name, v) in wm {
            guard case .string(let file) = v else { throw bad("weight_map entry '\(name)' is not a file name") }
            guard !file.isEmpty, !file.hasPrefix("/"), !file.split(separator: "/").contains("..") else {
                throw bad("shard '\(file)' is not a file beside the index")
            }
            expected[name] = file
            if !shardNames.contains(file) { shardNames.append(file) }
        }
        shardNames.sort { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) }

        var shards: [Checkpoint] = []
        var merged = StateDictGraph()
        var keys: [String: (shard: Int, key: String)] = [:]
        var keyOrder: [String] = []
        var seen: [String: String] = [:]
        var formats: [ContainerFormat] = []
        var shardBytes: UInt64 = 0
        for (si, name) in shardNames.enumerated() {
            let shardPath = folder.isEmpty ? name : folder + "/" + name
            guard FileManager.default.fileExists(atPath: shardPath) else { throw bad("shard '\(name)' is missing") }
            let kind: ContainerKind
            do { kind = try ContainerKind.detect(path: shardPath) } catch { throw .io("shard \(name): \(error.description)") }
            guard ![.shardIndex, .onnx].contains(kind) else { throw bad("shard '\(name)' is not a torch or safetensors file") }
            let shard: Checkpoint
            do { shard = try Checkpoint(path: shardPath, limits: limits) } catch { throw .io("shard \(name): \(error.description)") }
            shards.append(shard)
            formats.append(shard.containerFormat)
            shardBytes += shard.fileSize
            let tensors: [NamedTensor]
            do { tensors = try shard.graph.stateDict(shard.graph.root, limits: limits) } catch {
                throw .io("shard \(name): \(error.description)")
            }
            var memo: [NodeID: NodeID] = [:]
            var renamed: [String: String] = [:]  // this shard's storage keys -> merged keys "0", "1", ...
            for t in tensors {
                if let other = seen[t.name] { throw bad("tensor '\(t.name)' is in both \(other) and \(name)") }
                seen[t.name] = name
                merged.append(name: t.name, importing: t.tensor.node, from: shard.graph, memo: &memo) { key in
                    if let k = renamed[key] { return k }
                    let k = String(keyOrder.count)
                    keyOrder.append(k)
                    keys[k] = (si, key)
                    renamed[key] = k
                    return k
                }
            }
        }
        for (name, file) in expected.sorted(by: { $0.key < $1.key }) where seen[name] != file {
            throw bad(seen[name] == nil ? "tensor '\(name)' is not in its shard \(file)"
                                        : "tensor '\(name)' is in \(seen[name]!), not in \(file) as the index says")
        }
        let source = ShardedCheckpoint(shards: shards, keys: keys, keyOrder: keyOrder)
        var metadata: [(key: String, value: String)] = [("shards", shardNames.joined(separator: ", "))]
        if case .object(let m)? = json["metadata"] {
            for (k, v) in m {
                if case .string(let s) = v { metadata.append((k, s)) } else { metadata.append((k, v.rendered(indent: 0))) }
            }
        }
        // Every shard's pickles: the merged graph keeps only tensors, but loading the shards would run them all.
        let scans = {
            zip(shardNames, shards).flatMap { name, shard in
                shard.pickleScans.map { s in var s = s; s.label = "\(name): \(s.label)"; return s }
            }
        }
        return OpenedContainer(graph: merged.finished(), source: source,
                               format: .index(over: formats, shards: shards.count),
                               fileSize: size + shardBytes, recordCount: keyOrder.count, metadata: metadata,
                               scanPickles: scans)
    }

    private func locate(_ key: String) throws -> (Checkpoint, String) {
        guard let k = keys[key] else { throw CheckpointError.missingRecord("storage \(key)") }
        return (shards[k.shard], k.key)
    }

    func storageBytes(_ key: String) -> Int64? {
        guard let (s, k) = try? locate(key) else { return nil }
        return s.storageRecordBytes(k)
    }

    func stream(_ key: String, chunkSize: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let (s, k) = try locate(key)
        try s.streamStorage(k, chunkSize: chunkSize, body)
    }

    func read(_ key: String, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let (s, k) = try locate(key)
        try s.readStorage(k, at: offset, into: buffer)
    }

    var recordNames: [String] { shards.map(\.path) }

    func checksum(_ key: String) -> (record: String, crc: UInt32)? {
        guard let (s, k) = try? locate(key) else { return nil }
        return s.storageChecksum(k)
    }
}
