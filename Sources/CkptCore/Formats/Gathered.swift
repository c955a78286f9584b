import Foundation

/// Storages assembled from pieces of other files: the logical, unsharded tensors of a distributed checkpoint (a
/// `torch.distributed.checkpoint` folder, a DeepSpeed ZeRO folder), served to the rest of ckpt as ordinary storages.
///
/// Each storage is one logical tensor, contiguous and row-major, whose bytes are gathered while streaming from either
/// - chunk **boxes**: the chunk covering `offsets ..< offsets + sizes` of the global tensor, its elements in a file at
///   `base` with element `strides` (DCP, where a chunk is a `Shard(0)` row block, a `Shard(1)` column block, ...); or
/// - **runs**: byte ranges of files that, one after another, are the tensor (DeepSpeed's flat fp32 partitions).
///
/// Nothing is assembled in memory: streaming walks the output in row-major order, reads each contiguous run of a chunk
/// that lands next in the output with one `pread`, and joins runs that are adjacent in the same file (a `Shard(0)`
/// chunk is one run; a `Shard(1)` chunk is a run a row). Peak memory is one buffer of `chunkSize` bytes, whatever the
/// checkpoint's size. The bytes may be converted from the files' dtype to the storage's while streaming (DeepSpeed
/// writes floating buffers as `.float()` of the saved ones).
///
/// Coverage is checked when the source is made (``GatheredTensor/checkCoverage()``): every box inside the tensor, no
/// two boxes overlapping, their volumes adding up to the tensor's, so every element comes from exactly one chunk.
/// Where a chunk's bytes are is often only known by reading its container (DCP's nested `torch.save` zips), so
/// chunks may be located lazily by the reader's `locate` closure; ``prepare(_:)`` locates and checks every chunk of
/// the storages a writer will read before it writes anything.
///
/// The bytes are checked against the CRC-32 their container declares (a torch zip record), as every storage ckpt reads
/// is: a chunk whose data is its whole record, contiguous (a DCP chunk), while it streams, since the row-major walk
/// reads such a chunk's bytes in their own order; any other chunk's record, and the records runs are cut from
/// (DeepSpeed's partitions, read a parameter at a time), once, before the first tensor that reads them streams.
final class GatheredSource: StorageSource {
    /// The tensors; storage key `"i"` is `tensors[i]`.
    let tensors: [GatheredTensor]
    /// The files pieces are read from.
    let files: GatheredFiles
    /// Locates the data of chunk `chunk` of `tensors[tensor]` when the reader left it nil.
    private let locate: (_ tensor: Int, _ chunk: Int) throws -> ChunkLocation
    private var located: [Int: [ChunkLocation]] = [:]
    /// Records whose checksum is checked before a run of theirs is read (``ByteRun/record``).
    let records: [CheckedRecord]
    /// The records, and chunk records (by their file and first byte), already checked whole.
    private var checked = Set<Int>()
    private var checkedChunks = Set<[UInt64]>()

    init(tensors: [GatheredTensor], files: GatheredFiles, records: [CheckedRecord] = [],
         locate: @escaping (_ tensor: Int, _ chunk: Int) throws -> ChunkLocation = { t, c in
             throw CheckpointError.io("chunk \(c) of tensor \(t) has no location")
         })
    {
        self.tensors = tensors
        self.files = files
        self.records = records
        self.locate = locate
    }

    private func tensor(_ key: String) throws -> (Int, GatheredTensor) {
        guard let i = Int(key), tensors.indices.contains(i) else { throw CheckpointError.missingRecord("storage \(key)") }
        return (i, tensors[i])
    }

    /// Every chunk's location, checked against the chunk's box: its elements must lie inside its bytes.
    private func locations(_ i: Int) throws -> [ChunkLocation] {
        if let l = located[i] { return l }
        let t = tensors[i]
        guard case .boxes(let chunks) = t.layout else { return [] }
        var out: [ChunkLocation] = []
        for (c, chunk) in chunks.enumerated() {
            let loc = try chunk.location ?? locate(i, c)
            try loc.check(sizes: chunk.sizes, itemSize: t.sourceDType.itemSize, tensor: t.name)
            out.append(loc)
        }
        located[i] = out
        return out
    }

    /// Locates and checks every chunk and run of these storages (all when nil): what a writer calls before it
    /// writes, so a damaged chunk refuses the whole output.
    func prepare(_ keys: [String]?) throws {
        for key in keys ?? tensors.indices.map(String.init) {
            let (i, t) = try tensor(key)
            if case .runs(let runs) = t.layout {
                for r in runs { try files.checkRange(r.file, r.offset, r.count, what: "tensor '\(t.name)'") }
            } else {
                for l in try locations(i) {
                    try files.checkRange(l.file, l.extent.lowerBound, l.extent.upperBound - l.extent.lowerBound, what: l.label)
                }
            }
            try checkRecords(i, t)
        }
    }

    /// Checks, once each, the checksums that cannot be checked while tensor `i` streams: the records its runs are
    /// cut from, and its chunks that are not their whole record read in order. Returns the chunks checked while
    /// streaming (index -> the checksum their bytes must have).
    @discardableResult
    private func checkRecords(_ i: Int, _ t: GatheredTensor) throws -> [Int: UInt32] {
        var whileStreaming: [Int: UInt32] = [:]
        switch t.layout {
        case .runs(let runs):
            for r in Set(runs.compactMap(\.record)).sorted() where !checked.contains(r) {
                let rec = records[r]
                try checkWhole(file: rec.file, range: rec.range, crc: rec.crc, label: rec.label)
                checked.insert(r)
            }
        case .boxes(let chunks):
            for (c, l) in try locations(i).enumerated() {
                guard let crc = l.checksum else { continue }
                if l.isWholeRecord(sizes: chunks[c].sizes, itemSize: t.sourceDType.itemSize) {
                    whileStreaming[c] = crc
                } else if checkedChunks.insert([UInt64(l.file), l.extent.lowerBound]).inserted {
                    try checkWhole(file: l.file, range: l.extent, crc: crc, label: l.label)
                }
            }
        }
        return whileStreaming
    }

    /// Reads a record's bytes in bounded chunks and compares their CRC-32 with the declared one.
    private func checkWhole(file: Int, range: Range<UInt64>, crc: UInt32, label: String) throws {
        let size = Int(min(UInt64(256 << 10), max(range.upperBound - range.lowerBound, 1)))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { buffer.deallocate() }
        var at = range.lowerBound, sum: UInt32 = 0
        while at < range.upperBound {
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(min(UInt64(size), range.upperBound - at))])
            try files.read(file, at: at, into: part, what: label)
            sum = ZipCRC32.update(sum, UnsafeRawBufferPointer(part))
            at += UInt64(part.count)
        }
        guard sum == crc else { throw Self.corrupted(label, declared: crc, actual: sum) }
    }

    static func corrupted(_ label: String, declared: UInt32, actual: UInt32) -> CheckpointError {
        func hex(_ v: UInt32) -> String { String(format: "%08x", v) }
        return .io("\(label) is corrupted: crc-32 is \(hex(actual)) but the archive says \(hex(declared)); restore the "
                   + "file from a good copy")
    }

    /// A tensor whose chunks are each their whole record, contiguous, and follow one another in the tensor's
    /// row-major order (`Shard(0)` row blocks, one chunk), in its own dtype: the chunk records, in that order. Nil
    /// otherwise (the writer streams it), and for chunks spread over more files than are kept open at a time.
    func storedPieces(forStorage key: String) throws -> [StoredPiece]? {
        let (i, t) = try tensor(key)
        guard t.sourceDType == t.dtype, case .boxes(let chunks) = t.layout else { return nil }
        let locs = try locations(i)
        var pieces: [StoredPiece] = [], whole = true, used = Set<Int>()
        try forEachRun(i, t) { file, offset, bytes, chunk in
            used.insert(file)
            guard let c = chunk, let crc = locs[c].checksum, locs[c].file == file,
                  locs[c].isWholeRecord(sizes: chunks[c].sizes, itemSize: t.sourceDType.itemSize),
                  locs[c].extent == offset..<(offset + bytes), used.count <= GatheredFiles.maxOpen
            else {
                whole = false
                return false
            }
            pieces.append(StoredPiece(file: try files.handle(file), offset: offset, count: bytes, crc: crc, name: locs[c].label))
            return true
        }
        return whole && !pieces.isEmpty ? pieces : nil
    }

    func corruptedPiece(_ name: String, declared: UInt32, actual: UInt32) -> Error {
        Self.corrupted(name, declared: declared, actual: actual)
    }

    func storageBytes(_ key: String) -> Int64? {
        guard let (_, t) = try? tensor(key) else { return nil }
        return t.numel * Int64(t.dtype.itemSize)
    }

    var recordNames: [String] { files.paths }

    func stream(_ key: String, chunkSize: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let (i, t) = try tensor(key)
        try gather(i, t, from: 0, count: t.numel, chunkSize: chunkSize, body)
    }

    func read(_ key: String, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(key, offset, buffer.count)
        guard !buffer.isEmpty else { return }
        let (i, t) = try tensor(key)
        let item = Int64(t.dtype.itemSize)
        let first = offset / item, last = (offset + Int64(buffer.count) + item - 1) / item
        let skip = Int(offset - first * item)
        var seen = 0  // bytes of the gathered elements passed so far
        try gather(i, t, from: first, count: last - first, chunkSize: 1 << 20) { part in
            let partStart = seen
            seen += part.count
            let lo = max(partStart, skip), hi = min(seen, skip + buffer.count)
            guard lo < hi else { return }
            UnsafeMutableRawBufferPointer(rebasing: buffer[(lo - skip)..<(hi - skip)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: part[(lo - partStart)..<(hi - partStart)]))
        }
    }

    /// Streams elements `first ..< first + count` of tensor `i` (in the storage's dtype).
    private func gather(_ i: Int, _ t: GatheredTensor, from first: Int64, count: Int64, chunkSize: Int,
                        _ body: (UnsafeRawBufferPointer) throws -> Void) throws
    {
        guard count > 0 else { return }
        let item = t.sourceDType.itemSize
        // A buffer that stays in the cache: each byte is copied in (pread) and out (the writer) while still there.
        let capacity = max(item, min(chunkSize, 256 << 10) / item * item)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 64)
        defer { buffer.deallocate() }
        var converter = t.sourceDType == t.dtype ? nil : try DTypeConverter(from: t.sourceDType, to: t.dtype, chunkSize: capacity)
        var filled = 0
        func flush() throws {
            guard filled > 0 else { return }
            let full = UnsafeRawBufferPointer(rebasing: buffer[0..<filled])
            if converter != nil { try converter!.convert(full, body) } else { try body(full) }
            filled = 0
        }
        let start = UInt64(first) * UInt64(item), end = UInt64(first + count) * UInt64(item)
        // Streaming the whole tensor: checksums are checked (a part cannot be).
        let whole = first == 0 && count == t.numel
        let expected = whole ? try checkRecords(i, t) : [:]
        var sums = expected.mapValues { _ in UInt32(0) }
        var position: UInt64 = 0  // bytes of the tensor passed so far
        try forEachRun(i, t) { file, offset, bytes, chunk in
            // The part of this run inside [start, end).
            let lo = max(position, start), hi = min(position + bytes, end)
            defer { position += bytes }
            guard lo < hi else { return position + bytes < end }
            var at = offset + (lo - position), left = hi - lo
            while left > 0 {
                let n = Int(min(UInt64(capacity - filled), left))
                let part = UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + n)])
                try files.read(file, at: at, into: part, what: "tensor '\(t.name)'")
                if let c = chunk, let sum = sums[c] { sums[c] = ZipCRC32.update(sum, UnsafeRawBufferPointer(part)) }
                filled += n
                at += UInt64(n)
                left -= UInt64(n)
                if filled == capacity { try flush() }
            }
            return hi < end
        }
        try flush()
        try converter?.finish()
        if whole, !expected.isEmpty {
            let locs = try locations(i)
            for (c, crc) in expected.sorted(by: { $0.key < $1.key }) where sums[c] != crc {
                throw Self.corrupted(locs[c].label, declared: crc, actual: sums[c] ?? 0)
            }
        }
    }

    /// Calls `body(file, offset, bytes, chunk)` for each contiguous run of tensor `i`'s bytes (in the files' dtype),
    /// in the tensor's row-major order, runs adjacent in one file (and one chunk) joined; stops when `body` returns
    /// false. `chunk` is the box the run is read from, nil for runs.
    func forEachRun(_ i: Int, _ t: GatheredTensor, _ body: (Int, UInt64, UInt64, Int?) throws -> Bool) throws {
        var pending: (file: Int, offset: UInt64, bytes: UInt64, chunk: Int?)? = nil
        var more = true
        func emit(_ file: Int, _ offset: UInt64, _ bytes: UInt64, _ chunk: Int?) throws {
            guard more, bytes > 0 else { return }
            if let p = pending, p.file == file, p.chunk == chunk, p.offset + p.bytes == offset {
                pending!.bytes += bytes
                return
            }
            if let p = pending { more = try body(p.file, p.offset, p.bytes, p.chunk) }
            pending = (file, offset, bytes, chunk)
        }
        switch t.layout {
        case .runs(let runs):
            for r in runs where more { try emit(r.file, r.offset, r.count, nil) }
        case .boxes(let chunks):
            let locs = try locations(i)
            try BoxWalk(shape: t.shape, chunks: chunks.map { ($0.offsets, $0.sizes) }, strides: locs.map(\.strides))
                .forEachRun { c, element, elements in
                    try emit(locs[c].file, locs[c].base + UInt64(element) * UInt64(t.sourceDType.itemSize),
                             UInt64(elements) * UInt64(t.sourceDType.itemSize), c)
                    return more
                }
        }
        if more, let p = pending { _ = try body(p.file, p.offset, p.bytes, p.chunk) }
    }
}

/// One logical tensor of a ``GatheredSource``.
struct GatheredTensor {
    /// The tensor's name, for messages.
    var name: String
    /// The storage's dtype (what the graph declares).
    var dtype: DType
    /// The dtype of the bytes in the files (converted to ``dtype`` while streaming).
    var sourceDType: DType
    /// The global shape.
    var shape: [Int64]
    var layout: Layout

    enum Layout {
        /// Chunk boxes of the global tensor.
        case boxes([GatheredChunk])
        /// Byte runs that, one after another, are the tensor.
        case runs([ByteRun])
    }

    init(name: String, dtype: DType, sourceDType: DType? = nil, shape: [Int64], layout: Layout) {
        self.name = name
        self.dtype = dtype
        self.sourceDType = sourceDType ?? dtype
        self.shape = shape
        self.layout = layout
    }

    var numel: Int64 { shape.reduce(1, *) }

    /// Refuses a tensor whose chunks do not cover it exactly once (a box outside the tensor, two boxes overlapping,
    /// a hole), or whose runs do not add up to its bytes. Shapes must have been checked for overflow.
    func checkCoverage() throws(CheckpointError) {
        func bad(_ why: String) -> CheckpointError { .tensor(TensorCheckError(tensor: name, reason: why)) }
        switch layout {
        case .runs(let runs):
            let total = runs.reduce(UInt64(0)) { $0 + $1.count }
            let want = UInt64(numel) * UInt64(sourceDType.itemSize)
            guard total == want else { throw bad("its pieces hold \(total) bytes, but \(shape) \(sourceDType.rawValue) needs \(want)") }
        case .boxes(let chunks):
            guard !chunks.isEmpty else { throw bad("no chunk holds it") }
            var volume: Int64 = 0
            for c in chunks {
                guard c.offsets.count == shape.count, c.sizes.count == shape.count else {
                    throw bad("chunk at \(c.offsets) has \(c.sizes.count) dimensions, the tensor \(shape.count)")
                }
                for d in shape.indices where c.offsets[d] < 0 || c.sizes[d] < 0 || c.offsets[d] > shape[d] - c.sizes[d] {
                    throw bad("chunk at \(c.offsets) of size \(c.sizes) lies outside the tensor's shape \(shape)")
                }
                volume += c.sizes.reduce(1, *)
            }
            // Overlaps: sweep along dimension 0 (torch's _check_box_overlap sweeps the largest; any works).
            if !shape.isEmpty {
                let order = chunks.indices.sorted { chunks[$0].offsets[0] < chunks[$1].offsets[0] }
                for (n, a) in order.enumerated() {
                    let ca = chunks[a]
                    guard ca.sizes.allSatisfy({ $0 > 0 }) else { continue }
                    for b in order[(n + 1)...] {
                        let cb = chunks[b]
                        if cb.offsets[0] >= ca.offsets[0] + ca.sizes[0] { break }
                        guard cb.sizes.allSatisfy({ $0 > 0 }) else { continue }
                        let overlap = shape.indices.allSatisfy {
                            ca.offsets[$0] < cb.offsets[$0] + cb.sizes[$0] && cb.offsets[$0] < ca.offsets[$0] + ca.sizes[$0]
                        }
                        if overlap { throw bad("chunks at \(ca.offsets) and \(cb.offsets) overlap") }
                    }
                }
            } else if chunks.count != 1 {
                throw bad("\(chunks.count) chunks hold one scalar")
            }
            guard volume == numel else { throw bad("its chunks hold \(volume) of its \(numel) elements (a hole)") }
        }
    }
}

/// A chunk box of a tensor and, when known when the source is made, where its elements are.
struct GatheredChunk {
    var offsets: [Int64]
    var sizes: [Int64]
    var location: ChunkLocation?
}

/// Where a chunk's elements are: element `(i0, i1, ...)` of the chunk (relative to its box) is at
/// `base + Σ i_d · strides[d] · itemSize` of `file`, inside `extent`.
struct ChunkLocation {
    /// Index in ``GatheredFiles``.
    var file: Int
    var base: UInt64
    /// Element strides of the chunk's data (contiguous row-major for most).
    var strides: [Int64]
    /// The bytes the chunk's data occupies (its storage); every element must lie inside.
    var extent: Range<UInt64>
    /// How messages name the chunk (`__0_0.distcp, item of 'model.w' at [4, 0]`).
    var label: String
    /// The CRC-32 its container declares for the bytes of `extent` (a torch zip record), or nil (safetensors).
    var checksum: UInt32? = nil

    /// Whether the chunk's elements are all of `extent`, contiguous and row-major from its first byte: then the
    /// row-major walk of the tensor reads its bytes in their order, and their checksum is taken while streaming.
    func isWholeRecord(sizes: [Int64], itemSize: Int) -> Bool {
        let count = sizes.reduce(Int64(1), *)
        guard base == extent.lowerBound, UInt64(count) * UInt64(itemSize) == extent.upperBound - extent.lowerBound else {
            return false
        }
        let want = StateDictGraph.contiguousStrides(sizes)
        return sizes.indices.allSatisfy { sizes[$0] <= 1 || strides[$0] == want[$0] }
    }

    func check(sizes: [Int64], itemSize: Int, tensor: String) throws(CheckpointError) {
        func bad(_ why: String) -> CheckpointError { .tensor(TensorCheckError(tensor: tensor, reason: "\(label): \(why)")) }
        guard strides.count == sizes.count else { throw bad("its data has \(strides.count) dimensions, its box \(sizes.count)") }
        guard !sizes.contains(0) else { return }
        var last: Int64 = 0
        for d in sizes.indices {
            guard strides[d] >= 0 else { throw bad("negative stride \(strides[d])") }
            let (m, o1) = (sizes[d] - 1).multipliedReportingOverflow(by: strides[d])
            let (s, o2) = last.addingReportingOverflow(m)
            guard !o1, !o2 else { throw bad("its strides overflow") }
            last = s
        }
        let endByte = base + (UInt64(last) + 1) * UInt64(itemSize)
        guard base >= extent.lowerBound, endByte <= extent.upperBound else {
            throw bad("its \(sizes) elements reach byte \(endByte), past the \(extent.count) bytes of its data")
        }
    }
}

/// A byte range of a file.
struct ByteRun {
    var file: Int
    var offset: UInt64
    var count: UInt64
    /// The checked record (``GatheredSource/records``) the run is cut from, when its container declares a checksum.
    var record: Int? = nil
}

/// A byte range of a file whose CRC-32 its container declares (a torch zip record), checked whole before a run cut
/// from it is read.
struct CheckedRecord {
    var file: Int
    var range: Range<UInt64>
    var crc: UInt32
    /// How messages name it (`global_step2/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt, record .../data/3`).
    var label: String
}

/// The files a ``GatheredSource`` reads, opened when first read (a DCP folder saved with one file per item may hold
/// thousands), at most ``maxOpen`` at a time.
final class GatheredFiles {
    let paths: [String]
    /// Sizes, read when the source is made (every file must exist).
    let sizes: [UInt64]
    private var open: [Int: ZipFileHandle] = [:]
    private var recent: [Int] = []
    static let maxOpen = 64

    /// Stats every file; a missing one is refused naming it.
    init(paths: [String]) throws(CheckpointError) {
        self.paths = paths
        var sizes: [UInt64] = []
        for p in paths {
            var st = stat()
            guard stat(p, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                throw .missingRecord((p as NSString).lastPathComponent)
            }
            sizes.append(UInt64(st.st_size))
        }
        self.sizes = sizes
    }

    var names: [String] { paths.map { ($0 as NSString).lastPathComponent } }

    func checkRange(_ file: Int, _ offset: UInt64, _ count: UInt64, what: String) throws(CheckpointError) {
        let (end, o) = offset.addingReportingOverflow(count)
        guard !o, end <= sizes[file] else {
            throw .io("\(names[file]) is cut short: \(what) needs bytes \(offset)..<\(end), the file has \(sizes[file])")
        }
    }

    func handle(_ file: Int) throws(CheckpointError) -> ZipFileHandle {
        if let h = open[file] { return h }
        if open.count >= Self.maxOpen, let oldest = recent.first {
            recent.removeFirst()
            open[oldest] = nil
        }
        let h = try FileRange.open(paths[file])
        open[file] = h
        recent.append(file)
        return h
    }

    func read(_ file: Int, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer, what: String) throws(CheckpointError) {
        try checkRange(file, offset, UInt64(buffer.count), what: what)
        try FileRange.read(try handle(file), at: offset, into: buffer, what: "\(names[file]) (\(what))")
    }
}

/// The walk of a tensor's elements in row-major order over chunk boxes that cover it exactly once: for each
/// contiguous run of one chunk's data that comes next, `(chunk, element offset in the chunk's data, element count)`.
///
/// The trailing dimensions every chunk spans whole and stores contiguously are one "line" (a `Shard(0)` chunk of a
/// matrix: its rows). The walk visits every index of the dimensions before the last split one, and there, in order
/// along the split dimension, the chunks holding that index: each gives one run when its data is contiguous over
/// the split dimension and the lines, else one run a line (a transposed chunk: an element a run).
struct BoxWalk {
    let shape: [Int64]
    let chunks: [(offsets: [Int64], sizes: [Int64])]
    let strides: [[Int64]]

    func forEachRun(_ body: (_ chunk: Int, _ element: Int64, _ count: Int64) throws -> Bool) throws {
        let n = shape.count
        guard shape.allSatisfy({ $0 > 0 }) else { return }
        if n == 0 {
            _ = try body(0, 0, 1)
            return
        }
        // k: the first dimension of the merged line (dims k..<n are whole and contiguous in every chunk).
        var k = n
        var line: Int64 = 1
        while k > 0 {
            let d = k - 1
            let whole = chunks.indices.allSatisfy { c in
                chunks[c].offsets[d] == 0 && chunks[c].sizes[d] == shape[d] && (shape[d] == 1 || strides[c][d] == line)
            }
            guard whole else { break }
            line *= shape[d]
            k -= 1
        }
        if k == 0 {
            _ = try body(0, 0, line)  // one chunk holds the whole tensor, contiguously
            return
        }
        let split = k - 1
        let outerDims = Array(0..<split)
        var index = [Int64](repeating: 0, count: split)
        // Chunks sorted along the split dimension.
        let order = chunks.indices.sorted { chunks[$0].offsets[split] < chunks[$1].offsets[split] }
        while true {
            for c in order {
                let box = chunks[c]
                guard outerDims.allSatisfy({ index[$0] >= box.offsets[$0] && index[$0] < box.offsets[$0] + box.sizes[$0] })
                else { continue }
                var element: Int64 = 0
                for d in outerDims { element += (index[d] - box.offsets[d]) * strides[c][d] }
                let along = box.sizes[split]
                if along == 1 || strides[c][split] == line {
                    guard try body(c, element, along * line) else { return }
                } else {
                    // Not contiguous along the split dimension (a transposed chunk): one run a line.
                    for j in 0..<along {
                        guard try body(c, element + j * strides[c][split], line) else { return }
                    }
                }
            }
            // Next index of the outer dimensions.
            var d = split - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < shape[d] { break }
                index[d] = 0
                d -= 1
            }
            if d < 0 { return }
        }
    }
}
