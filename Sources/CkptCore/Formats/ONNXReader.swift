internal import COnnx
internal import CProtobufC
import Foundation

/// Reads an ONNX model's initializers (its weights: `graph.initializer`, TensorProtos) as a torch state dict, in the
/// model's order and under the names the exporter kept.
///
/// The model is a protobuf `ModelProto` that may be gigabytes, nearly all of it tensors' `raw_data`. So the file is
/// scanned at the wire level (``ProtoWireScanner``) to find each initializer and the byte range of its `raw_data`;
/// the initializer without its `raw_data` is then decoded by protobuf-c with the code generated from `onnx.proto`
/// (name, dims, data_type, typed fields, external data). Tensor bytes come from where they are: `raw_data` streams from
/// the model file, external data (`data_location: EXTERNAL`) from the file it names beside the model, and the typed
/// fields (`float_data`, `int32_data`, ...) are converted to the tensor's dtype in memory when asked for.
final class ONNXReader: StorageSource {
    enum Data {
        /// Bytes at `offset` of open file number `file` (the model is 0).
        case file(file: Int, offset: UInt64)
        /// In the typed fields of the TensorProto at this byte range of the model.
        case typed(UInt64, UInt64)
    }

    struct Initializer {
        var name: String
        var dtype: DType
        var onnxType: Int32
        var shape: [Int64]
        var bytes: UInt64
        var data: Data
    }

    let path: String
    private var files: [ZipFileHandle]
    private var filePaths: [String]
    let initializers: [Initializer]
    let metadata: [(key: String, value: String)]
    let fileSize: UInt64
    /// The last typed tensor converted: (key, bytes), so random-access reads do not convert again.
    private var typedCache: (String, [UInt8])?

    /// Largest TensorProto (without raw_data) or model header decoded in memory.
    static let maxMessageBytes: UInt64 = 1 << 31

    /// ONNX `TensorProto.DataType` numbers and names, with the torch dtype where there is one.
    static let types: [Int32: (name: String, dtype: DType?)] = [
        0: ("UNDEFINED", nil), 1: ("FLOAT", .float32), 2: ("UINT8", .uint8), 3: ("INT8", .int8), 4: ("UINT16", .uint16),
        5: ("INT16", .int16), 6: ("INT32", .int32), 7: ("INT64", .int64), 8: ("STRING", nil), 9: ("BOOL", .bool),
        10: ("FLOAT16", .float16), 11: ("DOUBLE", .float64), 12: ("UINT32", .uint32), 13: ("UINT64", .uint64),
        14: ("COMPLEX64", .complex64), 15: ("COMPLEX128", .complex128), 16: ("BFLOAT16", .bfloat16),
        17: ("FLOAT8E4M3FN", .float8_e4m3fn), 18: ("FLOAT8E4M3FNUZ", .float8_e4m3fnuz), 19: ("FLOAT8E5M2", .float8_e5m2),
        20: ("FLOAT8E5M2FNUZ", .float8_e5m2fnuz), 21: ("UINT4", nil), 22: ("INT4", nil), 23: ("FLOAT4E2M1", nil),
        24: ("FLOAT8E8M0", .float8_e8m0fnu), 25: ("UINT2", nil), 26: ("INT2", nil), 27: ("FLOAT6E2M3", nil),
        28: ("FLOAT6E3M2", nil),
    ]

    /// Whether the first bytes look like a ModelProto as writers lay it out: `ir_version` (field 1) first, then
    /// another known field.
    static func looksLikeONNX(head: [UInt8]) -> Bool {
        guard head.count >= 3, head[0] == 0x08, head[1] < 0x80 else { return false }
        return [0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42].contains(head[2])
    }

    static func open(path: String) throws(CheckpointError) -> OpenedContainer {
        let r = try ONNXReader(path: path)
        var g = StateDictGraph()
        for (i, t) in r.initializers.enumerated() {
            g.append(name: t.name, dtype: t.dtype, shape: t.shape, storageKey: String(i))
        }
        return OpenedContainer(graph: g.finished(), source: r, format: .onnx, fileSize: r.fileSize,
                               recordCount: r.initializers.count, metadata: r.metadata)
    }

    private static func bad(_ why: String) -> CheckpointError { .invalidFile(format: "onnx", why) }

    init(path: String) throws(CheckpointError) {
        self.path = path
        let model = try FileRange.open(path)
        fileSize = try FileRange.size(model)
        files = [model]
        filePaths = [path]
        var header: [UInt8] = []
        var tensorRanges: [Range<UInt64>] = []
        var sparse = 0
        do {
            var top = ProtoWireScanner(file: model, range: 0..<fileSize)
            while let f = try top.next() {
                switch (f.number, f.wireType) {
                case (7, 2):  // graph
                    var graph = ProtoWireScanner(file: model, range: f.valueStart..<f.valueEnd)
                    while let gf = try graph.next() {
                        if gf.number == 5, gf.wireType == 2 { tensorRanges.append(gf.valueStart..<gf.valueEnd) }
                        if gf.number == 15, gf.wireType == 2 { sparse += 1 }
                    }
                case (1, _), (2, _), (3, _), (4, _), (5, _), (6, _), (8, _), (14, _):
                    // ir_version, producer, version, domain, model_version, doc_string, opset_import, metadata_props
                    guard UInt64(header.count) + (f.valueEnd - f.start) <= Self.maxMessageBytes else {
                        throw Self.bad("the model's header fields are larger than \(Self.maxMessageBytes) bytes")
                    }
                    header += try top.bytes(f.start..<f.valueEnd)
                default:
                    continue
                }
            }
        } catch let e as ProtoWireScanner.Failure {
            throw Self.bad("\(e.reason) at byte \(e.offset) (not an ONNX ModelProto?)")
        } catch let e as CheckpointError {
            throw e
        } catch {
            throw .io("\(error)")
        }
        metadata = try Self.modelMetadata(header, sparse: sparse)

        var list: [Initializer] = []
        var names = Set<String>()
        let folder = (path as NSString).deletingLastPathComponent
        for range in tensorRanges {
            let (proto, raw) = try Self.tensorProto(model, range)
            defer { onnx__tensor_proto__free_unpacked(proto, nil) }
            let t = proto.pointee
            let name = t.name.map { String(cString: $0) } ?? ""
            guard !name.isEmpty else { throw Self.bad("an initializer has no name") }
            guard names.insert(name).inserted else { throw Self.bad("two initializers are named '\(name)'") }
            func fail(_ why: String) -> CheckpointError { Self.bad("initializer '\(name)' \(why)") }
            let code = t.has_data_type != 0 ? t.data_type : 0
            guard let type = Self.types[code] else { throw fail("has unknown data_type \(code)") }
            guard let dtype = type.dtype else { throw fail("has ONNX type \(type.name), which has no torch dtype") }
            guard t.segment == nil else { throw fail("is a segment of a tensor; segmented tensors are not supported") }
            var shape: [Int64] = []
            var numel: Int64 = 1
            for i in 0..<t.n_dims {
                let d = t.dims[i]
                guard d >= 0 else { throw fail("has a negative dimension \(d)") }
                shape.append(d)
                let (p, o) = numel.multipliedReportingOverflow(by: d)
                guard !o else { throw fail("has an element count that overflows") }
                numel = p
            }
            let (byteCount, o) = numel.multipliedReportingOverflow(by: Int64(dtype.itemSize))
            guard !o else { throw fail("has a byte count that overflows") }
            let bytes = UInt64(byteCount)
            let data: Data
            if t.has_data_location != 0, t.data_location.rawValue == 1 {
                var location: String?, offset: UInt64 = 0, length: UInt64?
                for i in 0..<t.n_external_data {
                    guard let e = t.external_data[i]?.pointee, let k = e.key.map({ String(cString: $0) }) else { continue }
                    let v = e.value.map { String(cString: $0) } ?? ""
                    switch k {
                    case "location": location = v
                    case "offset":
                        guard let n = UInt64(v) else { throw fail("has external data offset '\(v)'") }
                        offset = n
                    case "length":
                        guard let n = UInt64(v) else { throw fail("has external data length '\(v)'") }
                        length = n
                    default: break
                    }
                }
                guard let location, !location.isEmpty else { throw fail("has external data without a location") }
                guard !location.hasPrefix("/"), !location.split(separator: "/").contains("..") else {
                    throw fail("has external data at '\(location)', outside the model's folder")
                }
                let full = folder.isEmpty ? location : folder + "/" + location
                let index: Int
                if let i = filePaths.firstIndex(of: full) { index = i } else {
                    guard FileManager.default.fileExists(atPath: full) else {
                        throw fail("has its data in '\(location)', which is missing")
                    }
                    files.append(try FileRange.open(full))
                    filePaths.append(full)
                    index = files.count - 1
                }
                let size = try FileRange.size(files[index])
                guard offset <= size else { throw fail("has external data at byte \(offset) of the \(size)-byte '\(location)'") }
                let available = length ?? (size - offset)
                guard available == bytes else {
                    throw fail("is \(type.name) \(shape) (\(bytes) bytes) but its external data holds \(available)")
                }
                guard bytes <= size - offset else {
                    throw fail("has external data past the end of '\(location)' (\(size) bytes)")
                }
                data = .file(file: index, offset: offset)
            } else if let raw {
                guard raw.count == bytes else {
                    throw fail("is \(type.name) \(shape) (\(bytes) bytes) but its raw_data holds \(raw.count)")
                }
                data = .file(file: 0, offset: raw.lowerBound)
            } else {
                let (count, field) = Self.typedCount(t, onnxType: code)
                let perElement: Int64 = (code == 14 || code == 15) ? 2 : 1
                guard Int64(count) == numel * perElement else {
                    throw fail("is \(type.name) \(shape) (\(numel) elements) but has \(count) values in \(field)")
                }
                data = .typed(range.lowerBound, range.upperBound)
            }
            list.append(Initializer(name: name, dtype: dtype, onnxType: code, shape: shape, bytes: bytes, data: data))
        }
        initializers = list
    }

    /// Decodes the TensorProto at `range` of the model without its raw_data, and returns where the raw_data is.
    private static func tensorProto(_ file: ZipFileHandle, _ range: Range<UInt64>) throws(CheckpointError)
        -> (UnsafeMutablePointer<Onnx__TensorProto>, Range<UInt64>?)
    {
        var rest: [UInt8] = []
        var raw: Range<UInt64>?
        do {
            var s = ProtoWireScanner(file: file, range: range)
            while let f = try s.next() {
                if f.number == 9 {
                    guard f.wireType == 2 else { throw bad("a tensor's raw_data has wire type \(f.wireType)") }
                    raw = f.valueStart..<f.valueEnd  // the last one wins, as protobuf merges
                    continue
                }
                guard UInt64(rest.count) + (f.valueEnd - f.start) <= maxMessageBytes else {
                    throw bad("a tensor's fields besides raw_data exceed \(maxMessageBytes) bytes")
                }
                rest += try s.bytes(f.start..<f.valueEnd)
            }
        } catch let e as ProtoWireScanner.Failure {
            throw bad("initializer at byte \(range.lowerBound): \(e.reason) at byte \(e.offset)")
        } catch let e as CheckpointError {
            throw e
        } catch {
            throw .io("\(error)")
        }
        let proto = rest.withUnsafeBufferPointer { onnx__tensor_proto__unpack(nil, $0.count, $0.baseAddress) }
        guard let proto else { throw bad("the initializer at byte \(range.lowerBound) is not a valid TensorProto") }
        return (proto, raw)
    }

    /// How many values the typed field for this type holds, and the field's name.
    private static func typedCount(_ t: Onnx__TensorProto, onnxType: Int32) -> (Int, String) {
        switch onnxType {
        case 1, 14: (t.n_float_data, "float_data")
        case 11, 15: (t.n_double_data, "double_data")
        case 7: (t.n_int64_data, "int64_data")
        case 12, 13: (t.n_uint64_data, "uint64_data")
        default: (t.n_int32_data, "int32_data")
        }
    }

    /// A typed tensor's values as little-endian bytes of its torch dtype.
    private func typedBytes(_ index: Int) throws -> [UInt8] {
        let key = String(index)
        if let (k, b) = typedCache, k == key { return b }
        let t = initializers[index]
        guard case .typed(let a, let b) = t.data else { return [] }
        let (proto, _) = try Self.tensorProto(files[0], a..<b)
        defer { onnx__tensor_proto__free_unpacked(proto, nil) }
        let p = proto.pointee
        var out = [UInt8]()
        out.reserveCapacity(Int(t.bytes))
        func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        switch t.onnxType {
        case 1, 14: for i in 0..<p.n_float_data { le(p.float_data[i].bitPattern) }
        case 11, 15: for i in 0..<p.n_double_data { le(p.double_data[i].bitPattern) }
        case 7: for i in 0..<p.n_int64_data { le(p.int64_data[i]) }
        case 13: for i in 0..<p.n_uint64_data { le(p.uint64_data[i]) }
        case 12: for i in 0..<p.n_uint64_data { le(UInt32(truncatingIfNeeded: p.uint64_data[i])) }
        case 6: for i in 0..<p.n_int32_data { le(p.int32_data[i]) }
        case 9: for i in 0..<p.n_int32_data { out.append(p.int32_data[i] != 0 ? 1 : 0) }
        default:
            // INT16, UINT16, FLOAT16, BFLOAT16 (bit patterns): 2 bytes; INT8, UINT8, FLOAT8*: 1 byte.
            let size = t.dtype.itemSize
            for i in 0..<p.n_int32_data {
                let v = UInt32(bitPattern: p.int32_data[i])
                if size == 2 { le(UInt16(truncatingIfNeeded: v)) } else { out.append(UInt8(truncatingIfNeeded: v)) }
            }
        }
        guard UInt64(out.count) == t.bytes else {
            throw CheckpointError.io("initializer '\(t.name)' changed while it was read")
        }
        typedCache = (key, out)
        return out
    }

    /// ir_version, producer, opsets, ... from the model's header fields.
    private static func modelMetadata(_ header: [UInt8], sparse: Int) throws(CheckpointError) -> [(key: String, value: String)] {
        let model = header.withUnsafeBufferPointer { onnx__model_proto__unpack(nil, $0.count, $0.baseAddress) }
        guard let model else { throw bad("the model's header fields are not a valid ModelProto") }
        defer { onnx__model_proto__free_unpacked(model, nil) }
        let m = model.pointee
        var out: [(key: String, value: String)] = []
        if m.has_ir_version != 0 { out.append(("ir_version", String(m.ir_version))) }
        let producer = [m.producer_name, m.producer_version].compactMap { $0.map { String(cString: $0) } }
            .filter { !$0.isEmpty }.joined(separator: " ")
        if !producer.isEmpty { out.append(("producer", producer)) }
        if let d = m.domain.map({ String(cString: $0) }), !d.isEmpty { out.append(("domain", d)) }
        if m.has_model_version != 0 { out.append(("model_version", String(m.model_version))) }
        var opsets: [String] = []
        for i in 0..<m.n_opset_import {
            guard let o = m.opset_import[i]?.pointee else { continue }
            let domain = o.domain.map { String(cString: $0) } ?? ""
            opsets.append("\(domain.isEmpty ? "ai.onnx" : domain) \(o.has_version != 0 ? String(o.version) : "?")")
        }
        if !opsets.isEmpty { out.append(("opset_import", opsets.joined(separator: ", "))) }
        for i in 0..<m.n_metadata_props {
            guard let e = m.metadata_props[i]?.pointee, let k = e.key.map({ String(cString: $0) }) else { continue }
            out.append((k, e.value.map { String(cString: $0) } ?? ""))
        }
        if sparse > 0 { out.append(("sparse_initializers", "\(sparse) (not listed)")) }
        return out
    }

    private func index(_ key: String) throws -> Int {
        guard let i = Int(key), initializers.indices.contains(i) else {
            throw CheckpointError.missingRecord("initializer \(key)")
        }
        return i
    }

    func storageBytes(_ key: String) -> Int64? { (try? index(key)).map { Int64(initializers[$0].bytes) } }

    func stream(_ key: String, chunkSize: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let i = try index(key)
        let t = initializers[i]
        switch t.data {
        case .file(let f, let offset):
            try FileRange.stream(files[f], offset: offset, count: t.bytes, chunkSize: chunkSize,
                                 what: "initializer '\(t.name)'", body)
        case .typed:
            let bytes = try typedBytes(i)
            try bytes.withUnsafeBytes { all in
                var at = 0
                while at < all.count {
                    let n = min(max(chunkSize, 1), all.count - at)
                    try body(UnsafeRawBufferPointer(rebasing: all[at..<(at + n)]))
                    at += n
                }
            }
        }
    }

    func read(_ key: String, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(key, offset, buffer.count)
        let i = try index(key)
        let t = initializers[i]
        switch t.data {
        case .file(let f, let start):
            try FileRange.read(files[f], at: start + UInt64(offset), into: buffer, what: "initializer '\(t.name)'")
        case .typed:
            let bytes = try typedBytes(i)
            bytes.withUnsafeBytes { all in
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: all[Int(offset)..<(Int(offset) + buffer.count)]))
            }
        }
    }

    var recordNames: [String] { initializers.map(\.name) }
}
