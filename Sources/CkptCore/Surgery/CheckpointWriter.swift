import Foundation

extension Checkpoint {
    /// Writes a plan whose storages all come from this checkpoint. See ``write(_:sources:to:chunkSize:progress:)``.
    public func write(_ plan: SurgeryPlan, to outPath: String, chunkSize: Int = 4 << 20,
                      progress: ((Int64) -> Void)? = nil) throws
    {
        try Checkpoint.write(plan, sources: [self], to: outPath, chunkSize: chunkSize, progress: progress)
    }

    /// Writes a plan as a torch zip checkpoint at `outPath`, atomically (temp file in the same folder,
    /// fsync, rename). Storage bytes stream from the sources' records in bounded chunks (each
    /// ``OutputStorage/source`` indexes `sources`), converted where the plan says. The layout is
    /// torch's own, so torch may compute offsets.
    public static func write(_ plan: SurgeryPlan, sources: [Checkpoint], to outPath: String,
                             chunkSize: Int = 4 << 20, progress: ((Int64) -> Void)? = nil) throws
    {
        let pickle: [UInt8]
        do { pickle = try PickleEncoder.encode(plan.graph) } catch { throw CheckpointError.pickle(record: "data.pkl", error) }
        let root = Self.recordRoot(for: outPath)
        _ = try? AtomicOutput.removeStaleTemps(for: outPath)
        try AtomicOutput.write(to: outPath) { tmp in
            let w = try TorchZipWriter(path: tmp, root: root)
            var hash = FNV64()
            hash.add(pickle)
            try w.addRecord("data.pkl", bytes: pickle)
            try w.addRecord(".format_version", bytes: Array("1".utf8))
            try w.addRecord(".storage_alignment", bytes: Array("64".utf8))
            try w.addRecord("byteorder", bytes: Array("little".utf8))
            var done: Int64 = 0
            for s in plan.storages {
                // An unchanged copy keeps its record's checksum, which the read verifies: no second CRC pass.
                let knownCRC = s.sourceDType == s.dtype ? sources[s.source].storageRecordCRC32(s.sourceKey) : nil
                try w.beginRecord("data/\(s.key)", size: UInt64(s.byteCount), crc32: knownCRC)
                hash.add(Array(s.key.utf8))
                if s.sourceDType == s.dtype {
                    try sources[s.source].streamStorage(s.sourceKey, chunkSize: chunkSize) { chunk in
                        try w.write(chunk)
                        done += Int64(chunk.count)
                        progress?(done)
                    }
                } else {
                    var converter = try DTypeConverter(from: s.sourceDType, to: s.dtype, chunkSize: chunkSize)
                    try sources[s.source].streamStorage(s.sourceKey, chunkSize: chunkSize) { chunk in
                        try converter.convert(chunk) { out in try w.write(out) }
                        done += Int64(chunk.count)
                        progress?(done)
                    }
                    try converter.finish()
                }
                try w.endRecord()
            }
            try w.addRecord("version", bytes: Array("3\n".utf8))
            let id = String(hash.value)
            let id2 = String(hash.value ^ 0x9E37_79B9_7F4A_7C15)
            let serial = String(repeating: "0", count: 20 - id.count) + id + String(repeating: "0", count: 20 - id2.count) + id2
            try w.addRecord(".data/serialization_id", bytes: Array(serial.utf8))
            try w.finish()
        }
    }

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

/// Converts a stream of elements of one dtype to another in chunks, carrying partial elements
/// across chunk boundaries. Floating conversions round to nearest even, as torch's `.to()` does.
struct DTypeConverter {
    let from: DType
    let to: DType
    private var carry: [UInt8] = []
    private var out: [UInt8] = []

    init(from: DType, to: DType, chunkSize: Int) throws {
        guard to == .float16, [.float32, .float64, .bfloat16, .float16].contains(from) else {
            throw CheckpointError.invalidOperation("conversion from \(from.rawValue) to \(to.rawValue) is not supported")
        }
        self.from = from
        self.to = to
        out.reserveCapacity(chunkSize)
    }

    mutating func convert(_ chunk: UnsafeRawBufferPointer, _ sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let inSize = from.itemSize
        var start = 0
        out.removeAll(keepingCapacity: true)
        if !carry.isEmpty {
            let need = inSize - carry.count
            let take = min(need, chunk.count)
            carry += chunk[0..<take]
            start = take
            if carry.count == inSize {
                carry.withUnsafeBytes { appendConverted($0, count: 1) }
                carry.removeAll()
            }
        }
        let whole = (chunk.count - start) / inSize
        if whole > 0 {
            appendConverted(UnsafeRawBufferPointer(rebasing: chunk[start..<(start + whole * inSize)]), count: whole)
        }
        let rest = start + whole * inSize
        if rest < chunk.count { carry += chunk[rest...] }
        try out.withUnsafeBytes { try sink($0) }
    }

    mutating func finish() throws {
        guard carry.isEmpty else {
            throw CheckpointError.io("storage ends inside an element (\(carry.count) stray bytes)")
        }
    }

    private mutating func appendConverted(_ src: UnsafeRawBufferPointer, count: Int) {
        let base = out.count
        out.append(contentsOf: repeatElement(0, count: count * 2))
        out.withUnsafeMutableBytes { dst in
            let d = dst.baseAddress!.advanced(by: base).assumingMemoryBound(to: UInt16.self)
            switch from {
            case .float32:
                for i in 0..<count {
                    let f = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)))
                    d[i] = Float16(f).bitPattern.littleEndian
                }
            case .float64:
                for i in 0..<count {
                    let v = Double(bitPattern: UInt64(littleEndian: src.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)))
                    d[i] = Float16(Float(v)).bitPattern.littleEndian  // torch goes through float
                }
            case .bfloat16:
                for i in 0..<count {
                    let b = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
                    d[i] = Float16(Float(bitPattern: UInt32(b) << 16)).bitPattern.littleEndian
                }
            default:
                for i in 0..<count { d[i] = src.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self) }
            }
        }
    }
}
