import Foundation

/// Reads the legacy (pre-1.6, `_use_new_zipfile_serialization=False`) torch format: pickles of the
/// magic number, the protocol version and sys_info, then the main pickle, then the list of storage
/// keys, then each storage as an int64 element count followed by its raw bytes.
final class LegacyReader {
    /// 0x1950a86a20f9469cfc6c, torch's legacy magic number.
    static let magic: [UInt8] = {
        guard case .bigInt(let b) = BigInt.node(littleEndian: BigInt.littleEndianBytes(decimal: "119547037146038801333356")!)
        else { return [] }
        return b
    }()
    let graph: PickleGraph
    /// Where each storage's bytes are.
    let table: FileStorageTable
    /// Raw scans of the five pickles.
    let scans: [PickleScan]
    let fileSize: UInt64

    /// Whether the file starts with the legacy magic-number pickle.
    static func looksLegacy(path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        let head = Array(h.readData(ofLength: 64))
        guard let r = try? PickleDecoder.decodePrefix(head, offset: 0) else { return false }
        if case .bigInt(let b) = r.graph[r.graph.root] { return b == magic }
        return false
    }

    init(path: String, limits: PickleLimits) throws(CheckpointError) {
        guard let h = FileHandle(forReadingAtPath: path) else { throw .io("cannot open for reading") }
        let size = (try? h.seekToEnd()) ?? 0
        fileSize = size
        let (g, storages, order, s) = try Self.parse(h, size: size, limits: limits)
        (graph, scans) = (g, s)
        table = FileStorageTable(handle: h, storages: storages, order: order)
    }

    private static func parse(_ h: FileHandle, size: UInt64, limits: PickleLimits) throws(CheckpointError)
        -> (PickleGraph, [String: (offset: UInt64, bytes: UInt64)], [String], [PickleScan])
    {
        // The pickles come first; read a growing prefix until all five decode.
        var prefixLength: UInt64 = min(size, 1 << 20)
        while true {
            try? h.seek(toOffset: 0)
            let prefix = Array(h.readData(ofLength: Int(prefixLength)))
            do {
                var pos = 0
                var graphs: [PickleGraph] = []
                for _ in 0..<5 {
                    let r = try PickleDecoder.decodePrefix(prefix, offset: pos, limits: limits)
                    graphs.append(r.graph)
                    pos = r.end
                }
                guard case .bigInt(let m) = graphs[0][graphs[0].root], m == magic else {
                    throw CheckpointError.notACheckpoint("legacy magic number is wrong")
                }
                guard graphs[1].int(graphs[1].root) == 1001 else {
                    throw CheckpointError.notACheckpoint("legacy protocol version is not 1001")
                }
                var graph = graphs[3]
                try Self.resolveStorageViews(&graph)
                let keysGraph = graphs[4]
                let keys = (keysGraph.sequence(keysGraph.root) ?? []).compactMap { keysGraph.string($0) }
                var types: [String: DType] = [:]
                for id in graph.reachable(from: graph.root) {
                    guard case .persistent(let pid) = graph[id] else { continue }
                    // A pickled module's class: ('module', <class>, source file, source); torch.load returns the
                    // class, so the node becomes the class's global, as the zip format pickles it.
                    if let t = graph.sequence(pid), t.count == 4, graph.string(t[0]) == "module",
                       case .global = graph[t[1]] {
                        graph[id] = graph[t[1]]
                        continue
                    }
                    guard let s = graph.storageRef(id) else {
                        throw CheckpointError.notACheckpoint("persistent id \(id) is not a torch storage")
                    }
                    types[s.key] = s.dtype ?? .uint8
                }
                let pickleEnd = pos
                var offset = UInt64(pos)
                var table: [String: (UInt64, UInt64)] = [:]
                for key in keys {
                    try? h.seek(toOffset: offset)
                    let countBytes = Array(h.readData(ofLength: 8))
                    guard countBytes.count == 8 else { throw CheckpointError.notACheckpoint("storage \(key) is cut short") }
                    var count: UInt64 = 0
                    for (i, b) in countBytes.enumerated() { count |= UInt64(b) << (8 * UInt64(i)) }
                    let item = UInt64(types[key]?.itemSize ?? 1)
                    let (bytes, o) = count.multipliedReportingOverflow(by: item)
                    guard !o, offset + 8 <= size, bytes <= size - offset - 8 else {
                        throw CheckpointError.notACheckpoint("storage \(key) is cut short")
                    }
                    table[key] = (offset + 8, bytes)
                    offset += 8 + bytes
                }
                let scans = PickleScanner.scanSequence(Array(prefix[..<pickleEnd]), count: 5, label: "pickle", limits: limits)
                return (graph, table.mapValues { (offset: $0.0, bytes: $0.1) }, keys, scans)
            } catch let e as PickleError {
                if case .truncated = e, prefixLength < size {
                    prefixLength = min(size, prefixLength * 4)
                    continue
                }
                throw .pickle(record: "legacy pickle", e)
            } catch let e as CheckpointError {
                throw e
            } catch {
                throw .io("\(error)")
            }
        }
    }

    /// torch 0.3 and 0.4 pickled a storage view (a storage that is part of another) as the root's persistent id
    /// with a sixth field `(view_key, offset, view_size)`; torch.load (`_legacy_load`) makes the view the elements
    /// `offset ..< offset + view_size` of the root, the first time it meets `view_key`. Each tensor on a view
    /// becomes, as `torch.save` would write it, a tensor on the root storage at `offset` more, after checking it
    /// lies inside the view (as `set_` checks); a view pickled other than as a tensor's storage is refused.
    static func resolveStorageViews(_ graph: inout PickleGraph) throws(CheckpointError) {
        // The view persistent nodes: node -> (view key, offset, size), the first (offset, size) of each key winning.
        var firstOfKey: [String: (offset: Int64, size: Int64)] = [:]
        var views: [NodeID: (offset: Int64, size: Int64)] = [:]
        for i in graph.nodes.indices {
            guard case .persistent(let pid) = graph.nodes[i], let t = graph.sequence(pid), t.count == 6,
                  let meta = graph.sequence(t[5]) else { continue }
            guard meta.count == 3, let key = graph.string(meta[0]), let offset = graph.int(meta[1]),
                  let size = graph.int(meta[2]), offset >= 0, size >= 0,
                  let rootNumel = graph.int(t[4]), offset <= rootNumel, size <= rootNumel - offset
            else { throw .notACheckpoint("storage view at persistent id #\(i) is malformed or outside its storage") }
            let v = firstOfKey[key] ?? (offset, size)
            firstOfKey[key] = v
            views[NodeID(i)] = v
        }
        guard !views.isEmpty else { return }
        var onViews: [(tensor: NodeID, view: (offset: Int64, size: Int64))] = []
        var tensorStorages = Set<NodeID>()
        for i in graph.nodes.indices {
            let id = NodeID(i)
            guard graph.isTensorNode(id), case .object(let o) = graph[id], let args = graph.sequence(o.args),
                  args.count >= 4, let v = views[args[0]] else { continue }
            onViews.append((id, v))
            tensorStorages.insert(args[0])
        }
        for id in graph.reachable(from: graph.root) where views[id] != nil && !tensorStorages.contains(id) {
            throw .notACheckpoint("storage view at persistent id \(id) is pickled as a storage, not as a tensor's; not read")
        }
        // Every view id becomes its root's id (the first five fields), in place.
        for id in views.keys {
            guard case .persistent(let pid) = graph[id], let t = graph.sequence(pid) else { continue }
            graph[id] = .persistent(pid: graph.add(.tuple(Array(t.prefix(5)))))
        }
        for (id, v) in onViews {
            guard var t = try? graph.tensor(id), case .object(var o) = graph[id], var args = graph.sequence(o.args) else {
                throw .notACheckpoint("tensor \(id) on a storage view is malformed")
            }
            // Checked against the view as torch's set_ checks it: the tensor's extent within the view's elements.
            t.storage.numel = v.size
            do { try t.check(name: "\(id)", recordBytes: nil) } catch {
                throw .notACheckpoint("tensor \(id) on a storage view: \(error.reason)")
            }
            args[1] = graph.add(.int(t.storageOffset + v.offset))
            o.args = graph.add(.tuple(args))
            graph[id] = .object(o)
        }
    }
}
