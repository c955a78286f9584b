internal import CSys

/// CRC-32 (the zip/zlib polynomial): carry-less multiplication (PCLMULQDQ, ~4x zlib here) for runs of 64 bytes
/// and more on x86-64 CPUs that have it, zlib's `crc32_z` for the rest. Every storage byte ckpt reads or copies is
/// checksummed once, so this is the floor of a checked copy.
enum ZipCRC32 {
    #if arch(x86_64)
    static let usesCarrylessMultiply = ckpt_crc32_clmul_available() != 0
    #else
    static let usesCarrylessMultiply = false
    #endif

    /// Continues `crc` over `bytes` (start from 0).
    @inline(__always)
    static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        let p = base.assumingMemoryBound(to: UInt8.self)
        #if arch(x86_64)
        if bytes.count >= 64, usesCarrylessMultiply {
            let whole = bytes.count & ~15
            let c = ckpt_crc32_clmul(crc, p, whole)
            return whole == bytes.count ? c : zlibUpdate(c, UnsafeRawBufferPointer(rebasing: bytes[whole...]))
        }
        #endif
        return UInt32(truncatingIfNeeded: crc32_z(UInt(crc), p, bytes.count))
    }

    /// zlib's own `crc32_z`, whatever the CPU (the reference the fast path is tested against).
    static func zlibUpdate(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
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
