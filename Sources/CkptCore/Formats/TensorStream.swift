extension Checkpoint {
    /// Streams a tensor's elements in row-major order (the bytes `tensor.contiguous()` holds) in chunks of at most
    /// `chunkSize` bytes, reading only what the view covers: a contiguous view is one range of its storage (the
    /// whole storage streams with the container's checksum), any other view (transposed, permuted, sliced with a
    /// step, expanded) is gathered through a small block cache, window by window in the storage's order. Memory
    /// stays bounded by `chunkSize` plus the cache (4 MiB), whatever the tensor's size.
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
        let runBytes = run * item
        if runBytes >= Gather.blockSize {
            try streamLongRuns(dims: dims, runBytes: runBytes, first: t.storageOffset * item, item: item, runs: numel / run,
                               chunk: chunk, gather: gather, body)
        } else {
            try streamTiles(dims: dims, runBytes: runBytes, first: t.storageOffset * item, item: item, chunk: chunk,
                            gather: gather, body)
        }
    }

    /// Runs of at least a block: copied in output order, each read straight from the storage.
    private func streamLongRuns(dims: [(size: Int64, stride: Int64)], runBytes: Int64, first: Int64, item: Int64,
                                runs: Int64, chunk: Int, gather: Gather,
                                _ body: (UnsafeRawBufferPointer) throws -> Void) throws
    {
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        defer { out.deallocate() }
        var filled = 0
        var index = [Int64](repeating: 0, count: dims.count)
        var at0 = first
        for _ in 0..<runs {
            var at = at0
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
            var d = dims.count - 1
            while d >= 0 {
                index[d] += 1
                at0 += dims[d].stride * item
                if index[d] < dims[d].size { break }
                at0 -= dims[d].stride * dims[d].size * item
                index[d] = 0
                d -= 1
            }
        }
        if filled > 0 { try body(UnsafeRawBufferPointer(rebasing: out[0..<filled])) }
    }

    /// Short runs (a transposed or permuted tensor, a step slice): the output is cut into windows of at most
    /// `chunk` bytes, each a box of whole inner dims times a range of one dim, and each window is filled in the order
    /// of the storage (its dims visited by stride, largest outermost), so the storage is read forward through the
    /// block cache, each block about once per window, and the window is emitted in row-major order.
    private func streamTiles(dims: [(size: Int64, stride: Int64)], runBytes: Int64, first: Int64, item: Int64,
                             chunk: Int, gather: Gather, _ body: (UnsafeRawBufferPointer) throws -> Void) throws
    {
        let window = max(Int64(chunk), runBytes)
        // dims[k...] fit in a window whole; dim k-1 (if any) is split into ranges of `m` indices.
        var k = dims.count
        var box = runBytes
        while k > 0, box * dims[k - 1].size <= window {
            k -= 1
            box *= dims[k].size
        }
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(k == 0 ? box : window), alignment: 64)
        defer { out.deallocate() }
        // Row-major byte multipliers of dims[k...] in the output.
        var innerMul = [Int64](repeating: 0, count: dims.count)
        var mul = runBytes
        for d in stride(from: dims.count - 1, through: k, by: -1) {
            innerMul[d] = mul
            mul *= dims[d].size
        }
        let outer = k == 0 ? [] : Array(dims[0..<(k - 1)])
        let split: (size: Int64, stride: Int64)? = k == 0 ? nil : dims[k - 1]
        let m = max(1, window / box)
        var outerIndex = [Int64](repeating: 0, count: outer.count)
        var outerBase = first
        while true {
            var i0: Int64 = 0
            repeat {
                // One window: indices [i0, i0 + count) of the split dim (or everything when there is none).
                var local: [(size: Int64, stride: Int64, mul: Int64)] = []
                var base = outerBase
                var bytes = box
                if let split {
                    let count = min(m, split.size - i0)
                    local.append((count, split.stride, box))
                    base += i0 * split.stride * item
                    bytes = count * box
                    i0 += count
                }
                for d in k..<dims.count { local.append((dims[d].size, dims[d].stride, innerMul[d])) }
                // Visit in storage order: largest stride outermost.
                let order = local.indices.sorted { local[$0].stride > local[$1].stride }
                let visit = order.map { local[$0] }
                var index = [Int64](repeating: 0, count: visit.count)
                var src = base, dst: Int64 = 0
                let total = visit.reduce(Int64(1)) { $0 * $1.size }
                let outBase = out.baseAddress!
                let runCount = Int(runBytes)
                for _ in 0..<total {
                    try gather.copy(from: src, to: outBase + Int(dst), count: runCount)
                    var d = visit.count - 1
                    while d >= 0 {
                        index[d] += 1
                        src += visit[d].stride * item
                        dst += visit[d].mul
                        if index[d] < visit[d].size { break }
                        src -= visit[d].stride * visit[d].size * item
                        dst -= visit[d].mul * visit[d].size
                        index[d] = 0
                        d -= 1
                    }
                }
                var sent = 0
                while sent < Int(bytes) {
                    let n = min(chunk, Int(bytes) - sent)
                    try body(UnsafeRawBufferPointer(rebasing: out[sent..<(sent + n)]))
                    sent += n
                }
            } while split != nil && i0 < split!.size
            // Next combination of the outer dims.
            var d = outer.count - 1
            while d >= 0 {
                outerIndex[d] += 1
                outerBase += outer[d].stride * item
                if outerIndex[d] < outer[d].size { break }
                outerBase -= outer[d].stride * outer[d].size * item
                outerIndex[d] = 0
                d -= 1
            }
            if d < 0 { break }
        }
    }
}

/// Random-access reads of one storage through a few cached blocks, for gathering a strided view.
final class Gather {
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

    /// The block used last: its first byte in the storage, memory and valid bytes.
    private var hotStart: Int64 = -1
    private var hotBase: UnsafeMutableRawPointer?
    private var hotCount = 0

    /// Copies `count` bytes of the storage from byte `offset` to `destination`; the fast path for short runs.
    @inline(__always)
    func copy(from offset: Int64, to destination: UnsafeMutableRawPointer, count: Int) throws {
        let rel = offset &- hotStart
        if let hot = hotBase, rel >= 0, rel + Int64(count) <= Int64(hotCount) {
            destination.copyMemory(from: hot + Int(rel), byteCount: count)
            return
        }
        try copy(from: offset, into: UnsafeMutableRawBufferPointer(start: destination, count: count))
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
        let found = try lookup(b)
        hotStart = b * Self.blockSize
        hotBase = found.base
        hotCount = found.count
        return found
    }

    private func lookup(_ b: Int64) throws -> (base: UnsafeMutableRawPointer, count: Int) {
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
