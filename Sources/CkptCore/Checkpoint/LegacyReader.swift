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
    /// Storage key -> (offset of its bytes, byte count).
    let storages: [String: (offset: UInt64, bytes: UInt64)]
    let storageOrder: [String]
    /// Raw scans of the five pickles.
    let scans: [PickleScan]
    let handle: FileHandle
    let fileSize: UInt64

    /// Whether a file's first bytes are the legacy magic-number pickle.
    static func looksLegacy(head: [UInt8]) -> Bool {
        guard let r = try? PickleDecoder.decodePrefix(Array(head.prefix(64)), offset: 0) else { return false }
        if case .bigInt(let b) = r.graph[r.graph.root] { return b == magic }
        return false
    }

    init(path: String, limits: PickleLimits) throws(CheckpointError) {
        guard let h = FileHandle(forReadingAtPath: path) else { throw .io("cannot open for reading") }
        handle = h
        let size = (try? h.seekToEnd()) ?? 0
        fileSize = size
        (graph, storages, storageOrder, scans) = try Self.parse(h, size: size, limits: limits)
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

    func stream(_ key: String, chunkSize: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard let s = storages[key] else { throw CheckpointError.missingRecord("legacy storage \(key)") }
        try handle.seek(toOffset: s.offset)
        var left = s.bytes
        while left > 0 {
            let n = Int(min(UInt64(chunkSize), left))
            let d = handle.readData(ofLength: n)
            guard d.count == n else { throw CheckpointError.notACheckpoint("storage \(key) is cut short") }
            try d.withUnsafeBytes { try body($0) }
            left -= UInt64(n)
        }
    }
}
