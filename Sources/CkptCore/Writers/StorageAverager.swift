import Foundation
internal import CSys

/// Writes one storage of `ckpt average` (``StorageAverage``): the same storage of every input is read at once, a
/// block of elements at a time (one buffer per input, a float64 accumulator, one output buffer: flat memory whatever
/// the storage's size), and each element becomes `sum_i(w_i * x_i) / sum_i(w_i)` in float64, then the storage's dtype.
///
/// The order of operations is the rule's, as torch computes it on float64 tensors with separate operations
/// (`acc = w[0] * x[0].double()`, then `acc = acc + w[i] * x[i].double()`, then `(acc / sum(w)).to(dtype)`, with
/// `sum(w)` Python's left-to-right sum): no fused multiply-add, so every step rounds once as torch's does. float64 to
/// float32 rounds once; to float16 and bfloat16 through float32, as torch's `.to(dtype)` does (c10's `Half` and
/// `BFloat16` are made from a float; checked against torch 2.13 in Tests/interop/test_average.py).
///
/// Each input's storage is read whole, from its first byte to its last, so the CRC-32 its zip declares is checked as it
/// streams (``TensorElementReader``). A read fault is a ``FileError`` naming that input.
#if _endian(big)
#error("ckpt average's arithmetic (CSys's ckpt_avg_* loops) reads storages as host values: little-endian hosts only")
#endif

enum StorageAverager {
    static let averaged: Set<DType> = [.float16, .bfloat16, .float32, .float64]

    static func write(_ s: OutputStorage, _ a: StorageAverage, sources: [Checkpoint], to w: TorchZipWriter,
                      chunkSize: Int, progressed: (Int64) -> Void) throws
    {
        let dtype = s.dtype
        guard averaged.contains(dtype), s.sourceDType == dtype, a.parts.count == a.weights.count, !a.parts.isEmpty else {
            throw CheckpointError.invalidOperation("cannot average storage \(s.key) (\(dtype.rawValue))")
        }
        let item = dtype.itemSize
        try w.beginRecord("data/\(s.key)", size: UInt64(s.byteCount), crc32: nil)
        let whole = StorageView(offset: 0, shape: [s.numel], stride: [1])
        var readers: [TensorElementReader] = []
        for p in a.parts {
            do {
                readers.append(try TensorElementReader(sources[p.source], storageKey: p.key, itemSize: item, view: whole))
            } catch {
                throw FileError(path: sources[p.source].path, error: error)
            }
        }
        let block = max(1, min(Int(max(s.numel, 1)), chunkSize / 16))
        let inputs = UnsafeMutableRawBufferPointer.allocate(byteCount: block * item, alignment: 64)
        let acc = UnsafeMutableBufferPointer<Double>.allocate(capacity: block)
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: block * item, alignment: 64)
        let floats = UnsafeMutableBufferPointer<Float>.allocate(capacity: block)  // float16 and bfloat16 through float32
        defer {
            inputs.deallocate()
            acc.deallocate()
            out.deallocate()
            floats.deallocate()
        }
        // Python's sum(weights): 0.0 + w_1 + w_2 + ...
        let total = a.weights.reduce(0.0, +)
        var done: Int64 = 0
        while done < s.numel {
            let n = Int(min(Int64(block), s.numel - done))
            let bytes = n * item
            for (i, r) in readers.enumerated() {
                let part = UnsafeMutableRawBufferPointer(rebasing: inputs[0..<bytes])
                var got = 0
                do {
                    while got < bytes {
                        let k = try r.read(into: UnsafeMutableRawBufferPointer(rebasing: part[got...]))
                        guard k > 0 else { break }
                        got += k
                    }
                } catch {
                    throw FileError(path: sources[a.parts[i].source].path, error: error)
                }
                guard got == bytes else {
                    throw FileError(path: sources[a.parts[i].source].path,
                                    error: .io("storage \(a.parts[i].key) ended early while averaging"))
                }
                accumulate(UnsafeRawBufferPointer(part), count: n, dtype: dtype, weight: a.weights[i], first: i == 0,
                           into: acc, floats: floats)
                progressed(Int64(bytes))
            }
            finish(acc, count: n, total: total, dtype: dtype, into: out, floats: floats)
            try w.write(UnsafeRawBufferPointer(rebasing: out[0..<bytes]))
            done += Int64(n)
        }
        try w.endRecord()
    }

    /// `acc[j] = w * x[j]` for the first input, else `acc[j] = acc[j] + w * x[j]` (two roundings, never fused), by
    /// CSys's loops (`ckpt_avg_add_*`); float16 is widened to float32 first (exact). `floats` holds `count` floats.
    static func accumulate(_ src: UnsafeRawBufferPointer, count n: Int, dtype: DType, weight: Double, first: Bool,
                           into acc: UnsafeMutableBufferPointer<Double>, floats: UnsafeMutableBufferPointer<Float>)
    {
        let f: Int32 = first ? 1 : 0
        switch dtype {
        case .float64: ckpt_avg_add_f64(src.baseAddress!.assumingMemoryBound(to: Double.self), acc.baseAddress!, n, weight, f)
        case .float32: ckpt_avg_add_f32(src.baseAddress!.assumingMemoryBound(to: Float.self), acc.baseAddress!, n, weight, f)
        case .float16:
            Float16Conversion.toFloat(src.baseAddress!.assumingMemoryBound(to: UInt16.self), floats.baseAddress!, n)
            ckpt_avg_add_f32(floats.baseAddress!, acc.baseAddress!, n, weight, f)
        default:  // bfloat16
            ckpt_avg_add_bf16(src.baseAddress!.assumingMemoryBound(to: UInt16.self), acc.baseAddress!, n, weight, f)
        }
    }

    /// `acc[j] / total`, converted to `dtype` as torch's `.to(dtype)` converts float64 (see ``DTypeConverter``):
    /// float16 and bfloat16 through float32 (`floats` holds `count` floats).
    static func finish(_ acc: UnsafeMutableBufferPointer<Double>, count n: Int, total: Double, dtype: DType,
                       into dst: UnsafeMutableRawBufferPointer, floats: UnsafeMutableBufferPointer<Float>)
    {
        switch dtype {
        case .float64: ckpt_avg_div_f64(acc.baseAddress!, dst.baseAddress!.assumingMemoryBound(to: Double.self), n, total)
        case .float32: ckpt_avg_div_f32(acc.baseAddress!, dst.baseAddress!.assumingMemoryBound(to: Float.self), n, total)
        case .float16:
            ckpt_avg_div_f32(acc.baseAddress!, floats.baseAddress!, n, total)
            Float16Conversion.fromFloat(floats.baseAddress!, dst.baseAddress!.assumingMemoryBound(to: UInt16.self), n)
        default:  // bfloat16; NaN as DTypeConverter writes it from float64
            ckpt_avg_div_f32(acc.baseAddress!, floats.baseAddress!, n, total)
            let out = dst.baseAddress!.assumingMemoryBound(to: UInt16.self)
            for j in 0..<n { out[j] = DTypeConverter.bfloat16Bits(floats[j]) }
        }
    }
}

/// float16 <-> float32 for blocks of elements: by F16C where the CPU has it, else one element at a time as Swift's
/// `Float16` converts (compiler-rt; the same bits: float16 to float32 is exact, float32 to float16 rounds to nearest
/// even and keeps a NaN's sign and high payload bits, quieted).
enum Float16Conversion {
    #if arch(x86_64)
    static let hardware = ckpt_f16c_available() != 0
    #else
    static let hardware = false
    #endif

    static func toFloat(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        #if arch(x86_64)
        if hardware { return ckpt_f16c_to_float(src, dst, n) }
        #endif
        for j in 0..<n { dst[j] = Float(Float16(bitPattern: src[j])) }
    }

    static func fromFloat(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, _ n: Int) {
        #if arch(x86_64)
        if hardware { return ckpt_f16c_from_float(src, dst, n) }
        #endif
        for j in 0..<n { dst[j] = Float16(src[j]).bitPattern }
    }
}
