/// The elements of a storage that a tensor sees: an offset, a shape and strides, all in elements of
/// the tensor's dtype (torch's `as_strided` view).
public struct StorageView: Sendable, Hashable {
    public var offset: Int64
    public var shape: [Int64]
    public var stride: [Int64]

    public init(offset: Int64, shape: [Int64], stride: [Int64]) {
        self.offset = offset
        self.shape = shape
        self.stride = stride
    }

    /// The view of a tensor (checked or not: callers run ``TensorRef/check(name:recordBytes:)`` first).
    public init(_ t: TensorRef) {
        self.init(offset: t.storageOffset, shape: t.shape, stride: t.stride)
    }

    /// Elements seen (the product of the shape; 0 on a negative size or overflow, which checks refuse).
    public var numel: Int64 {
        var n: Int64 = 1
        for s in shape {
            let (v, o) = n.multipliedReportingOverflow(by: s)
            if o || s < 0 { return 0 }
            n = v
        }
        return n
    }

    /// Dims as (size, stride) with size-1 dims dropped and neighbours that step through memory as one dim merged:
    /// a contiguous view becomes a single dim of stride 1.
    public var coalesced: [(size: Int64, stride: Int64)] {
        var out: [(size: Int64, stride: Int64)] = []
        for (size, st) in zip(shape, stride) where size != 1 {
            if let last = out.last, last.stride == st &* size {
                out[out.count - 1] = (last.size &* size, st)
            } else {
                out.append((size, st))
            }
        }
        return out
    }

    /// Whether the elements are one run of memory in row-major order (what `tensor.is_contiguous()` means
    /// up to size-1 dims).
    public var isContiguous: Bool {
        let c = coalesced
        return c.isEmpty || (c.count == 1 && c[0].stride == 1)
    }
}

/// Reads a tensor's elements in row-major order, in bounded pieces, whatever its strides: the bytes
/// `tensor.contiguous()` would hold. A contiguous view is read straight through. Any other view (a transpose,
/// a step slice, an expand) is gathered box by box: the output is cut into blocks of consecutive elements that
/// are boxes of the view (a range along one dim, every later dim whole), each box is read in memory order
/// (dims by falling stride, runs of stride 1 read at once through a small page cache) and scattered into place.
/// Memory stays bounded by the box buffer and the cache (a few MB), never by the tensor.
public final class TensorElementReader {
    let source: Checkpoint
    let key: String
    /// Bytes per element.
    public let itemSize: Int
    let view: StorageView
    /// Elements the view holds.
    public let total: Int64
    /// Elements handed out so far.
    public private(set) var produced: Int64 = 0

    private let storageBytes: Int64
    private let contiguous: Bool
    /// A contiguous view of a whole record is read from its start to its end: its CRC is checked on the way.
    private let checksum: (record: String, crc: UInt32)?
    private var crc: UInt32 = 0
    // The box walk over the coalesced dims: boxes are ranges along dim `level` with every later dim whole.
    private let dims: [(size: Int64, stride: Int64)]
    private let level: Int
    /// Elements per step along dim `level` (the product of the later sizes), and steps per box.
    private let inner: Int64
    private let rowsPerBox: Int64
    private var position: [Int64]
    private var box: UnsafeMutableRawBufferPointer
    private var run: UnsafeMutableRawBufferPointer
    private var boxFilled: Int64 = 0
    private var boxDrained: Int64 = 0
    // Page cache.
    private let pageSize: Int
    private var pages: [UnsafeMutableRawBufferPointer] = []
    private var pageOf: [Int64: Int] = [:]
    private var slotPage: [Int64] = []
    private var nextSlot = 0
    private let maxPages: Int

    /// Bytes of the box buffer (elements gathered per step of a strided view).
    public static let boxBytes = 4 << 20

    /// A reader of `view` over storage `key` of `source`, whose elements are `itemSize` bytes.
    /// The view must have passed the shape checks against the storage (it must lie inside the record).
    /// `boxBytes` bounds the gather buffer of a strided view.
    public init(_ source: Checkpoint, storageKey: String, itemSize: Int, view: StorageView,
                boxBytes: Int = TensorElementReader.boxBytes) throws(CheckpointError) {
        self.source = source
        self.key = storageKey
        self.itemSize = itemSize
        self.view = view
        total = view.numel
        guard let bytes = source.storageRecordBytes(storageKey) else {
            throw .missingRecord("\(source.root)/data/\(storageKey)")
        }
        storageBytes = bytes
        contiguous = view.isContiguous || total == 0
        checksum = contiguous && view.offset == 0 && total &* Int64(itemSize) == bytes && total > 0
            ? source.storageChecksum(storageKey) : nil
        dims = contiguous ? [] : view.coalesced
        let capacity = Int64(max(1, boxBytes / itemSize))
        var level = 0, inner: Int64 = 1
        if !dims.isEmpty {
            // The first dim whose later dims fit one box.
            var products = [Int64](repeating: 1, count: dims.count)
            for i in stride(from: dims.count - 2, through: 0, by: -1) { products[i] = products[i + 1] &* dims[i + 1].size }
            level = products.firstIndex { $0 <= capacity } ?? dims.count - 1
            inner = products[level]
        }
        self.level = level
        self.inner = inner
        rowsPerBox = max(1, capacity / inner)
        position = [Int64](repeating: 0, count: dims.count)
        let boxElements = contiguous ? 0 : Int(min(capacity, max(total, 1)))
        box = UnsafeMutableRawBufferPointer.allocate(byteCount: boxElements * itemSize, alignment: 64)
        run = UnsafeMutableRawBufferPointer.allocate(byteCount: boxElements * itemSize, alignment: 64)
        // The memory-innermost dim: long runs of stride 1 read through large pages, short or strided ones small pages.
        let innermost = dims.min { $0.stride < $1.stride }
        let dense = innermost.map { $0.stride == 1 && $0.size * Int64(itemSize) >= 512 } ?? true
        pageSize = dense ? 64 << 10 : 4 << 10
        maxPages = dense ? 32 : 256
    }

    deinit {
        for p in pages { p.deallocate() }
        box.deallocate()
        run.deallocate()
    }

    /// Fills the front of `buffer` with the next whole elements (`min(buffer.count / itemSize, left)` of them);
    /// returns the number of bytes written, 0 when every element has been read.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(CheckpointError) -> Int {
        let room = Int64(buffer.count / itemSize)
        let want = min(room, total - produced)
        guard want > 0 else { return 0 }
        let item = Int64(itemSize)
        if contiguous {
            let start = (view.offset + produced) * item
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(want * item)])
            try source.readStorage(key, at: start, into: part)
            produced += want
            if let c = checksum {
                crc = ZipCRC32.update(crc, UnsafeRawBufferPointer(part))
                if produced == total && crc != c.crc {
                    throw .container(.crcMismatch(record: c.record, expected: c.crc, actual: crc))
                }
            }
            return Int(want * item)
        }
        var done: Int64 = 0
        while done < want {
            if boxDrained == boxFilled { try fillBox() }
            let n = min(boxFilled - boxDrained, want - done)
            UnsafeMutableRawBufferPointer(rebasing: buffer[Int(done * item)..<Int((done + n) * item)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: box[Int(boxDrained * item)..<Int((boxDrained + n) * item)]))
            done += n
            boxDrained += n
        }
        produced += want
        return Int(want * item)
    }

    /// Gathers the next box of the view into `box`, in memory order.
    private func fillBox() throws(CheckpointError) {
        let item = Int64(itemSize)
        let rows = min(rowsPerBox, dims[level].size - position[level])
        var base = view.offset
        for i in 0...level { base += position[i] * dims[i].stride }
        // The box's dims with their source strides and their strides in the box (row-major), by falling source stride.
        var boxDims: [(size: Int64, stride: Int64, dest: Int64)] = [(rows, dims[level].stride, inner)]
        var dest = inner
        for i in (level + 1)..<dims.count {
            dest /= dims[i].size
            boxDims.append((dims[i].size, dims[i].stride, dest))
        }
        let order = boxDims.enumerated().sorted { $0.element.stride > $1.element.stride || ($0.element.stride == $1.element.stride && $0.offset < $1.offset) }.map(\.element)
        let innermost = order[order.count - 1]
        let outer = Array(order.dropLast())
        var index = [Int64](repeating: 0, count: outer.count)
        while true {
            var src = base, dst: Int64 = 0
            for (i, d) in outer.enumerated() {
                src += index[i] * d.stride
                dst += index[i] * d.dest
            }
            if innermost.stride == 1 && innermost.dest == 1 {
                try copyBytes(at: src * item, into: UnsafeMutableRawBufferPointer(rebasing: box[Int(dst * item)..<Int((dst + innermost.size) * item)]))
            } else if innermost.stride == 1 {
                let bytes = Int(innermost.size * item)
                try copyBytes(at: src * item, into: UnsafeMutableRawBufferPointer(rebasing: run[0..<bytes]))
                for j in 0..<innermost.size {
                    let to = Int((dst + j * innermost.dest) * item)
                    UnsafeMutableRawBufferPointer(rebasing: box[to..<(to + itemSize)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: run[Int(j * item)..<Int((j + 1) * item)]))
                }
            } else {
                for j in 0..<innermost.size {
                    let to = Int((dst + j * innermost.dest) * item)
                    try copyBytes(at: (src + j * innermost.stride) * item, into: UnsafeMutableRawBufferPointer(rebasing: box[to..<(to + itemSize)]))
                }
            }
            var k = outer.count - 1
            while k >= 0 {
                index[k] += 1
                if index[k] < outer[k].size { break }
                index[k] = 0
                k -= 1
            }
            if k < 0 { break }
        }
        boxFilled = rows * inner
        boxDrained = 0
        // Next box.
        position[level] += rows
        var k = level
        while k > 0 && position[k] == dims[k].size {
            position[k] = 0
            k -= 1
            position[k] += 1
        }
    }

    /// Copies storage bytes [offset, offset + out.count) through the page cache (long ranges go straight to the file).
    private func copyBytes(at offset: Int64, into out: UnsafeMutableRawBufferPointer) throws(CheckpointError) {
        if out.count >= pageSize {
            try source.readStorage(key, at: offset, into: out)
            return
        }
        var filled = 0
        while filled < out.count {
            let at = offset + Int64(filled)
            let page = at / Int64(pageSize)
            let slot = try load(page)
            let within = Int(at - page * Int64(pageSize))
            let available = min(pageSize, Int(storageBytes - page * Int64(pageSize))) - within
            guard available > 0 else { throw .notACheckpoint("storage \(key) is cut short") }
            let n = min(available, out.count - filled)
            UnsafeMutableRawBufferPointer(rebasing: out[filled..<(filled + n)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: pages[slot][within..<(within + n)]))
            filled += n
        }
    }

    private func load(_ page: Int64) throws(CheckpointError) -> Int {
        if let s = pageOf[page] { return s }
        let slot: Int
        if pages.count < maxPages {
            pages.append(UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: 64))
            slotPage.append(page)
            slot = pages.count - 1
        } else {
            slot = nextSlot
            nextSlot = (nextSlot + 1) % maxPages
            pageOf[slotPage[slot]] = nil
            slotPage[slot] = page
        }
        let start = page * Int64(pageSize)
        let count = Int(min(Int64(pageSize), storageBytes - start))
        try source.readStorage(key, at: start, into: UnsafeMutableRawBufferPointer(rebasing: pages[slot][0..<count]))
        pageOf[page] = slot
        return slot
    }
}

extension DType {
    /// How many real numbers make one element when read as float64: 1 for real types, 2 for complex,
    /// nil for types read only as bytes (float8, packed and bit types).
    public var realComponents: Int? {
        switch self {
        case .float16, .bfloat16, .float32, .float64, .uint8, .int8, .int16, .int32, .int64, .uint16, .uint32,
             .uint64, .bool, .qint8, .quint8, .qint32: 1
        case .complex32, .complex64, .complex128: 2
        default: nil
        }
    }

    /// Appends each element's components of little-endian `bytes` as float64 to `out` (exact for every type
    /// but 64-bit integers beyond 2^53). Only for types with ``realComponents``.
    public func appendDoubles(_ bytes: UnsafeRawBufferPointer, to out: inout [Double]) {
        func each<T>(_: T.Type, _ size: Int, _ f: (T) -> Double) {
            var i = 0
            while i + size <= bytes.count {
                out.append(f(bytes.loadUnaligned(fromByteOffset: i, as: T.self)))
                i += size
            }
        }
        switch self {
        case .float16, .complex32: each(UInt16.self, 2) { Double(Float16(bitPattern: UInt16(littleEndian: $0))) }
        case .bfloat16: each(UInt16.self, 2) { Double(Float(bitPattern: UInt32(UInt16(littleEndian: $0)) << 16)) }
        case .float32, .complex64: each(UInt32.self, 4) { Double(Float(bitPattern: UInt32(littleEndian: $0))) }
        case .float64, .complex128: each(UInt64.self, 8) { Double(bitPattern: UInt64(littleEndian: $0)) }
        case .uint8, .quint8, .bool: each(UInt8.self, 1) { Double($0) }
        case .int8, .qint8: each(Int8.self, 1) { Double($0) }
        case .int16: each(Int16.self, 2) { Double(Int16(littleEndian: $0)) }
        case .uint16: each(UInt16.self, 2) { Double(UInt16(littleEndian: $0)) }
        case .int32, .qint32: each(Int32.self, 4) { Double(Int32(littleEndian: $0)) }
        case .uint32: each(UInt32.self, 4) { Double(UInt32(littleEndian: $0)) }
        case .int64: each(Int64.self, 8) { Double(Int64(littleEndian: $0)) }
        case .uint64: each(UInt64.self, 8) { Double(UInt64(littleEndian: $0)) }
        default: break
        }
    }
}
