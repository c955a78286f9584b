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
