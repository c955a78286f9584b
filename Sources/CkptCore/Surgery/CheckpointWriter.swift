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
    /// torch's own, so torch may compute offsets. With several sources, a fault reading one of them is thrown as
    /// a ``FileError`` naming it.
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
                hash.add(Array(s.key.utf8))
                do {
                    try copyStorage(s, from: sources[s.source], to: w, chunkSize: chunkSize) { n in
                        done += n
                        progress?(done)
                    }
                } catch let e as CheckpointError where sources.count > 1 {
                    throw FileError(path: sources[s.source].path, error: e)
                }
            }
            try w.addRecord("version", bytes: Array("3\n".utf8))
            let id = String(hash.value)
            let id2 = String(hash.value ^ 0x9E37_79B9_7F4A_7C15)
            let serial = String(repeating: "0", count: 20 - id.count) + id + String(repeating: "0", count: 20 - id2.count) + id2
            try w.addRecord(".data/serialization_id", bytes: Array(serial.utf8))
            try w.finish()
        }
    }

    /// Writes one output storage as a record: the source's record as it is, converted, or a view of it compacted.
    private static func copyStorage(_ s: OutputStorage, from source: Checkpoint, to w: TorchZipWriter, chunkSize: Int,
                                    progressed: (Int64) -> Void) throws
    {
        // A record copied unchanged keeps its checksum, which the read verifies as it streams: no second CRC pass.
        let knownCRC = s.view == nil && s.sourceDType == s.dtype ? source.storageChecksum(s.sourceKey)?.crc : nil
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
            if knownCRC != nil { copied = try source.copyStorageRecord(s.sourceKey, into: w) { progressed(Int64($0)) } }
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

/// Converts a stream of elements of one floating dtype to another (float16, bfloat16, float32, float64, any
/// pair) in chunks, carrying partial elements across chunk boundaries. Rounding is torch's `.to(dtype)`:
/// round to nearest even; float64 goes to float16 and bfloat16 through float32, as torch's casts do.
/// NaN to bfloat16 follows torch 2.13 on CPU: 0xFFFF from float32 (its vectorized cast, whatever the tensor's
/// size), 0x7FC0 from float16 and float64 (c10's scalar `round_to_nearest_even`; torch's own float64 cast
/// gives 0xFFFF in 16-element blocks and 0x7FC0 in the tail, so no single rule matches it there).
struct DTypeConverter {
    let from: DType
    let to: DType
    private var carry: [UInt8] = []
    private var out: [UInt8] = []

    static let floating: [DType] = [.float16, .bfloat16, .float32, .float64]

    init(from: DType, to: DType, chunkSize: Int) throws {
        guard from == to || (Self.floating.contains(from) && Self.floating.contains(to)) else {
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
                let one = carry
                one.withUnsafeBytes { appendConverted($0, count: 1) }
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

    /// float32 to bfloat16 as c10's `round_to_nearest_even`, with NaN as `nan`.
    static func bfloat16Bits(_ f: Float, nan: UInt16 = 0x7FC0) -> UInt16 {
        if f.isNaN { return nan }
        let u = f.bitPattern
        let bias = ((u >> 16) & 1) &+ 0x7FFF
        return UInt16(truncatingIfNeeded: (u &+ bias) >> 16)
    }

    private mutating func appendConverted(_ src: UnsafeRawBufferPointer, count: Int) {
        let base = out.count
        let outSize = to.itemSize
        out.append(contentsOf: repeatElement(0, count: count * outSize))
        let from = from, to = to
        out.withUnsafeMutableBytes { dstAll in
            let dst = UnsafeMutableRawBufferPointer(rebasing: dstAll[base...])
            if from == to {
                dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[0..<(count * outSize)]))
                return
            }
            let nan: UInt16 = from == .float32 ? 0xFFFF : 0x7FC0
            func load16(_ i: Int) -> UInt16 { UInt16(littleEndian: src.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)) }
            func store(_ i: Int, _ f: Float) {
                switch to {
                case .float16: dst.storeBytes(of: Float16(f).bitPattern.littleEndian, toByteOffset: i * 2, as: UInt16.self)
                case .bfloat16: dst.storeBytes(of: Self.bfloat16Bits(f, nan: nan).littleEndian, toByteOffset: i * 2, as: UInt16.self)
                case .float32: dst.storeBytes(of: f.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
                default: dst.storeBytes(of: Double(f).bitPattern.littleEndian, toByteOffset: i * 8, as: UInt64.self)
                }
            }
            switch from {
            case .float64:
                for i in 0..<count {
                    let d = Double(bitPattern: UInt64(littleEndian: src.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)))
                    store(i, Float(d))  // to float32 directly; to float16 and bfloat16 through float32, as torch does
                }
            case .float32:
                for i in 0..<count {
                    store(i, Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))))
                }
            case .float16:
                for i in 0..<count { store(i, Float(Float16(bitPattern: load16(i)))) }
            default:  // bfloat16
                for i in 0..<count { store(i, Float(bitPattern: UInt32(load16(i)) << 16)) }
            }
        }
    }
}
