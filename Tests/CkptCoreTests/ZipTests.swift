import Foundation
import Testing

@testable import CkptCore

/// A checkpoint written by torch itself, used as the oracle for the container layout.
struct ZipTorchCase: CustomTestStringConvertible, Sendable {
    let label: String
    let fileName: String
    let root: String
    /// Python that saves to `path`.
    let save: String

    var testDescription: String { label }

    static let all: [ZipTorchCase] = [
        ZipTorchCase(
            label: "several tensors, views and empties", fileName: "model.pt", root: "model",
            save: """
                base = torch.arange(10.)
                torch.save({"w": torch.randn(4, 3), "b": torch.zeros(3, dtype=torch.float16), "i": torch.arange(7),
                            "flag": torch.tensor([True, False]), "empty": torch.empty(0),
                            "empty2": torch.zeros(0, 5, dtype=torch.int8), "base": base, "view": base[2:5]}, path)
                """),
        ZipTorchCase(
            label: "a single empty tensor", fileName: "empty.pt", root: "empty",
            save: "torch.save(torch.empty(0), path)"),
        ZipTorchCase(
            label: "empty first storage", fileName: "e0.pt", root: "e0",
            save: #"torch.save({"e": torch.empty(0), "x": torch.ones(3), "f": torch.empty(0, dtype=torch.int64), "y": torch.arange(4)}, path)"#),
        ZipTorchCase(
            label: "saved to a buffer (root 'archive')", fileName: "buffer.pt", root: "archive",
            save: """
                buf = io.BytesIO()
                torch.save({"x": torch.randn(5), "e": torch.empty(0)}, buf)
                open(path, "wb").write(buf.getvalue())
                """),
        ZipTorchCase(
            label: "tensors larger than the write buffer", fileName: "large.pth", root: "large",
            save: #"torch.save({"big": torch.randn(1_500_000), "mid": torch.randn(1000, 300).half(), "s": torch.ones(1)}, path)"#),
        ZipTorchCase(
            label: "dotted base name", fileName: "my.model.v2.pth", root: "my.model.v2",
            save: #"torch.save({"a": torch.ones(2, 2)}, path)"#),
        ZipTorchCase(
            label: "storage_alignment 4096", fileName: "al.pt", root: "al",
            save: """
                config.save.storage_alignment = 4096
                torch.save({"a": torch.arange(10.), "b": torch.ones(3), "e": torch.empty(0)}, path)
                """),
        ZipTorchCase(
            label: "compute_crc32 off", fileName: "nocrc.pt", root: "nocrc",
            save: """
                config.save.compute_crc32 = False
                torch.save({"a": torch.arange(10.), "e": torch.empty(0)}, path)
                """),
        ZipTorchCase(
            label: "whole nn.Module", fileName: "net.pt", root: "net",
            save: """
                net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))
                torch.save(net, path)
                """),
    ]

    /// The path of this case's file, saved by torch (all cases are saved once per test run, in one python call).
    func saved() throws -> String {
        try ZipTorchCase.folder.get().appendingPathComponent(fileName).path
    }

    private static let folderPath = FileManager.default.temporaryDirectory
        .appendingPathComponent("ckpt-zip-torch-cases-\(getpid())").path

    private static let folder: Result<URL, any Error> = Result {
        let url = URL(fileURLWithPath: folderPath)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: ZipTorchCase.folderPath) }
        var script = "import io, os, sys, torch\nfrom torch.utils.serialization import config\n"
        for (i, torchCase) in all.enumerated() {
            script += "def case\(i)(path):\n"
            script += torchCase.save.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n") + "\n"
            script += "config.save.storage_alignment = 64\nconfig.save.compute_crc32 = True\n"
            script += "case\(i)(os.path.join(sys.argv[1], \(String(reflecting: torchCase.fileName))))\n"
        }
        try Oracle.run(script, [url.path])
        return url
    }
}

@Suite("Zip container")
struct ZipTests {
    // MARK: - Torch as the oracle

    @Test("rewriting a torch file record by record is byte-identical and loads in every torch mode", arguments: ZipTorchCase.all)
    func rewriteIsByteIdentical(_ torchCase: ZipTorchCase) throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let original = try torchCase.saved()
        let reader = try ZipReader(path: original)
        #expect(reader.root == torchCase.root)
        #expect(reader.entries.first?.name == torchCase.root + "/data.pkl")
        for entry in reader.entries {
            #expect(entry.method == .stored)
            let offset = try #require(try reader.dataOffset(of: entry))
            if entry.size > 0 { #expect(offset % 64 == 0, "\(entry.name) data at \(offset)") }
        }
        reader.close()

        let rewritten = folder.appendingPathComponent("rewritten.pt").path
        // Small chunks force many partial writes and buffer boundaries.
        try ZipTestSupport.rewrite(original, to: rewritten, streamAbove: 1000, chunkSize: 777_777)
        let difference = try ZipTestSupport.firstDifference(original, rewritten)
        #expect(difference == nil, "first differing byte: \(difference.map(String.init) ?? "-")")

        let output = try Oracle.run(ZipTestSupport.torchLoadCheck, [original, rewritten])
        #expect(Int(String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 > 0)
    }

    @Test("committed fixtures that are zips rewrite byte-identically")
    func fixturesRewriteByteIdentical() throws {
        let folder = Oracle.repoRoot.appendingPathComponent("fixtures")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []).filter {
            $0.hasSuffix(".pt") || $0.hasSuffix(".pth")
        }.sorted()
        let temp = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: temp) }
        for name in names {
            let path = folder.appendingPathComponent(name).path
            let isZip: Bool
            do {
                _ = try ZipReader(path: path)
                isZip = true
            } catch {
                guard case .notAZip = error else { throw error }
                isZip = false  // legacy (pre-1.6) container
            }
            if !isZip { continue }
            let out = temp.appendingPathComponent(name).path
            try ZipTestSupport.rewrite(path, to: out)
            #expect(try ZipTestSupport.firstDifference(path, out) == nil, "\(name)")
        }
    }

    @Test("torch's record order and sizes are what the reader lists")
    func entriesMatchPythonZipfile() throws {
        let path = try ZipTorchCase.all[0].saved()
        let listing = try Oracle.run(
            """
            import sys, zipfile
            for i in zipfile.ZipFile(sys.argv[1]).infolist():
                print(i.filename, i.file_size, i.CRC, i.header_offset)
            """, [path])
        let expected = String(decoding: listing, as: UTF8.self).split(separator: "\n").map(String.init)
        let reader = try ZipReader(path: path)
        let got = reader.entries.map { "\($0.name) \($0.size) \($0.crc32) \($0.headerOffset)" }
        #expect(got == expected)
        #expect(reader.entry(named: "data.pkl")?.index == 0)
        #expect(reader.entry(named: "byteorder").map { try? reader.readAll($0, limit: 100) } == [UInt8]("little".utf8))
        #expect(reader.entry(named: "version").map { try? reader.readAll($0, limit: 100) } == [UInt8]("3\n".utf8))
        #expect(reader.entry(named: "nope") == nil)
        #expect(throws: ZipError.missingRecord("model/nope")) { try reader.requireEntry(named: "nope") }
    }

    // MARK: - Reader failure modes

    @Test("a flipped data byte gives crcMismatch, through pread and through libzip")
    func crcMismatch() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = try ZipTorchCase.all[0].saved()
        let source = try ZipReader(path: path)
        let entry = try #require(source.entry(named: "data/0"))
        var bytes = try ZipTestSupport.read(path)
        bytes[Int(try source.dataOffset(of: entry)!) + 5] ^= 0x40
        let bad = folder.appendingPathComponent("crc-mismatch.pt").path
        try ZipTestSupport.write(bytes, to: bad)

        let reader = try ZipReader(path: bad)
        let flipped = try #require(reader.entry(named: "data/0"))
        for throughLibzip in [false, true] {
            reader.readsStoredThroughLibzip = throughLibzip
            #expect(throws: ZipError.self) { try reader.readAll(flipped, limit: 1 << 20) }
            do {
                try reader.stream(flipped, chunkSize: 7) { _ in }
                Issue.record("stream accepted a corrupted record")
            } catch let error as ZipError {
                guard case .crcMismatch(let record, let expected, let actual) = error else {
                    Issue.record("expected crcMismatch, got \(error)")
                    continue
                }
                #expect(record == "model/data/0")
                #expect(expected == entry.crc32)
                #expect(actual != expected)
            }
            // Other records still read.
            #expect(try reader.readAll(reader.entry(named: "byteorder")!, limit: 10) == [UInt8]("little".utf8))
        }
        // Copying the corrupted record fails the writer too.
        reader.readsStoredThroughLibzip = false
        let writer = try TorchZipWriter(path: folder.appendingPathComponent("copy.pt").path, root: "model")
        #expect {
            try writer.copyRecord(flipped, from: reader)
        } throws: { error in
            guard case ZipError.crcMismatch(let record, _, _) = error else { return false }
            return record == "model/data/0"
        }
        #expect(throws: ZipError.self) { try writer.finish() }
    }

    @Test("a legacy (pre-1.6) torch file, random bytes and an empty file are not zips")
    func notAZip() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let legacy = folder.appendingPathComponent("legacy.pt").path
        try Oracle.run(
            "import sys, torch; torch.save({'a': torch.ones(2)}, sys.argv[1], _use_new_zipfile_serialization=False)",
            [legacy])
        #expect(throws: ZipError.notAZip(path: legacy)) { try ZipReader(path: legacy) }

        let random = folder.appendingPathComponent("random.bin").path
        try ZipTestSupport.write((0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7919 &+ 13) }, to: random)
        #expect(throws: ZipError.notAZip(path: random)) { try ZipReader(path: random) }

        let empty = folder.appendingPathComponent("empty.pt").path
        try ZipTestSupport.write([], to: empty)
        #expect(throws: ZipError.notAZip(path: empty)) { try ZipReader(path: empty) }

        let missing = folder.appendingPathComponent("missing.pt").path
        #expect(throws: ZipError.self) { try ZipReader(path: missing) }
    }

    @Test("a torch file cut short is reported as truncated")
    func truncatedArchive() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = try ZipTorchCase.all[0].saved()
        let bytes = try ZipTestSupport.read(path)
        for cut in [bytes.count / 2, bytes.count - 1, 10, 25] {
            let bad = folder.appendingPathComponent("truncated-\(cut).pt").path
            try ZipTestSupport.write(Array(bytes[0..<cut]), to: bad)
            #expect(throws: ZipError.truncatedArchive(path: bad)) { try ZipReader(path: bad) }
        }
    }

    @Test("a record whose declared size runs past the end of the file is truncated")
    func recordPastEndOfFile() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = try ZipTorchCase.all[1].saved()  // data/0 is empty, serialization_id is last
        let reader = try ZipReader(path: path)
        let last = try #require(reader.entries.last)
        reader.close()
        // Patch the last record's sizes in its central directory entry to 1,000,000 bytes.
        var bytes = try ZipTestSupport.read(path)
        let name = [UInt8](last.name.utf8)
        let start = try #require(ZipTestsBytes.lastIndex(of: [0x50, 0x4b, 0x01, 0x02], in: bytes))
        #expect(Array(bytes[(start + 46)..<(start + 46 + name.count)]) == name)
        for field in [20, 24] {
            bytes.replaceSubrange((start + field)..<(start + field + 4), with: [0x40, 0x42, 0x0f, 0x00])
        }
        let bad = folder.appendingPathComponent("record-past-end.pt").path
        try ZipTestSupport.write(bytes, to: bad)
        #expect {
            try ZipReader(path: bad)
        } throws: { error in
            guard case ZipError.truncated(let record, _, let expected, _) = error else { return false }
            return record == last.name && expected == 1_000_000
        }
    }

    @Test("duplicate record names are refused")
    func duplicateRecord() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("duplicate-record.zip").path
        try Oracle.run(
            """
            import sys, zipfile, warnings
            warnings.simplefilter("ignore")
            with zipfile.ZipFile(sys.argv[1], "w") as z:
                z.writestr("a/data.pkl", b"one")
                z.writestr("a/data/0", b"x")
                z.writestr("a/data.pkl", b"two")
            """, [path])
        #expect(throws: ZipError.duplicateRecord("a/data.pkl")) { try ZipReader(path: path) }
    }

    @Test("unsafe record names are refused", arguments: ["../evil", "a/../../evil", "/etc/passwd", "a/./b", "a//b", "C:/x", "a\\b"])
    func unsafeRecordName(_ name: String) throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("unsafe-name.zip").path
        try Oracle.run(
            """
            import sys, zipfile
            with zipfile.ZipFile(sys.argv[1], "w") as z:
                z.writestr("a/data.pkl", b"one")
                z.writestr(zipfile.ZipInfo(sys.argv[2]), b"x")
            """, [path, name])
        #expect(throws: ZipError.unsafeRecordName(name)) { try ZipReader(path: path) }
    }

    @Test("recordTooLarge and tooManyRecords enforce the caller's limits")
    func limits() throws {
        let path = try ZipTorchCase.all[0].saved()
        let reader = try ZipReader(path: path)
        let pickle = try #require(reader.entry(named: "data.pkl"))
        #expect(throws: ZipError.recordTooLarge(name: "model/data.pkl", size: pickle.size, limit: 10)) {
            try reader.readAll(pickle, limit: 10)
        }
        #expect(try reader.readAll(pickle, limit: pickle.size).count == Int(pickle.size))
        #expect(throws: ZipError.tooManyRecords(count: UInt64(reader.entries.count), limit: 3)) {
            try ZipReader(path: path, maxRecords: 3)
        }
        reader.close()
        #expect(throws: ZipError.self) { try reader.readAll(pickle, limit: 1 << 20) }
    }

    @Test("deflated records are decoded by libzip in bounded chunks")
    func deflatedRecords() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("deflated.zip").path
        try Oracle.run(
            """
            import sys, zipfile
            with zipfile.ZipFile(sys.argv[1], "w", compression=zipfile.ZIP_DEFLATED) as z:
                z.writestr("d/text", b"hello torch " * 10000)
                z.writestr("d/empty", b"")
                z.writestr(zipfile.ZipInfo("d/stored"), b"plain")
            """, [path])
        let reader = try ZipReader(path: path)
        #expect(reader.root == "d")
        let text = try #require(reader.entry(named: "text"))
        #expect(text.method == .deflated)
        #expect(try reader.dataOffset(of: text) == nil)
        #expect(text.compressedSize < text.size)
        var chunks = 0
        var total = 0
        try reader.stream(text, chunkSize: 1000) { chunk in
            #expect(chunk.count <= 1000)
            chunks += 1
            total += chunk.count
        }
        #expect(total == 120_000 && chunks >= 120)
        #expect(try reader.readAll(text, limit: 1 << 20) == Array(String(repeating: "hello torch ", count: 10000).utf8))
        #expect(try reader.readAll(reader.entry(named: "empty")!, limit: 0) == [])
        #expect(try reader.readAll(reader.entry(named: "stored")!, limit: 5) == Array("plain".utf8))
    }

    @Test("a wrong crc on a deflated record gives crcMismatch when the archive opens (compressed records are inflated then)")
    func deflatedCRCMismatch() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("deflated-bad-crc.zip").path
        try Oracle.run(
            """
            import sys, zipfile, struct
            with zipfile.ZipFile(sys.argv[1], "w", compression=zipfile.ZIP_DEFLATED) as z:
                z.writestr("d/text", b"hello torch " * 1000)
            data = bytearray(open(sys.argv[1], "rb").read())
            info = zipfile.ZipFile(sys.argv[1]).infolist()[0]
            bad = struct.pack("<I", info.CRC ^ 1)
            data[info.header_offset + 14: info.header_offset + 18] = bad
            c = data.rfind(b"PK\\x01\\x02")
            data[c + 16: c + 20] = bad
            open(sys.argv[1], "wb").write(data)
            """, [path])
        #expect {
            try ZipReader(path: path)
        } throws: { error in
            guard case ZipError.crcMismatch(let record, let expected, let actual) = error else { return false }
            return record == "d/text" && expected == actual ^ 1
        }
    }

    @Test("an unsupported compression method is reported when the archive opens")
    func unsupportedCompression() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("method-97.zip").path
        try Oracle.run(
            """
            import sys, zipfile, struct
            with zipfile.ZipFile(sys.argv[1], "w") as z:
                z.writestr("d/odd", b"payload")
            data = bytearray(open(sys.argv[1], "rb").read())
            data[8:10] = struct.pack("<H", 97)
            c = data.rfind(b"PK\\x01\\x02")
            data[c + 10: c + 12] = struct.pack("<H", 97)
            open(sys.argv[1], "wb").write(data)
            """, [path])
        #expect(throws: ZipError.unsupportedCompression(record: "d/odd", method: 97)) {
            try ZipReader(path: path)
        }
    }

    @Test("a deflated record claiming more than 1032 times its compressed size, or inflating to another size, is refused at open")
    func deflatedSizeLies() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("deflated-lies.zip").path
        func write(claim: Int) throws {
            try Oracle.run(
                """
                import sys, zipfile, struct
                with zipfile.ZipFile(sys.argv[1], "w", compression=zipfile.ZIP_DEFLATED) as z:
                    z.writestr("d/text", b"hello torch " * 1000)
                data = bytearray(open(sys.argv[1], "rb").read())
                info = zipfile.ZipFile(sys.argv[1]).infolist()[0]
                data[info.header_offset + 22: info.header_offset + 26] = struct.pack("<I", int(sys.argv[2]))
                c = data.rfind(b"PK\\x01\\x02")
                data[c + 24: c + 28] = struct.pack("<I", int(sys.argv[2]))
                open(sys.argv[1], "wb").write(data)
                print(info.compress_size)
                """, [path, String(claim)])
        }
        try write(claim: 12_000)
        let compressed = try #require(ZipReader(path: path).entries.first?.compressedSize)
        try write(claim: Int(compressed) * 1032 + 1)
        #expect(throws: ZipError.impossibleExpansion(record: "d/text", size: compressed * 1032 + 1, compressedSize: compressed)) {
            try ZipReader(path: path)
        }
        try write(claim: Int(compressed) * 1032)  // possible for deflate, but not what these bytes inflate to
        #expect(throws: ZipError.inflatedSizeMismatch(record: "d/text", declared: compressed * 1032, inflated: 12_000)) {
            try ZipReader(path: path)
        }
        try write(claim: 11_000)
        #expect {
            try ZipReader(path: path)
        } throws: { error in
            guard case ZipError.inflatedSizeMismatch("d/text", 11_000, let got) = error else { return false }
            return got > 11_000
        }
    }

    @Test("mutated torch archives never crash the reader: each open and read succeeds or throws ZipError")
    func mutatedArchives() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let original = try ZipTestSupport.read(try ZipTorchCase.all[0].saved())
        let path = folder.appendingPathComponent("mutated.pt").path
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> Int {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return Int(state % UInt64(Int32.max))
        }
        let interesting: [UInt8] = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0x50, 0x4B]
        var opened = 0
        for round in 0..<1500 {
            var bytes = original
            for _ in 0..<(1 + next() % 4) {
                // Mostly the end records and the directory, sometimes anywhere.
                let at = round % 4 == 0 ? next() % bytes.count : bytes.count - 1 - next() % min(bytes.count, 700)
                bytes[at] = next() % 2 == 0 ? interesting[next() % interesting.count] : UInt8(truncatingIfNeeded: next())
            }
            try ZipTestSupport.write(bytes, to: path)
            do {
                let reader = try ZipReader(path: path)
                opened += 1
                for entry in reader.entries {
                    _ = try? reader.readAll(entry, limit: 1 << 20)
                }
            } catch {
                // Any ZipError is fine; the point is no crash, hang or trap.
            }
        }
        #expect(opened > 0)
    }

    @Test("errors read as one lowercase line with context")
    func errorDescriptions() {
        let errors: [ZipError] = [
            .notAZip(path: "x.pt"), .truncatedArchive(path: "x.pt"),
            .truncated(record: "a/data/0", offset: 10, expected: 20, got: 5),
            .inconsistent(path: "x.pt", detail: "d"), .crcMismatch(record: "a/data/0", expected: 1, actual: 2),
            .missingRecord("a/data.pkl"), .duplicateRecord("a/b"), .unsafeRecordName("../x"),
            .recordTooLarge(name: "a/b", size: 2, limit: 1), .tooManyRecords(count: 9, limit: 3),
            .unsupportedCompression(record: "a/b", method: 97), .encryptedRecord("a/b"),
            .sizeMismatch(record: "a/b", declared: 3, written: 2), .misuse("m"), .io("cannot open 'x'"),
        ]
        for error in errors {
            let text = error.description
            #expect(!text.contains("\n"))
            #expect(text.first.map { !$0.isUppercase } ?? false, "\(text)")
        }
        #expect(ZipError.crcMismatch(record: "a/data/0", expected: 0xAB, actual: 2).description.contains("0x000000ab"))
    }

    // MARK: - Writer

    @Test("the writer's output is a valid zip for python's zipfile and for the reader")
    func writerOutputIsValid() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("w.pt").path
        let writer = try TorchZipWriter(path: path, root: "w")
        try writer.addRecord("data.pkl", bytes: Array("pickle".utf8))
        try writer.addRecord("data/0", bytes: [])
        try writer.beginRecord("data/1", size: 10)
        for _ in 0..<2 { try [UInt8](repeating: 7, count: 5).withUnsafeBytes { try writer.write($0) } }
        try writer.endRecord()
        try writer.finish()

        let listing = try Oracle.run(
            """
            import sys, zipfile
            z = zipfile.ZipFile(sys.argv[1])
            assert z.testzip() is None
            print(" ".join(f"{i.filename}:{i.file_size}:{i.flag_bits}" for i in z.infolist()))
            """, [path])
        #expect(
            String(decoding: listing, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                == "w/data.pkl:6:2056 w/data/0:0:2048 w/data/1:10:2056")
        let reader = try ZipReader(path: path)
        #expect(try reader.readAll(reader.entry(named: "data/1")!, limit: 10) == [UInt8](repeating: 7, count: 10))
        #expect(try reader.entries.allSatisfy { try $0.size == 0 || reader.dataOffset(of: $0)! % 64 == 0 })
    }

    @Test("a streamed record must receive exactly its announced size")
    func sizeMismatch() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let short = try TorchZipWriter(path: folder.appendingPathComponent("short.pt").path, root: "r")
        try short.beginRecord("data/0", size: 10)
        try [UInt8](repeating: 1, count: 5).withUnsafeBytes { try short.write($0) }
        #expect(throws: ZipError.sizeMismatch(record: "r/data/0", declared: 10, written: 5)) { try short.endRecord() }
        #expect(throws: ZipError.self) { try short.finish() }

        let long = try TorchZipWriter(path: folder.appendingPathComponent("long.pt").path, root: "r")
        try long.beginRecord("data/0", size: 4)
        #expect(throws: ZipError.sizeMismatch(record: "r/data/0", declared: 4, written: 5)) {
            try [UInt8](repeating: 1, count: 5).withUnsafeBytes { try long.write($0) }
        }
    }

    @Test("a record rewritten after others keeps its place, gets its new bytes and CRC, and must keep its size")
    func rewriteRecord() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("late.pt").path
        let w = try TorchZipWriter(path: path, root: "late")
        try w.addRecord("data.pkl", bytes: Array("placeholder-0000".utf8))
        try w.addRecord("data/0", bytes: [UInt8](repeating: 7, count: 100_000))
        #expect(throws: ZipError.sizeMismatch(record: "late/data.pkl", declared: 16, written: 3)) {
            try w.rewriteRecord("data.pkl", bytes: [1, 2, 3])
        }
        try w.rewriteRecord("data.pkl", bytes: Array("the final value!".utf8))
        try w.addRecord("version", bytes: Array("3\n".utf8))
        try w.finish()
        let r = try ZipReader(path: path)
        #expect(r.entries.map(\.name) == ["late/data.pkl", "late/data/0", "late/version"])
        let e = try r.requireEntry(named: "data.pkl")
        #expect(try r.readAll(e, limit: 100) == Array("the final value!".utf8))  // checks the CRC
        #expect(e.crc32 == ZipCRC32.checksum(Array("the final value!".utf8)))
        #expect(try r.readAll(try r.requireEntry(named: "data/0"), limit: 1 << 20) == [UInt8](repeating: 7, count: 100_000))
    }

    @Test("writer calls out of order are misuse")
    func writerMisuse() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let writer = try TorchZipWriter(path: folder.appendingPathComponent("m.pt").path, root: "m")
        #expect(throws: ZipError.self) { try [UInt8]([1]).withUnsafeBytes { try writer.write($0) } }
        #expect(throws: ZipError.self) { try writer.endRecord() }
        try writer.beginRecord("a", size: 1)
        #expect(throws: ZipError.self) { try writer.beginRecord("b", size: 1) }
        #expect(throws: ZipError.self) { try writer.finish() }
        try [UInt8]([1]).withUnsafeBytes { try writer.write($0) }
        try writer.endRecord()
        try writer.finish()
        #expect(throws: ZipError.self) { try writer.addRecord("c", bytes: []) }
        #expect(throws: ZipError.self) { try writer.finish() }
    }

    @Test("the writer refuses duplicate and unsafe names and roots")
    func writerNames() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let writer = try TorchZipWriter(path: folder.appendingPathComponent("n.pt").path, root: "n")
        try writer.addRecord("data.pkl", bytes: [1])
        #expect(throws: ZipError.duplicateRecord("n/data.pkl")) { try writer.addRecord("data.pkl", bytes: [2]) }
        try writer.addRecord("a:b", bytes: [])  // a colon is only a drive letter at the start ("C:/x")
        for bad in ["../x", "/x", "a//b", "", "a/", ".", "a\\b"] {
            #expect(throws: ZipError.self, "\(bad)") { try writer.addRecord(bad, bytes: []) }
        }
        for badRoot in ["", "a/b", "..", "."] {
            #expect(throws: ZipError.self, "\(badRoot)") {
                try TorchZipWriter(path: folder.appendingPathComponent("r.pt").path, root: badRoot)
            }
        }
    }

    @Test("more than 65,535 records round-trip (zip64 record count)")
    func manyRecords() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("many.pt").path
        let count = 70_000
        let writer = try TorchZipWriter(path: path, root: "many")
        for i in 0..<count {
            try writer.addRecord("data/\(i)", bytes: i % 1000 == 0 ? [] : Array("\(i)".utf8))
        }
        try writer.finish()

        let reader = try ZipReader(path: path)
        #expect(reader.entries.count == count)
        #expect(reader.root == "many")
        for i in [0, 1, 999, 1000, 65_534, 65_535, 65_536, count - 1] {
            let entry = try #require(reader.entry(named: "data/\(i)"))
            #expect(entry.index == i)
            #expect(try reader.readAll(entry, limit: 100) == (i % 1000 == 0 ? [] : Array("\(i)".utf8)))
        }
        let listing = try Oracle.run(
            """
            import sys, zipfile
            z = zipfile.ZipFile(sys.argv[1])
            assert z.testzip() is None
            print(len(z.infolist()))
            """, [path])
        #expect(String(decoding: listing, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "\(count)")
    }

    // MARK: - AtomicOutput

    @Test("AtomicOutput replaces the file and leaves no temporary behind")
    func atomicReplace() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let final = folder.appendingPathComponent("out.pt").path
        try ZipTestSupport.write(Array("old".utf8), to: final)
        chmod(final, 0o600)
        var seenTemp = ""
        try AtomicOutput.write(to: final) { temp in
            seenTemp = temp
            #expect(temp.hasPrefix(folder.path + "/.out.pt.ckpt-tmp-\(getpid())-"))
            #expect(FileManager.default.fileExists(atPath: temp))
            try ZipTestSupport.write(Array("new".utf8), to: temp)
            #expect(try ZipTestSupport.read(final) == Array("old".utf8))
        }
        #expect(try ZipTestSupport.read(final) == Array("new".utf8))
        #expect(!FileManager.default.fileExists(atPath: seenTemp))
        let attributes = try FileManager.default.attributesOfItem(atPath: final)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["out.pt"])

        // A path with no folder part writes into the current folder (not exercised here: cwd is process-wide).
        #expect(AtomicOutput.split("fresh.pt") == (".", "fresh.pt"))
        #expect(AtomicOutput.split("/x.pt") == ("/", "x.pt"))
        #expect(AtomicOutput.split("a/b/c.pt") == ("a/b", "c.pt"))
    }

    @Test("AtomicOutput leaves the final file untouched when the body throws")
    func atomicFailure() throws {
        struct Boom: Error {}
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let final = folder.appendingPathComponent("keep.pt").path
        try ZipTestSupport.write(Array("precious".utf8), to: final)
        #expect(throws: Boom.self) {
            try AtomicOutput.write(to: final) { temp in
                try ZipTestSupport.write(Array("partial".utf8), to: temp)
                throw Boom()
            }
        }
        #expect(try ZipTestSupport.read(final) == Array("precious".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["keep.pt"])

        // A writer error inside the body behaves the same, and a missing final file stays missing.
        let absent = folder.appendingPathComponent("absent.pt").path
        #expect(throws: ZipError.self) {
            try AtomicOutput.write(to: absent) { temp in
                let writer = try TorchZipWriter(path: temp, root: "absent")
                try writer.beginRecord("data.pkl", size: 3)
                try writer.endRecord()
            }
        }
        #expect(!FileManager.default.fileExists(atPath: absent))
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["keep.pt"])

        #expect(throws: ZipError.self) {
            try AtomicOutput.write(to: folder.appendingPathComponent("no/such/dir/x.pt").path) { _ in }
        }
    }

    @Test("removeStaleTemps deletes temporaries of dead processes only")
    func staleTemps() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let final = folder.appendingPathComponent("m.pt").path
        // A pid that is certainly dead: a child that has exited and been reaped.
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/true")
        try child.run()
        child.waitUntilExit()
        let dead = child.processIdentifier
        let names = [
            ".m.pt.ckpt-tmp-\(dead)-abc",  // dead: removed
            ".m.pt.ckpt-tmp-\(getpid())-def",  // this process: kept
            ".m.pt.ckpt-tmp-1-0123",  // init, alive: kept
            ".other.pt.ckpt-tmp-\(dead)-abc",  // another file's temp: kept
            ".m.pt.ckpt-tmp-notapid",  // not ours: kept
            "m.pt",
        ]
        for name in names { try ZipTestSupport.write([0], to: folder.appendingPathComponent(name).path) }
        let removed = try AtomicOutput.removeStaleTemps(for: final)
        #expect(removed == [folder.appendingPathComponent(".m.pt.ckpt-tmp-\(dead)-abc").path])
        let left = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted()
        #expect(left == names.dropFirst().sorted())
    }
}

enum ZipTestsBytes {
    /// The start of the last occurrence of `needle` in `haystack`.
    static func lastIndex(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        var i = haystack.count - needle.count
        while i >= 0 {
            if Array(haystack[i..<(i + needle.count)]) == needle { return i }
            i -= 1
        }
        return nil
    }
}
