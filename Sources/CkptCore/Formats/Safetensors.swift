/// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
/// N bytes of JSON (`{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}`,
/// padded with spaces to a multiple of 8 by the reference writer), then the tensor bytes, back to back, row-major,
/// little-endian, with no gaps and nothing after them.
enum Safetensors {
    /// The reference library's cap on the header's size.
    static let maxHeaderBytes: UInt64 = 100_000_000

    /// safetensors dtype names and the torch dtypes `safetensors.torch` maps them to (safetensors 0.8).
    static let dtypes: [(name: String, dtype: DType)] = [
        ("F64", .float64), ("F32", .float32), ("F16", .float16), ("BF16", .bfloat16), ("I64", .int64),
        ("I32", .int32), ("I16", .int16), ("I8", .int8), ("U8", .uint8), ("BOOL", .bool),
        ("F8_E4M3", .float8_e4m3fn), ("F8_E4M3FNUZ", .float8_e4m3fnuz), ("F8_E5M2", .float8_e5m2),
        ("F8_E5M2FNUZ", .float8_e5m2fnuz), ("C64", .complex64), ("U64", .uint64), ("U32", .uint32), ("U16", .uint16),
    ]

    static func dtype(named name: String) -> DType? { dtypes.first { $0.name == name }?.dtype }
    static func name(of dtype: DType) -> String? { dtypes.first { $0.dtype == dtype }?.name }

    /// The rank of a dtype in the reference library's `Dtype` enum, whose order (descending, then the name) is the
    /// order `save_file` lays tensors out in: 8-byte types first, each size in the enum's order.
    static func layoutRank(_ name: String) -> Int {
        let order = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
                     "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
        return order.firstIndex(of: name) ?? -1
    }
}

/// Reads a `.safetensors` file: validates the header as the reference library does, then presents the tensors (in
/// the order of their bytes in the file, as `safetensors.torch.load_file` returns them) as a torch state dict whose storages are the tensors'
/// byte ranges in the file.
final class SafetensorsReader: StorageSource {
    struct Entry {
        var name: String
        var dtype: DType
        var shape: [Int64]
        /// Offset of the first byte in the file, and the byte count.
        var offset: UInt64
        var bytes: UInt64
    }

    let path: String
    let file: ZipFileHandle
    /// Tensors in file order; storage key "i" is `entries[i]`.
    let entries: [Entry]
    let metadata: [(key: String, value: String)]
    let fileSize: UInt64

    /// Whether the first bytes look like a safetensors header: a length that fits the file, then `{`.
    static func looksLikeSafetensors(head: [UInt8], fileSize: UInt64) -> Bool {
        var c = ByteCursor(head)
        guard head.count >= 9, head[8] == UInt8(ascii: "{"), let n = try? c.u64le() else { return false }
        return n >= 2 && n <= Safetensors.maxHeaderBytes && n <= fileSize - 8
    }

    static func open(path: String) throws(CheckpointError) -> OpenedContainer {
        let r = try SafetensorsReader(path: path)
        var g = StateDictGraph()
        for (i, e) in r.entries.enumerated() { g.append(name: e.name, dtype: e.dtype, shape: e.shape, storageKey: String(i)) }
        return OpenedContainer(graph: g.finished(), source: r, format: .safetensors, fileSize: r.fileSize,
                               recordCount: r.entries.count, metadata: r.metadata)
    }

    /// Where the safetensors data starts in the file: 0, or (a DCP `.distcp` written with
    /// `serialization_format=SAFETENSORS`, whose non-tensor items come first) the offset it is read from. Entry
    /// offsets are relative to it.
    let start: UInt64

    /// Reads the safetensors file at `path`, or the safetensors data from byte `start` of it to its end.
    init(path: String, from start: UInt64 = 0) throws(CheckpointError) {
        func bad(_ why: String) -> CheckpointError { .invalidFile(format: "safetensors", why) }
        self.path = path
        self.start = start
        if start == 0 {
            file = try FileRange.open(path)
        } else {
            let whole = try FileRange.size(try FileRange.open(path))
            guard start <= whole else { throw bad("the data would start at byte \(start), past the file's end") }
            do { file = try ZipFileHandle.openForReading(path, window: start..<whole) } catch { throw .io(error.description) }
        }
        fileSize = try FileRange.size(file)
        guard fileSize >= 8 else { throw bad("the file is \(fileSize) bytes, shorter than the 8-byte header length") }
        var length = ByteCursor(try FileRange.readBytes(file, at: 0, count: 8, what: "the header length"))
        let n: UInt64
        do { n = try length.u64le() } catch { throw bad("the header length: \(error)") }
        guard n <= Safetensors.maxHeaderBytes else {
            throw bad("the header is \(n) bytes (the limit is \(Safetensors.maxHeaderBytes))")
        }
        guard n <= fileSize - 8 else { throw bad("the header is \(n) bytes but the file has \(fileSize - 8) after its length") }
        let header = try FileRange.readBytes(file, at: 8, count: Int(n), what: "the header")
        guard header.first == UInt8(ascii: "{") else { throw bad("the header does not start with '{'") }
        let json: JSONValue
        do { json = try JSONParser.parse(header) } catch { throw bad("header JSON: \(error)") }
        guard case .object(let pairs) = json else { throw bad("the header is not a JSON object") }

        var entries: [Entry] = []
        var metadata: [(key: String, value: String)] = []
        var ranges: [(begin: UInt64, end: UInt64, index: Int)] = []
        let dataStart = 8 + n
        for (name, v) in pairs {
            if name == "__metadata__" {
                guard case .object(let m) = v else { throw bad("__metadata__ is not an object of strings") }
                for (k, mv) in m {
                    guard case .string(let s) = mv else { throw bad("__metadata__ value of '\(k)' is not a string") }
                    metadata.append((k, s))
                }
                continue
            }
            guard case .object = v else { throw bad("tensor '\(name)' is not an object") }
            guard case .string(let dtypeName)? = v["dtype"] else { throw bad("tensor '\(name)' has no dtype") }
            guard let dtype = Safetensors.dtype(named: dtypeName) else {
                throw bad("tensor '\(name)' has dtype \(dtypeName), which torch cannot load")
            }
            guard case .array(let dims)? = v["shape"] else { throw bad("tensor '\(name)' has no shape") }
            var shape: [Int64] = []
            var numel: Int64 = 1
            for d in dims {
                guard case .int(let s) = d, s >= 0 else { throw bad("tensor '\(name)' has a shape entry that is not a size") }
                shape.append(s)
                let (p, o) = numel.multipliedReportingOverflow(by: s)
                guard !o else { throw bad("tensor '\(name)': the element count of shape \(shape) overflows") }
                numel = p
            }
            guard case .array(let offs)? = v["data_offsets"], offs.count == 2,
                  case .int(let b) = offs[0], case .int(let e) = offs[1], b >= 0, e >= b
            else { throw bad("tensor '\(name)' has invalid data_offsets") }
            let (bytes, o) = numel.multipliedReportingOverflow(by: Int64(dtype.itemSize))
            guard !o else { throw bad("tensor '\(name)': its byte count overflows") }
            guard e - b == bytes else {
                throw bad("tensor '\(name)' is \(dtypeName) \(shape) (\(bytes) bytes) but its data_offsets span \(e - b)")
            }
            ranges.append((UInt64(b), UInt64(e), entries.count))
            entries.append(Entry(name: name, dtype: dtype, shape: shape, offset: dataStart + UInt64(b), bytes: UInt64(bytes)))
        }
        // As the reference's Metadata::validate: in offset order, each tensor starts where the last ended, and the
        // last ends at the end of the file.
        ranges.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var end: UInt64 = 0
        for r in ranges {
            guard r.begin == end else {
                throw bad("tensor '\(entries[r.index].name)' starts at byte \(r.begin) of the data, expected \(end)")
            }
            end = r.end
        }
        guard dataStart + end == fileSize else {
            throw bad(dataStart + end > fileSize
                ? "the tensors need \(end) bytes of data but the file holds \(fileSize - dataStart): it is cut short"
                : "\(fileSize - dataStart - end) bytes follow the last tensor")
        }
        self.entries = ranges.map { entries[$0.index] }
        self.metadata = metadata
    }

    private func entry(_ key: String) throws -> Entry {
        guard let i = Int(key), entries.indices.contains(i) else { throw CheckpointError.missingRecord("tensor \(key)") }
        return entries[i]
    }

    func storageBytes(_ key: String) -> Int64? { (try? entry(key)).map { Int64($0.bytes) } }

    func stream(_ key: String, chunkSize: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let e = try entry(key)
        try FileRange.stream(file, offset: e.offset, count: e.bytes, chunkSize: chunkSize, what: "tensor '\(e.name)'", body)
    }

    func read(_ key: String, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(key, offset, buffer.count)
        let e = try entry(key)
        try FileRange.read(file, at: e.offset + UInt64(offset), into: buffer, what: "tensor '\(e.name)'")
    }

    var recordNames: [String] { entries.map(\.name) }
}
