/// A read position over a byte array, for the binary headers of the containers ckpt reads: zip records, the
/// safetensors header length, the legacy formats' element counts, protobuf varints. Every read consumes, says its
/// byte order in its name (`u32le`), and throws ``ByteCursor/Failure`` instead of reading past the end of the
/// region; offsets and lengths are added with overflow checks, so a length read from the input cannot wrap around.
/// (The shape of swift-nio's `ByteBuffer` read methods, apple/swift-nio Sources/NIOCore/ByteBuffer-int.swift.)
struct ByteCursor {
    /// Why a read failed; callers turn it into their own layer's error with what was being read.
    enum Failure: Error, Equatable, CustomStringConvertible {
        /// `wanted` bytes at `offset`, where only `available` are left before the end of the region.
        case outOfBytes(offset: Int, wanted: Int, available: Int)
        /// A negative length, or an offset plus length beyond `Int.max`.
        case badLength(offset: Int, length: Int)
        /// A varint of more than 10 bytes (protobuf's limit for 64 bits), starting at `offset`.
        case varintTooLong(offset: Int)

        var description: String {
            switch self {
            case .outOfBytes(let offset, let wanted, let available):
                "\(wanted) bytes wanted at byte \(offset), \(available) left"
            case .badLength(let offset, let length): "impossible length \(length) at byte \(offset)"
            case .varintTooLong(let offset): "a varint is longer than 10 bytes at byte \(offset)"
            }
        }
    }

    /// Byte order of a multi-byte read.
    enum Endianness { case little, big }

    let bytes: [UInt8]
    /// Index in `bytes` of the next byte read.
    private(set) var offset: Int
    /// Index in `bytes` where the region ends: no read goes past it.
    let end: Int

    /// A cursor over `bytes[offset..<end]` (`end` defaults to the array's end and is clamped to it). An offset
    /// outside `0...end` gives an empty region: every read throws.
    init(_ bytes: [UInt8], at offset: Int = 0, end: Int? = nil) {
        self.bytes = bytes
        self.end = min(max(end ?? bytes.count, 0), bytes.count)
        self.offset = (0...self.end).contains(offset) ? offset : self.end
    }

    /// Bytes left before the end of the region.
    var remaining: Int { end - offset }
    var isAtEnd: Bool { offset == end }

    /// Checks that `n` more bytes are there and returns where they start.
    private func start(of n: Int) throws(Failure) -> Int {
        guard n >= 0 else { throw .badLength(offset: offset, length: n) }
        let (stop, overflow) = offset.addingReportingOverflow(n)
        guard !overflow else { throw .badLength(offset: offset, length: n) }
        guard stop <= end else { throw .outOfBytes(offset: offset, wanted: n, available: remaining) }
        return offset
    }

    /// An unsigned or signed integer of `T`'s width in the given byte order.
    mutating func integer<T: FixedWidthInteger>(_: T.Type, _ order: Endianness) throws(Failure) -> T {
        let width = T.bitWidth / 8
        let at = try start(of: width)
        var v: T = 0
        for i in 0..<width {
            let b = T(truncatingIfNeeded: bytes[at + i])
            v |= b << (8 * (order == .little ? i : width - 1 - i))
        }
        offset = at + width
        return v
    }

    /// An unsigned integer of `width` bytes (1 to 8) in the given byte order; other widths are a ``Failure/badLength(offset:length:)``.
    mutating func uint(width: Int, _ order: Endianness) throws(Failure) -> UInt64 {
        guard (1...8).contains(width) else { throw .badLength(offset: offset, length: width) }
        let at = try start(of: width)
        var v: UInt64 = 0
        for i in 0..<width {
            v |= UInt64(bytes[at + i]) << (8 * UInt64(order == .little ? i : width - 1 - i))
        }
        offset = at + width
        return v
    }

    mutating func u8() throws(Failure) -> UInt8 { try integer(UInt8.self, .little) }
    mutating func u16le() throws(Failure) -> UInt16 { try integer(UInt16.self, .little) }
    mutating func u32le() throws(Failure) -> UInt32 { try integer(UInt32.self, .little) }
    mutating func u64le() throws(Failure) -> UInt64 { try integer(UInt64.self, .little) }
    mutating func i32le() throws(Failure) -> Int32 { try integer(Int32.self, .little) }
    mutating func i64le() throws(Failure) -> Int64 { try integer(Int64.self, .little) }
    mutating func u16be() throws(Failure) -> UInt16 { try integer(UInt16.self, .big) }
    mutating func u32be() throws(Failure) -> UInt32 { try integer(UInt32.self, .big) }
    mutating func u64be() throws(Failure) -> UInt64 { try integer(UInt64.self, .big) }

    /// The next `n` bytes.
    mutating func bytes(_ n: Int) throws(Failure) -> ArraySlice<UInt8> {
        let at = try start(of: n)
        offset = at + n
        return bytes[at..<(at + n)]
    }

    /// A cursor over the next `n` bytes alone (a field whose length the input gives); this one moves past them.
    mutating func sub(_ n: Int) throws(Failure) -> ByteCursor {
        let at = try start(of: n)
        offset = at + n
        return ByteCursor(bytes, at: at, end: at + n)
    }

    /// Moves past `n` bytes.
    mutating func skip(_ n: Int) throws(Failure) {
        offset = try start(of: n) + n
    }

    /// A protobuf base-128 varint (little-endian groups of 7 bits, at most 10 bytes).
    mutating func varint() throws(Failure) -> UInt64 {
        let first = offset
        var v: UInt64 = 0
        for i in 0..<10 {
            let b = try u8()
            v |= UInt64(b & 0x7F) << (7 * UInt64(i))
            if b & 0x80 == 0 { return v }
        }
        throw .varintTooLong(offset: first)
    }
}
