internal import CLibzip

/// CRC-32 (the zip/zlib polynomial) computed with zlib's `crc32_z`.
enum ZipCRC32 {
    /// Continues `crc` over `bytes` (start from 0).
    @inline(__always)
    static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return UInt32(truncatingIfNeeded: crc32_z(UInt(crc), base.assumingMemoryBound(to: UInt8.self), bytes.count))
    }

    /// The CRC-32 of A followed by B, from the CRC-32s of A and B and B's length (zlib's `crc32_combine`).
    static func combine(_ a: UInt32, _ b: UInt32, lengthOfB: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: crc32_combine(UInt(a), UInt(b), Int(lengthOfB)))
    }

    /// CRC-32 of `bytes`.
    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { update(0, $0) }
    }
}
