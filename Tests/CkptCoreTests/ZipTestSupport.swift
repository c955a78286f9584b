import Foundation
import Testing

@testable import CkptCore

/// Helpers shared by the Zip test files.
enum ZipTestSupport {
    /// Copies every record of `source` into a new archive at `dest` with ``TorchZipWriter``, in the same order,
    /// with the root, alignment and CRC setting torch used. Records above `streamAbove` bytes are streamed, alternately
    /// with ``TorchZipWriter/copyRecord(_:from:as:chunkSize:)`` and by hand with `beginRecord`/`write`/`endRecord`.
    static func rewrite(_ source: String, to dest: String, streamAbove: UInt64 = 1 << 20, chunkSize: Int = 1 << 20) throws {
        let reader = try ZipReader(path: source)
        defer { reader.close() }
        var alignment = 64
        if let entry = reader.entry(named: ".storage_alignment") {
            alignment = Int(String(decoding: try reader.readAll(entry, limit: 64), as: UTF8.self)) ?? 64
        }
        let computesCRC = reader.entries.contains { $0.size > 0 && $0.crc32 != 0 }
        let writer = try TorchZipWriter(path: dest, root: reader.root, alignment: alignment, computeCRC32: computesCRC)
        for entry in reader.entries {
            let relative = String(entry.name.dropFirst(reader.root.count + 1))
            if entry.size > streamAbove && entry.index % 2 == 0 {
                try writer.copyRecord(entry, from: reader, chunkSize: chunkSize)
            } else if entry.size > streamAbove {
                try writer.beginRecord(relative, size: entry.size)
                try reader.stream(entry, chunkSize: chunkSize) { try writer.write($0) }
                try writer.endRecord()
            } else {
                try writer.addRecord(relative, bytes: try reader.readAll(entry, limit: streamAbove))
            }
        }
        try writer.finish()
    }

    /// Compares two files in 8 MiB blocks; returns the first differing byte offset, or nil when identical.
    static func firstDifference(_ a: String, _ b: String) throws -> UInt64? {
        let fa = try FileHandle(forReadingFrom: URL(fileURLWithPath: a))
        let fb = try FileHandle(forReadingFrom: URL(fileURLWithPath: b))
        defer {
            try? fa.close()
            try? fb.close()
        }
        var offset: UInt64 = 0
        while true {
            let da = try fa.read(upToCount: 8 << 20) ?? Data()
            let db = try fb.read(upToCount: 8 << 20) ?? Data()
            if da != db {
                let n = min(da.count, db.count)
                let i = (0..<n).first { da[da.startIndex + $0] != db[db.startIndex + $0] } ?? n
                return offset + UInt64(i)
            }
            if da.isEmpty { return nil }
            offset += UInt64(da.count)
        }
    }

    /// Loads `rewritten` with torch in every mode that trusts the layout (mmap, computed storage offsets with
    /// TORCH_SERIALIZATION_DEBUG asserts) and checks every tensor equals the one in `original`.
    static let torchLoadCheck = """
        import os, sys, torch
        from torch.utils.serialization import config
        os.environ["TORCH_SERIALIZATION_DEBUG"] = "1"
        original, rewritten = sys.argv[1], sys.argv[2]
        def flat(o, k=""):
            if isinstance(o, torch.nn.Module):
                o = o.state_dict()
            if isinstance(o, torch.Tensor):
                yield k, o
            elif isinstance(o, dict):
                for kk, v in o.items():
                    yield from flat(v, f"{k}.{kk}")
            elif isinstance(o, (list, tuple)):
                for i, v in enumerate(o):
                    yield from flat(v, f"{k}.{i}")
        reference = dict(flat(torch.load(original, weights_only=False)))
        for calculate in (False, True):
            config.load.calculate_storage_offsets = calculate
            for mmap in (False, True):
                got = dict(flat(torch.load(rewritten, mmap=mmap, weights_only=False)))
                assert got.keys() == reference.keys(), (calculate, mmap, got.keys())
                for k, r in reference.items():
                    g = got[k]
                    assert g.dtype == r.dtype and g.shape == r.shape and torch.equal(g, r), (k, calculate, mmap)
        print(len(reference))
        """

    /// Writes `bytes` to a new file.
    static func write(_ bytes: [UInt8], to path: String) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// A file's bytes.
    static func read(_ path: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Whether `CKPT_SLOW_TESTS=1`.
    static var slowTestsEnabled: Bool { ProcessInfo.processInfo.environment["CKPT_SLOW_TESTS"] == "1" }

    /// Free bytes on the file system holding the temporary folder.
    static var freeTempBytes: UInt64 {
        var info = statvfs()
        guard statvfs(FileManager.default.temporaryDirectory.path, &info) == 0 else { return 0 }
        return UInt64(info.f_bavail) * UInt64(info.f_frsize)
    }
}
