import Foundation
import Testing
@testable import CkptCore

/// The in-kernel copy of stored records: bytes copied by copy_file_range, read back in pieces on a second thread
/// and checked against the source's CRC-32 (pieces combined with zlib's crc32_combine).
@Suite struct InKernelCopyTests {
    static func randomBytes(_ n: Int, seed: UInt64) -> [UInt8] {
        var g = SplitMix64(seed: seed)
        return (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    @Test(.enabled(if: ZipCRC32.usesCarrylessMultiply, "only this CPU path differs from zlib"))
    func carrylessCRCEqualsZlibAtEveryLengthAndAlignment() {
        let bytes = Self.randomBytes(70_000, seed: 4)
        bytes.withUnsafeBytes { raw in
            for start in [0, 1, 3, 8, 15] {
                for length in Array(0...300) + [4095, 4096, 4097, 65_536, 69_985] {
                    let part = UnsafeRawBufferPointer(rebasing: raw[start..<(start + length)])
                    for seed: UInt32 in [0, 0x1234_5678] {
                        #expect(ZipCRC32.update(seed, part) == ZipCRC32.zlibUpdate(seed, part), "\(start) \(length)")
                    }
                }
            }
        }
    }

    @Test func combinedCRCEqualsTheWholeCRC() {
        let bytes = Self.randomBytes(100_003, seed: 1)
        for cut in [0, 1, 4095, 4096, 50_000, 100_002, 100_003] {
            let a = ZipCRC32.checksum(Array(bytes[..<cut])), b = ZipCRC32.checksum(Array(bytes[cut...]))
            #expect(ZipCRC32.combine(a, b, lengthOfB: UInt64(bytes.count - cut)) == ZipCRC32.checksum(bytes))
        }
    }

    /// Writes an archive with one stored record and returns its path.
    static func source(_ bytes: [UInt8], in folder: URL) throws -> String {
        let path = folder.appendingPathComponent("src.pt").path
        let w = try TorchZipWriter(path: path, root: "src")
        try w.addRecord("data/0", bytes: bytes)
        try w.finish()
        return path
    }

    @Test func aRecordCopiedInManyPiecesIsExactAndChecked() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let bytes = Self.randomBytes(300_001, seed: 2)
        let reader = try ZipReader(path: try Self.source(bytes, in: folder))
        let entry = try reader.requireEntry(named: "data/0")
        let out = folder.appendingPathComponent("out.pt").path
        let w = try TorchZipWriter(path: out, root: "out")
        w.copyPieceSize = 4096  // 74 pieces
        try w.addRecord("data.pkl", bytes: [1, 2, 3])
        try w.beginRecord("data/0", size: entry.size, crc32: entry.crc32)
        var seen = 0
        #expect(try w.copyStoredRecordData(entry, from: reader) { seen += $0 })
        try w.endRecord()
        try w.finish()
        #expect(seen == bytes.count)
        let copy = try ZipReader(path: out)
        let e = try copy.requireEntry(named: "data/0")
        #expect(e.crc32 == entry.crc32)
        #expect(try copy.readAll(e, limit: 1 << 20) == bytes)  // readAll checks the CRC too
    }

    @Test func aDamagedSourceFailsTheCheckInAnyPiece() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let bytes = Self.randomBytes(300_001, seed: 3)
        let path = try Self.source(bytes, in: folder)
        let source = try ZipReader(path: path)
        let entry = try source.requireEntry(named: "data/0")
        var file = try ZipTestSupport.read(path)
        file[Int(try source.dataOffset(of: entry)!) + 250_000] ^= 0x40  // in the 62nd of 74 pieces
        try ZipTestSupport.write(file, to: path)
        let reader = try ZipReader(path: path)
        let w = try TorchZipWriter(path: folder.appendingPathComponent("out.pt").path, root: "out")
        w.copyPieceSize = 4096
        try w.beginRecord("data/0", size: entry.size, crc32: entry.crc32)
        #expect(throws: ZipError.self) { try w.copyStoredRecordData(entry, from: reader) }
        #expect(throws: ZipError.self, "the writer is failed after a bad copy") { try w.endRecord() }
    }
}

/// A deterministic generator for test data (SplitMix64).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
