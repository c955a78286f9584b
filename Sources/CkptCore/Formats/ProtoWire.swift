/// A protobuf wire-format scanner over a region of a file: reads one field header at a time with a small buffer and
/// skips over values (a tensor's `raw_data` of gigabytes is passed by seeking, never read). Used to find an ONNX
/// model's initializers without loading the model.
struct ProtoWireScanner {
    /// One field: its number, wire type, where its tag starts and where its value starts and ends (for wire type 2,
    /// the value is the bytes after the length).
    struct Field {
        var number: UInt64
        var wireType: UInt8
        var start: UInt64
        var valueStart: UInt64
        var valueEnd: UInt64
    }

    struct Failure: Error, CustomStringConvertible {
        var offset: UInt64
        var reason: String
        var description: String { "\(reason) at byte \(offset)" }
    }

    private let file: ZipFileHandle
    private(set) var position: UInt64
    let end: UInt64
    private var buffer: [UInt8] = []
    private var bufferStart: UInt64 = 0

    init(file: ZipFileHandle, range: Range<UInt64>) {
        self.file = file
        position = range.lowerBound
        end = range.upperBound
    }

    /// A varint at ``position``, read from a window of the file that holds the next 10 bytes (or all up to the end
    /// of the region): the window is refilled, 64 KiB at a time, when fewer are left in it.
    private mutating func varint() throws -> UInt64 {
        let windowEnd = bufferStart + UInt64(buffer.count)
        if position < bufferStart || windowEnd - min(position, windowEnd) < min(10, end - position) {
            let n = Int(min(64 << 10, end - position))
            buffer = [UInt8](repeating: 0, count: n)
            try buffer.withUnsafeMutableBytes { try FileRange.read(file, at: position, into: $0, what: "the model") }
            bufferStart = position
        }
        var c = ByteCursor(buffer, at: Int(position - bufferStart))
        do {
            let v = try c.varint()
            position = bufferStart + UInt64(c.offset)
            return v
        } catch .varintTooLong(let at) {
            throw Failure(offset: bufferStart + UInt64(at) + 10, reason: "a varint is longer than 10 bytes")
        } catch {
            throw Failure(offset: end, reason: "a field runs past the end of its message")
        }
    }

    /// The next field, or nil at the end of the region.
    mutating func next() throws -> Field? {
        guard position < end else { return nil }
        let start = position
        let tag = try varint()
        let number = tag >> 3, wireType = UInt8(tag & 7)
        guard number > 0 else { throw Failure(offset: start, reason: "field number 0") }
        let valueStart: UInt64
        switch wireType {
        case 0:
            _ = try varint()
            valueStart = start
        case 1, 5:
            let n: UInt64 = wireType == 1 ? 8 : 4
            guard end - position >= n else { throw Failure(offset: position, reason: "a fixed-size field runs past the end of its message") }
            valueStart = position
            position += n
        case 2:
            let n = try varint()
            guard n <= end - position else {
                throw Failure(offset: position, reason: "a \(n)-byte field runs past the end of its message")
            }
            valueStart = position
            position += n
        default:
            throw Failure(offset: start, reason: "wire type \(wireType) (groups are not supported)")
        }
        return Field(number: number, wireType: wireType, start: start, valueStart: valueStart, valueEnd: position)
    }

    /// The bytes of `[range)` of the file.
    func bytes(_ range: Range<UInt64>) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(range.count))
        try out.withUnsafeMutableBytes { try FileRange.read(file, at: range.lowerBound, into: $0, what: "the model") }
        return out
    }
}
