import Foundation
import Testing

@testable import CkptCore

/// Multi-gigabyte tests, run with `CKPT_SLOW_TESTS=1`. They write 4+ GiB files to the temporary folder and are
/// skipped when it has less than 12 GB free.
@Suite(
    "Zip container, multi-gigabyte", .serialized,
    .enabled(if: ZipTestSupport.slowTestsEnabled, "set CKPT_SLOW_TESTS=1 to run"))
struct ZipSlowTests {
    static let hasRoom = ZipTestSupport.freeTempBytes >= 12_000_000_000

    @Test("a record over 4 GiB and records past the 4 GiB offset use zip64 and read back", .enabled(if: hasRoom, "needs 12 GB free"))
    func zip64Records() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("big.pt").path
        let bigSize: UInt64 = (1 << 32) + 1000
        let writer = try TorchZipWriter(path: path, root: "big")
        try writer.addRecord("data.pkl", bytes: Array("pickle".utf8))
        try writer.beginRecord("data/0", size: bigSize)
        let zeros = [UInt8](repeating: 0, count: 4 << 20)
        var left = bigSize
        try zeros.withUnsafeBytes { raw in
            while left > 0 {
                let n = Int(min(UInt64(raw.count), left))
                try writer.write(UnsafeRawBufferPointer(rebasing: raw[0..<n]))
                left -= UInt64(n)
            }
        }
        try writer.endRecord()
        try writer.addRecord("data/1", bytes: Array("after".utf8))
        try writer.addRecord("data/2", bytes: [])
        try writer.finish()

        let reader = try ZipReader(path: path)
        let big = try #require(reader.entry(named: "data/0"))
        #expect(big.size == bigSize && big.compressedSize == bigSize)
        #expect(try reader.dataOffset(of: big)! % 64 == 0)
        let after = try #require(reader.entry(named: "data/1"))
        #expect(after.headerOffset > 0xFFFF_FFFF)
        #expect(try reader.dataOffset(of: after)! % 64 == 0)
        #expect(try reader.readAll(after, limit: 10) == Array("after".utf8))
        #expect(try reader.readAll(reader.entry(named: "data/2")!, limit: 10) == [])
        var total: UInt64 = 0
        var nonZero = false
        try reader.stream(big, chunkSize: 8 << 20) { chunk in  // throws crcMismatch if the CRC is wrong
            total += UInt64(chunk.count)
            if !nonZero, chunk.contains(where: { $0 != 0 }) { nonZero = true }
        }
        #expect(total == bigSize && !nonZero)

        let listing = try Oracle.run(
            """
            import sys, zipfile
            z = zipfile.ZipFile(sys.argv[1])
            for i in z.infolist():
                print(i.filename, i.file_size, i.compress_size, i.header_offset, i.CRC)
            assert z.read("big/data/1") == b"after" and z.read("big/data/2") == b""
            """, [path])
        let expected = reader.entries.map { "\($0.name) \($0.size) \($0.compressedSize) \($0.headerOffset) \($0.crc32)" }
        #expect(String(decoding: listing, as: UTF8.self).split(separator: "\n").map(String.init) == expected)
    }

    @Test("a torch file with a 4 GiB storage rewrites byte-identically", .enabled(if: hasRoom, "needs 12 GB free"))
    func torchZip64RewriteIsByteIdentical() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let original = folder.appendingPathComponent("huge.pt").path
        try Oracle.run(
            """
            import sys, torch
            big = torch.zeros(2**32 + 64, dtype=torch.uint8)
            big[-1] = 7
            torch.save({"big": big, "after": torch.arange(5), "e": torch.empty(0), "last": torch.ones(3)}, sys.argv[1])
            """, [original])
        let rewritten = folder.appendingPathComponent("rewritten.pt").path
        try ZipTestSupport.rewrite(original, to: rewritten, chunkSize: 8 << 20)
        let difference = try ZipTestSupport.firstDifference(original, rewritten)
        #expect(difference == nil, "first differing byte: \(difference.map(String.init) ?? "-")")
        let output = try Oracle.run(ZipTestSupport.torchLoadCheck, [original, rewritten])
        #expect(String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "4")
    }

    @Test("streaming a 500 MB stored record runs at pread + crc32 speed")
    func streamingSpeed() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("speed.pt").path
        let size: UInt64 = 500_000_000
        var block = [UInt8](repeating: 0, count: 4 << 20)
        for i in block.indices { block[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }

        let clock = ContinuousClock()
        let writeTime = try clock.measure {
            let writer = try TorchZipWriter(path: path, root: "speed")
            try writer.beginRecord("data/0", size: size)
            var left = size
            try block.withUnsafeBytes { raw in
                while left > 0 {
                    let n = Int(min(UInt64(raw.count), left))
                    try writer.write(UnsafeRawBufferPointer(rebasing: raw[0..<n]))
                    left -= UInt64(n)
                }
            }
            try writer.endRecord()
            try writer.finish()
        }

        let reader = try ZipReader(path: path)
        let entry = try #require(reader.entry(named: "data/0"))
        func rate(_ duration: Duration) -> Double {
            let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
            return Double(size) / 1e6 / seconds
        }
        func readOnce() throws -> Duration {
            try clock.measure {
                var total: UInt64 = 0
                try reader.stream(entry) { total += UInt64($0.count) }
                #expect(total == size)
            }
        }
        _ = try readOnce()  // warm the page cache
        let preadTime = try readOnce()
        reader.readsStoredThroughLibzip = true
        let libzipTime = try readOnce()
        reader.readsStoredThroughLibzip = false

        let copyPath = folder.appendingPathComponent("copy.pt").path
        let copyTime = try clock.measure {
            let copy = try TorchZipWriter(path: copyPath, root: "speed")
            try copy.copyRecord(entry, from: reader)
            try copy.finish()
        }
        #expect(try ZipTestSupport.firstDifference(path, copyPath) == nil)

        // Baseline: plain pread of the same bytes with no CRC.
        let file = try ZipFileHandle.openForReading(path)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        let baseline = try clock.measure {
            var offset = try reader.dataOffset(of: entry)!
            let end = offset + size
            while offset < end {
                let n = Int(min(UInt64(buffer.count), end - offset))
                offset += UInt64(try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]), at: offset))
            }
        }
        let crcTime = clock.measure {
            var crc: UInt32 = 0
            for _ in 0..<Int(size / UInt64(block.count)) { crc = block.withUnsafeBytes { ZipCRC32.update(crc, $0) } }
            #expect(crc != 1)
        }
        let report = String(
            format: "zip speed (MB/s): write+fsync %.0f, copyRecord+fsync %.0f, stream via pread+crc %.0f, via libzip %.0f, bare pread %.0f, zlib crc32 alone %.0f",
            rate(writeTime), rate(copyTime), rate(preadTime), rate(libzipTime), rate(baseline), rate(crcTime))
        print(report)
        // Reading stored data costs a pread plus a CRC; on a shared machine only a relative bound is stable.
        #expect(rate(preadTime) >= 0.5 * min(rate(baseline), rate(crcTime)), "\(report)")
    }
}
