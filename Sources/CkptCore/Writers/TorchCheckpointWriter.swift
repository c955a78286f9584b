import Foundation

/// The torch zip writer's glue: a ``SurgeryPlan`` (strip, transfer, convert to a torch file) written as a torch
/// checkpoint through ``TorchZipWriter``. Reached through ``Checkpoint/write(_:sources:to:chunkSize:progress:)``.
enum TorchCheckpointWriter {
    /// Writes a plan as a torch zip checkpoint at `outPath`, atomically (temp file in the same folder,
    /// fsync, rename). Storage bytes stream from the sources' records in bounded chunks (each
    /// ``OutputStorage/source`` indexes `sources`), converted where the plan says. The layout is
    /// torch's own, so torch may compute offsets. With several sources, a fault reading one of them is thrown as
    /// a ``FileError`` naming it. The plan's ``SurgeryPlan/verifyPickle`` runs over the encoded data.pkl before the
    /// rename.
    static func write(_ plan: SurgeryPlan, sources: [Checkpoint], to outPath: String, chunkSize: Int,
                      progress: ((Int64) -> Void)?) throws
    {
        let pickle = try encode(plan.graph)
        let root = Checkpoint.recordRoot(for: outPath)
        _ = try? AtomicOutput.removeStaleTemps(for: outPath)
        try AtomicOutput.write(to: outPath) { tmp in
            let w = try TorchZipWriter(path: tmp, root: root)
            try w.addRecord("data.pkl", bytes: pickle)
            // The plan's check of the bytes written (strip --state-dict, convert: the weights_only replay), before any
            // storage is copied; a throw here removes the temporary file.
            try plan.verifyPickle?(pickle)
            try w.addRecord(".format_version", bytes: Array("1".utf8))
            try w.addRecord(".storage_alignment", bytes: Array("64".utf8))
            try w.addRecord("byteorder", bytes: Array("little".utf8))
            var done: Int64 = 0
            for s in plan.storages {
                do {
                    try copyStorage(s, from: sources, to: w, chunkSize: chunkSize) { n in
                        done += n
                        progress?(done)
                    }
                } catch let e as CheckpointError where sources.count > 1 {
                    throw FileError(path: sources[s.source].path, error: e)
                }
            }
            var final = pickle
            if let late = plan.lateStrings {
                // Values that came while the storages were written (ckpt average's digests): data.pkl again, the
                // same length, checked as the first was.
                final = try encode(try late.fill(plan.graph))
                guard final.count == pickle.count else {
                    throw CheckpointError.invalidOperation("data.pkl changed length when its late values came; nothing written")
                }
                try plan.verifyPickle?(final)
                try w.rewriteRecord("data.pkl", bytes: final)
            }
            try w.addRecord("version", bytes: Array("3\n".utf8))
            var hash = FNV64()
            hash.add(final)
            for s in plan.storages { hash.add(Array(s.key.utf8)) }
            let id = String(hash.value)
            let id2 = String(hash.value ^ 0x9E37_79B9_7F4A_7C15)
            let serial = String(repeating: "0", count: 20 - id.count) + id + String(repeating: "0", count: 20 - id2.count) + id2
            try w.addRecord(".data/serialization_id", bytes: Array(serial.utf8))
            try w.finish()
        }
    }

    /// The graph as data.pkl.
    private static func encode(_ graph: PickleGraph) throws(CheckpointError) -> [UInt8] {
        do { return try PickleEncoder.encode(graph) } catch { throw .pickle(record: "data.pkl", error) }
    }

    /// Writes one output storage as a record: the source's record as it is, converted, or a view of it compacted.
    private static func copyStorage(_ s: OutputStorage, from sources: [Checkpoint], to w: TorchZipWriter,
                                    chunkSize: Int, progressed: (Int64) -> Void) throws
    {
        let source = sources[s.source]
        if let average = s.average {
            try StorageAverager.write(s, average, sources: sources, to: w, chunkSize: chunkSize, progressed: progressed)
            return
        }
        if let bytes = s.literal {
            try w.beginRecord("data/\(s.key)", size: UInt64(bytes.count), crc32: nil)
            try bytes.withUnsafeBytes { try w.write($0) }
            progressed(Int64(bytes.count))
            return try w.endRecord()
        }
        // A record copied unchanged keeps its checksum, which the read verifies as it streams: no second CRC pass.
        // Pieces stored with their own checksums (a DCP tensor's chunk records) give theirs, combined.
        let unchanged = s.view == nil && s.sourceDType == s.dtype
        let pieces = unchanged ? try source.storedPieces(forStorage: s.sourceKey) : nil
        let knownCRC = pieces.map { $0.reduce(UInt32(0)) { ZipCRC32.combine($0, $1.crc, lengthOfB: $1.count) } }
            ?? (unchanged ? source.storageChecksum(s.sourceKey)?.crc : nil)
        try w.beginRecord("data/\(s.key)", size: UInt64(s.byteCount), crc32: knownCRC)
        if let view = s.view {
            // A view of a larger storage, or a non-contiguous one: its elements, compacted in row-major order.
            let reader = try TensorElementReader(source, storageKey: s.sourceKey,
                                                 itemSize: s.sourceDType.itemSize, view: view)
            var converter = try DTypeConverter(from: s.sourceDType, to: s.dtype, chunkSize: chunkSize)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(chunkSize, 64), alignment: 64)
            defer { buffer.deallocate() }
            while true {
                let n = try reader.read(into: buffer)
                if n == 0 { break }
                let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
                if s.sourceDType == s.dtype { try w.write(chunk) } else {
                    try converter.convert(chunk) { out in try w.write(out) }
                }
                progressed(Int64(n))
            }
            try converter.finish()
        } else if s.sourceDType == s.dtype {
            // Unchanged: copied inside the kernel and checked by reading the output back, where that works; the
            // bytes pass through this process once instead of twice (cp's speed on big files).
            var copied = false
            if let pieces { copied = try copyPieces(pieces, of: source, into: w) { progressed(Int64($0)) } }
            if !copied {
                try source.streamStorage(s.sourceKey, chunkSize: chunkSize) { chunk in
                    try w.write(chunk)
                    progressed(Int64(chunk.count))
                }
            }
        } else {
            var converter = try DTypeConverter(from: s.sourceDType, to: s.dtype, chunkSize: chunkSize)
            try source.streamStorage(s.sourceKey, chunkSize: chunkSize) { chunk in
                try converter.convert(chunk) { out in try w.write(out) }
                progressed(Int64(chunk.count))
            }
            try converter.finish()
        }
        try w.endRecord()
    }

    /// Copies a storage's stored pieces (``Checkpoint/storedPieces(forStorage:)``) unchanged into the record
    /// `writer` has open (begun with their combined CRC-32) inside the kernel, each checked against its CRC after
    /// the copy. Returns false when the kernel cannot copy between the files; the caller then streams the bytes. A
    /// piece whose bytes do not match its CRC is the source file's fault, named in the source's words; other
    /// failures are thrown as they come (most are the output's).
    private static func copyPieces(_ pieces: [StoredPiece], of source: Checkpoint, into writer: TorchZipWriter,
                                   progress: (Int) -> Void) throws -> Bool
    {
        do {
            return try writer.copyStoredPieces(pieces, progress: progress)
        } catch let z {
            switch z {
            case .crcMismatch(let name, let declared, let actual):
                throw source.corruptedPiece(name, declared: declared, actual: actual)
            case .truncated: throw CheckpointError.container(z)
            default: throw z
            }
        }
    }
}

extension Checkpoint {
    /// The zip root folder torch would use when saving to `path`: its file name without extension.
    public static func recordRoot(for path: String) -> String {
        let base = (path as NSString).lastPathComponent
        let stem = (base as NSString).deletingPathExtension
        return stem.isEmpty ? "archive" : stem
    }
}

/// FNV-1a, 64 bit: a stable id for the output's `.data/serialization_id`.
struct FNV64 {
    var value: UInt64 = 0xCBF2_9CE4_8422_2325
    mutating func add(_ bytes: [UInt8]) {
        for b in bytes { value = (value ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    }
}

