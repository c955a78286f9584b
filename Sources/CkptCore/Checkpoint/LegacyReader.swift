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

    /// Whether a file's first bytes are the legacy magic-number pickle.
    static func looksLegacy(head: [UInt8]) -> Bool {
        guard let r = try? PickleDecoder.decodePrefix(Array(head.prefix(64)), offset: 0) else { return false }
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
                let views = try Self.resolveStorageViews(&graph)
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
                    // Each storage: its element count (int64, little-endian), then its bytes.
                    var countBytes = ByteCursor(Array(h.readData(ofLength: 8)))
                    guard let count = try? countBytes.u64le() else {
                        throw CheckpointError.notACheckpoint("storage \(key) is cut short")
                    }
                    let item = UInt64(types[key]?.itemSize ?? 1)
                    let (bytes, o) = count.multipliedReportingOverflow(by: item)
                    guard !o, offset + 8 <= size, bytes <= size - offset - 8 else {
                        throw CheckpointError.notACheckpoint("storage \(key) is cut short")
                    }
                    table[key] = (offset + 8, bytes)
                    offset += 8 + bytes
                }
                let scans = PickleScanner.scanSequence(Array(prefix[..<pickleEnd]), count: 5, label: "pickle", limits: limits)
                var order = keys
                for v in views {
                    guard table[v.key] == nil else { throw CheckpointError.notACheckpoint("storage view \(v.key) has the key of a storage") }
                    guard let r = table[v.root] else { throw CheckpointError.missingRecord("storage \(v.root)") }
                    let item = UInt64(v.itemSize)
                    table[v.key] = (r.0 + UInt64(v.offset) * item, UInt64(v.size) * item)
                    order.append(v.key)
                }
                return (graph, table.mapValues { (offset: $0.0, bytes: $0.1) }, order, scans)
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

    /// A storage view: `size` elements of storage `root` from element `offset`, each `itemSize` bytes.
    struct StorageView { var key: String; var root: String; var offset: Int64; var size: Int64; var itemSize: Int }

    /// torch 0.3 and 0.4 pickled a storage view (a storage that is part of another) as the root's persistent id
    /// with a sixth field `(view_key, offset, view_size)`; torch.load (`_legacy_load`) makes the view a storage of
    /// its own, the elements `offset ..< offset + view_size` of the root, the first time it meets `view_key`, and
    /// `torch.save` would write it as a storage of its own. So each such id becomes the view's own
    /// `('storage', type, view_key, location, view_size)`, and the view a storage whose bytes are that range of the
    /// root's (returned, for the storage table).
    static func resolveStorageViews(_ graph: inout PickleGraph) throws(CheckpointError) -> [StorageView] {
        var views: [String: StorageView] = [:]
        var order: [String] = []
        for i in graph.nodes.indices {
            guard case .persistent(let pid) = graph.nodes[i], let t = graph.sequence(pid), t.count == 6,
                  let meta = graph.sequence(t[5]) else { continue }
            guard meta.count == 3, let key = graph.string(meta[0]), let root = graph.string(t[2]),
                  let offset = graph.int(meta[1]), let size = graph.int(meta[2]), offset >= 0, size >= 0,
                  let rootNumel = graph.int(t[4]), offset <= rootNumel, size <= rootNumel - offset
            else { throw .notACheckpoint("storage view at persistent id #\(i) is malformed or outside its storage") }
            let first = views[key] ?? StorageView(key: key, root: root, offset: offset, size: size,
                                                  itemSize: graph.storageRef(NodeID(i), viewsAllowed: true)?.dtype?.itemSize ?? 1)
            if views[key] == nil { views[key] = first; order.append(key) }
            var items = Array(t.prefix(5))
            items[2] = graph.add(.string(key))
            items[4] = graph.add(.int(first.size))
            graph[NodeID(i)] = .persistent(pid: graph.add(.tuple(items)))
        }
        return order.map { views[$0]! }
    }
}
