extension Checkpoint {
    /// Streams a tensor's elements in row-major order (the bytes `tensor.contiguous()` holds) in chunks of at most
    /// `chunkSize` bytes, reading only what the view covers: a contiguous view is one range of its storage (the
    /// whole storage streams with the container's checksum), any other view (transposed, sliced with a step,
    /// expanded) is gathered run by run through a small block cache. Memory stays bounded by `chunkSize` plus the
    /// cache (4 MiB), whatever the tensor's size.
    ///
    /// The tensor is checked first (``TensorRef/check(name:recordBytes:)``, `name` names it in the error). Faults of
    /// this file are thrown as ``CheckpointError``; errors thrown by `body` pass through unchanged.
    public func streamTensor(_ t: TensorRef, name: String = "", chunkSize: Int = 1 << 20,
                             _ body: (UnsafeRawBufferPointer) throws -> Void) throws
    {
        let key = t.storage.key
        guard let recordBytes = storageRecordBytes(key) else { throw CheckpointError.missingRecord("storage \(key)") }
        do { try t.check(name: name.isEmpty ? "#\(t.node.index)" : name, recordBytes: recordBytes) } catch {
            throw CheckpointError.tensor(error)
        }
        let numel = t.numel ?? 0
        guard numel > 0 else { return }
        let item = Int64(t.dtype.itemSize)
        let chunk = max(chunkSize, t.dtype.itemSize)

        // Dims of size 1 do not move; merge the innermost dims that are contiguous in the storage into runs.
        var dims = zip(t.shape, t.stride).filter { $0.0 != 1 }.map { (size: $0.0, stride: $0.1) }
        var run: Int64 = 1
        while let last = dims.last, last.stride == run {
            run *= last.size
            dims.removeLast()
        }
        if dims.isEmpty {
            let start = t.storageOffset * item, count = numel * item
            if start == 0 && count == recordBytes {
                try streamStorage(key, chunkSize: chunk, body)
                return
            }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(min(Int64(chunk), count)), alignment: 64)
            defer { buffer.deallocate() }
            var done: Int64 = 0
            while done < count {
                let n = Int(min(Int64(buffer.count), count - done))
                let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
                try readStorage(key, at: start + done, into: part)
                try body(UnsafeRawBufferPointer(part))
                done += Int64(n)
            }
            return
        }

        let gather = Gather(checkpoint: self, key: key, storageBytes: recordBytes)
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        defer { out.deallocate() }
        var filled = 0
        let runBytes = run * item
        var index = [Int64](repeating: 0, count: dims.count)
        var element = t.storageOffset
        let runs = numel / run
        for _ in 0..<runs {
            var at = element * item
            var left = runBytes
            while left > 0 {
                let n = Int(min(left, Int64(out.count - filled)))
                try gather.copy(from: at, into: UnsafeMutableRawBufferPointer(rebasing: out[filled..<(filled + n)]))
                filled += n
                at += Int64(n)
                left -= Int64(n)
                if filled == out.count {
                    try body(UnsafeRawBufferPointer(out))
                    filled = 0
                }
            }
            // Next run: odometer over the outer dims.
            var d = dims.count - 1
            while d >= 0 {
                index[d] += 1
                element += dims[d].stride
                if index[d] < dims[d].size { break }
                element -= dims[d].stride * dims[d].size
                index[d] = 0
                d -= 1
            }
        }
        if filled > 0 { try body(UnsafeRawBufferPointer(rebasing: out[0..<filled])) }
    }
}

/// Random-access reads of one storage through a few cached blocks, for gathering a strided view.
private final class Gather {
    let checkpoint: Checkpoint
    let key: String
    let storageBytes: Int64
    static let blockSize: Int64 = 256 << 10
    static let maxBlocks = 16
    /// Cached blocks, most recently used last: block number, memory (blockSize bytes), bytes valid.
    private var blocks: [(number: Int64, base: UnsafeMutableRawPointer, count: Int)] = []

    init(checkpoint: Checkpoint, key: String, storageBytes: Int64) {
        self.checkpoint = checkpoint
        self.key = key
        self.storageBytes = storageBytes
    }

    deinit {
        for b in blocks { b.base.deallocate() }
    }

    /// Copies `buffer.count` bytes of the storage from byte `offset`.
    func copy(from offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        if Int64(buffer.count) >= Self.blockSize {
            try checkpoint.readStorage(key, at: offset, into: buffer)
            return
        }
        var done = 0
        while done < buffer.count {
            let at = offset + Int64(done)
            let b = at / Self.blockSize
            let block = try self.block(b)
            let from = Int(at - b * Self.blockSize)
            let n = min(buffer.count - done, block.count - from)
            guard n > 0 else { throw CheckpointError.io("read past the end of storage \(key)") }
            (buffer.baseAddress! + done).copyMemory(from: block.base + from, byteCount: n)
            done += n
        }
    }

    private func block(_ b: Int64) throws -> (base: UnsafeMutableRawPointer, count: Int) {
        if let last = blocks.last, last.number == b { return (last.base, last.count) }
        if let i = blocks.firstIndex(where: { $0.number == b }) {
            let hit = blocks.remove(at: i)
            blocks.append(hit)
            return (hit.base, hit.count)
        }
        let start = b * Self.blockSize
        let count = Int(min(Self.blockSize, storageBytes - start))
        let base = blocks.count >= Self.maxBlocks
            ? blocks.removeFirst().base
            : UnsafeMutableRawPointer.allocate(byteCount: Int(Self.blockSize), alignment: 64)
        do {
            try checkpoint.readStorage(key, at: start, into: UnsafeMutableRawBufferPointer(start: base, count: count))
        } catch {
            base.deallocate()
            throw error
        }
        blocks.append((b, base, count))
        return (base, count)
    }
}
