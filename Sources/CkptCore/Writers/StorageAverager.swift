import Foundation

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
        defer {
            inputs.deallocate()
            acc.deallocate()
            out.deallocate()
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
                           into: acc)
                progressed(Int64(bytes))
            }
            finish(acc, count: n, total: total, dtype: dtype, into: out)
            try w.write(UnsafeRawBufferPointer(rebasing: out[0..<bytes]))
            done += Int64(n)
        }
        try w.endRecord()
    }

    /// `acc[j] = w * x[j]` for the first input, else `acc[j] = acc[j] + w * x[j]` (two roundings, never fused).
    static func accumulate(_ src: UnsafeRawBufferPointer, count n: Int, dtype: DType, weight: Double, first: Bool,
                           into acc: UnsafeMutableBufferPointer<Double>)
    {
        @inline(__always) func add(_ j: Int, _ x: Double) {
            let p = weight * x
            acc[j] = first ? p : acc[j] + p
        }
        switch dtype {
        case .float64:
            for j in 0..<n { add(j, Double(bitPattern: UInt64(littleEndian: src.loadUnaligned(fromByteOffset: j * 8, as: UInt64.self)))) }
        case .float32:
            for j in 0..<n { add(j, Double(Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: j * 4, as: UInt32.self))))) }
        case .float16:
            for j in 0..<n { add(j, Double(Float16(bitPattern: UInt16(littleEndian: src.loadUnaligned(fromByteOffset: j * 2, as: UInt16.self))))) }
        default:  // bfloat16
            for j in 0..<n {
                let b = UInt32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: j * 2, as: UInt16.self)))
                add(j, Double(Float(bitPattern: b << 16)))
            }
        }
    }

    /// `acc[j] / total`, converted to `dtype` as torch's `.to(dtype)` converts float64 (see ``DTypeConverter``).
    static func finish(_ acc: UnsafeMutableBufferPointer<Double>, count n: Int, total: Double, dtype: DType,
                       into dst: UnsafeMutableRawBufferPointer)
    {
        switch dtype {
        case .float64:
            for j in 0..<n { dst.storeBytes(of: (acc[j] / total).bitPattern.littleEndian, toByteOffset: j * 8, as: UInt64.self) }
        case .float32:
            for j in 0..<n { dst.storeBytes(of: Float(acc[j] / total).bitPattern.littleEndian, toByteOffset: j * 4, as: UInt32.self) }
        case .float16:
            for j in 0..<n {
                dst.storeBytes(of: Float16(Float(acc[j] / total)).bitPattern.littleEndian, toByteOffset: j * 2, as: UInt16.self)
            }
        default:  // bfloat16; NaN as DTypeConverter writes it from float64
            for j in 0..<n {
                dst.storeBytes(of: DTypeConverter.bfloat16Bits(Float(acc[j] / total)).littleEndian, toByteOffset: j * 2,
                               as: UInt16.self)
            }
        }
    }
}
