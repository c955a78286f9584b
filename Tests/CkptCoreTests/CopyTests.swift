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
        let piece = try #require(try StoredPiece.record(entry, of: reader))
        #expect(try w.copyStoredPieces([piece]) { seen += $0 })
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
        let piece = try #require(try StoredPiece.record(entry, of: reader))
        #expect(throws: ZipError.self) { try w.copyStoredPieces([piece]) }
        #expect(throws: ZipError.self, "the writer is failed after a bad copy") { try w.endRecord() }
    }

    /// Three pieces cut from two plain files (a DCP tensor's chunk records, in the tensor's order), each with the
    /// CRC-32 of its bytes.
    static func pieces(in folder: URL, flip: Int? = nil) throws -> (pieces: [StoredPiece], bytes: [UInt8]) {
        let a = Self.randomBytes(50_000, seed: 5), b = Self.randomBytes(80_000, seed: 6)
        var bOnDisk = b
        if let flip { bOnDisk[flip] ^= 0x10 }
        let pa = folder.appendingPathComponent("a.bin").path, pb = folder.appendingPathComponent("b.bin").path
        try ZipTestSupport.write(a, to: pa)
        try ZipTestSupport.write(bOnDisk, to: pb)
        let fa = try ZipFileHandle.openForReading(pa), fb = try ZipFileHandle.openForReading(pb)
        let cuts: [(ZipFileHandle, [UInt8], Range<Int>, String)] = [
            (fb, b, 100..<30_100, "b first"), (fa, a, 7..<49_999, "a"), (fb, b, 30_100..<80_000, "b second"),
        ]
        let pieces = cuts.map { f, bytes, r, name in
            StoredPiece(file: f, offset: UInt64(r.lowerBound), count: UInt64(r.count),
                        crc: ZipCRC32.checksum(Array(bytes[r])), name: name)
        }
        return (pieces, cuts.flatMap { _, bytes, r, _ in bytes[r] })
    }

    @Test func piecesOfSeveralFilesAreCopiedInOrderUnderTheirCombinedCRC() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let (pieces, bytes) = try Self.pieces(in: folder)
        let combined = pieces.reduce(UInt32(0)) { ZipCRC32.combine($0, $1.crc, lengthOfB: $1.count) }
        #expect(combined == ZipCRC32.checksum(bytes))
        let out = folder.appendingPathComponent("out.pt").path
        let w = try TorchZipWriter(path: out, root: "out")
        w.copyPieceSize = 4096  // parts of each piece, checked on the second thread
        try w.beginRecord("data/0", size: UInt64(bytes.count), crc32: combined)
        var seen = 0
        #expect(try w.copyStoredPieces(pieces) { seen += $0 })
        try w.endRecord()
        try w.finish()
        #expect(seen == bytes.count)
        let copy = try ZipReader(path: out)
        #expect(try copy.readAll(try copy.requireEntry(named: "data/0"), limit: 1 << 20) == bytes)  // checks the CRC
    }

    @Test func aRecordBegunWithAnotherCRCIsNotCopied() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let (pieces, bytes) = try Self.pieces(in: folder)
        let w = try TorchZipWriter(path: folder.appendingPathComponent("out.pt").path, root: "out")
        try w.beginRecord("data/0", size: UInt64(bytes.count), crc32: ZipCRC32.checksum(bytes) ^ 1)
        #expect(try !w.copyStoredPieces(pieces), "the record's CRC would not be its bytes'")
        try bytes.withUnsafeBytes { try w.write($0) }  // nothing was written: the caller streams instead
        try w.endRecord()
    }

    @Test func aDamagedPieceIsNamed() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let (pieces, bytes) = try Self.pieces(in: folder, flip: 60_000)  // in "b second"
        let combined = pieces.reduce(UInt32(0)) { ZipCRC32.combine($0, $1.crc, lengthOfB: $1.count) }
        let w = try TorchZipWriter(path: folder.appendingPathComponent("out.pt").path, root: "out")
        w.copyPieceSize = 4096
        try w.beginRecord("data/0", size: UInt64(bytes.count), crc32: combined)
        #expect {
            try w.copyStoredPieces(pieces)
        } throws: { error in
            guard case ZipError.crcMismatch(let record, let expected, _) = error else { return false }
            return record == "b second" && expected == pieces[2].crc
        }
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
