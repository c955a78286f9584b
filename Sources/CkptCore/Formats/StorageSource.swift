import Foundation

/// Where a checkpoint's storage bytes live: the read half of a format adapter.
///
/// Every container format (torch zip, legacy `.pth`, safetensors, a sharded set, ONNX) opens as the same pair: a
/// ``PickleGraph`` (for the formats that are not pickles, exactly what `torch.save` would pickle for their state dict)
/// and a storage source that serves each storage's bytes, by the key the graph's persistent ids name, from the right
/// file at the right offset. Bytes are only ever streamed in bounded chunks or read in bounded ranges.
///
/// Faults of the source are thrown as ``CheckpointError`` (or ``ZipError``); errors thrown by `body` pass through.
protocol StorageSource: AnyObject {
    /// The size in bytes of a storage's bytes, or nil when the storage does not exist.
    func storageBytes(_ key: String) -> Int64?
    /// Streams all bytes of a storage in order, in chunks of at most `chunkSize` bytes, with whatever integrity
    /// check the container has (the zip CRC-32).
    func stream(_ key: String, chunkSize: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws
    /// Reads exactly `buffer.count` bytes of a storage starting at byte `offset` (no checksum: a part cannot be
    /// checked). The range must lie inside the storage.
    func read(_ key: String, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws
    /// The names the container lists (zip record names, legacy storage keys, tensor names).
    var recordNames: [String] { get }
    /// The CRC-32 the container declares for a whole storage, when it declares one (zip records).
    func checksum(_ key: String) -> (record: String, crc: UInt32)?
    /// The zip record that holds a storage's bytes as they are, with the reader that has it open, when the source
    /// keeps storages so (a torch zip): where DeepSpeed's reader finds the flat partitions it cuts tensors from,
    /// checked or not. Nil by default.
    func zipRecord(forStorage key: String) -> ZipRecordHandle?
    /// Byte ranges of files that, one after another, are a storage's bytes as stored, each with the CRC-32 its
    /// container declares for it (a torch zip record; a DCP folder's chunk records), when the source keeps the
    /// storage so: the torch writer then copies them inside the kernel and checks them
    /// (``TorchZipWriter/copyStoredPieces(_:progress:)``). Nil by default: the writer streams the bytes.
    func storedPieces(forStorage key: String) throws -> [StoredPiece]?
    /// The error for a stored piece whose bytes do not match its CRC-32 (``storedPieces(forStorage:)``), in the
    /// words the source uses for its own checks. By default the zip record's ``ZipError/crcMismatch(record:expected:actual:)``.
    func corruptedPiece(_ name: String, declared: UInt32, actual: UInt32) -> Error
    /// Checks, before a writer writes anything, that these storages can be read whole (all when nil): a source
    /// that gathers storages from pieces (``GatheredSource``) locates and checks every piece, so a damaged one
    /// refuses the output instead of failing half-way. Nothing by default.
    func prepare(_ keys: [String]?) throws
}

/// A zip record holding a storage's bytes, and the reader it is read through (see
/// ``StorageSource/zipRecord(forStorage:)``).
struct ZipRecordHandle {
    let reader: ZipReader
    let entry: ZipEntry
}

extension StorageSource {
    func checksum(_ key: String) -> (record: String, crc: UInt32)? { nil }
    func zipRecord(forStorage key: String) -> ZipRecordHandle? { nil }
    func storedPieces(forStorage key: String) throws -> [StoredPiece]? { nil }
    func corruptedPiece(_ name: String, declared: UInt32, actual: UInt32) -> Error {
        CheckpointError.container(.crcMismatch(record: name, expected: declared, actual: actual))
    }
    func prepare(_ keys: [String]?) throws {}

    /// Throws unless `[offset, offset + count)` lies inside the storage.
    func checkRange(_ key: String, _ offset: Int64, _ count: Int) throws {
        guard let size = storageBytes(key) else { throw CheckpointError.missingRecord("storage \(key)") }
        let (end, o) = offset.addingReportingOverflow(Int64(count))
        guard offset >= 0, !o, end <= size else {
            throw CheckpointError.io("read of bytes \(offset)..<\(end) is outside the \(size)-byte storage \(key)")
        }
    }
}

/// The storages of a torch zip checkpoint: the records `<root>/data/<key>`.
final class ZipStorageSource: StorageSource {
    let zip: ZipReader
    /// `<root>/data/`: a storage's record is this and its key (looked up for every storage at open).
    private let dataPrefix: String

    init(_ zip: ZipReader) {
        self.zip = zip
        dataPrefix = zip.root.isEmpty ? "data/" : zip.root + "/data/"
    }

    private func entry(_ key: String) throws -> ZipEntry {
        guard let e = zip.entry(fullName: dataPrefix + key) else {
            throw CheckpointError.missingRecord("\(zip.root)/data/\(key)")
        }
        return e
    }

    func storageBytes(_ key: String) -> Int64? { zip.entry(fullName: dataPrefix + key).map { Int64($0.size) } }

    func stream(_ key: String, chunkSize: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        try zip.stream(try entry(key), chunkSize: chunkSize, body)
    }

    func read(_ key: String, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(key, offset, buffer.count)
        try zip.read(try entry(key), at: UInt64(offset), into: buffer)
    }

    var recordNames: [String] { zip.entries.map(\.name) }

    func checksum(_ key: String) -> (record: String, crc: UInt32)? {
        guard let e = zip.entry(fullName: dataPrefix + key), e.hasChecksum else { return nil }
        return (e.name, e.crc32)
    }

    func zipRecord(forStorage key: String) -> ZipRecordHandle? {
        zip.entry(fullName: dataPrefix + key).map { ZipRecordHandle(reader: zip, entry: $0) }
    }

    /// The record's data, when it is stored (not compressed), declares a CRC-32 and is read straight from the file.
    func storedPieces(forStorage key: String) throws -> [StoredPiece]? {
        guard let e = zip.entry(fullName: dataPrefix + key) else { return nil }
        do { return try StoredPiece.record(e, of: zip).map { [$0] } } catch { throw CheckpointError.container(error) }
    }
}

/// Storages that lie at known ranges of one file, back to back with other data: the legacy `.pth` stream
/// (``LegacyReader``) and the torch 0.1.x tar format (``LegacyTarReader``).
final class FileStorageTable: StorageSource {
    let handle: FileHandle
    /// Storage key -> (offset of its bytes, byte count).
    let storages: [String: (offset: UInt64, bytes: UInt64)]
    /// The keys in file order.
    let order: [String]

    init(handle: FileHandle, storages: [String: (offset: UInt64, bytes: UInt64)], order: [String]) {
        self.handle = handle
        self.storages = storages
        self.order = order
    }

    func storageBytes(_ key: String) -> Int64? { storages[key].map { Int64($0.bytes) } }

    func stream(_ key: String, chunkSize: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard let s = storages[key] else { throw CheckpointError.missingRecord("legacy storage \(key)") }
        try handle.seek(toOffset: s.offset)
        var left = s.bytes
        while left > 0 {
            let n = Int(min(UInt64(chunkSize), left))
            let d = handle.readData(ofLength: n)
            guard d.count == n else { throw CheckpointError.notACheckpoint("storage \(key) is cut short") }
            try d.withUnsafeBytes { try body($0) }
            left -= UInt64(n)
        }
    }

    func read(_ key: String, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(key, offset, buffer.count)
        guard let s = storages[key] else { throw CheckpointError.missingRecord("legacy storage \(key)") }
        guard !buffer.isEmpty else { return }
        try handle.seek(toOffset: s.offset + UInt64(offset))
        let d = handle.readData(ofLength: buffer.count)
        guard d.count == buffer.count else { throw CheckpointError.notACheckpoint("storage \(key) is cut short") }
        _ = d.copyBytes(to: buffer.bindMemory(to: UInt8.self))
    }

    var recordNames: [String] { order }
}

/// Exact reads from a file through ``ZipFileHandle`` (plain `pread`), with errors as ``CheckpointError``.
enum FileRange {
    /// Reads exactly `buffer.count` bytes at `offset`; a short read means the file was cut short.
    static func read(_ file: ZipFileHandle, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
                     what: String) throws(CheckpointError)
    {
        guard buffer.count > 0 else { return }
        let got: Int
        do { got = try file.read(into: buffer, at: offset) } catch { throw .io(error.description) }
        guard got == buffer.count else {
            throw .io("\(what) is cut short: the file ends at byte \(offset + UInt64(got))")
        }
    }

    /// Reads exactly `count` bytes at `offset` into a new array.
    static func readBytes(_ file: ZipFileHandle, at offset: UInt64, count: Int, what: String) throws(CheckpointError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        do {
            try out.withUnsafeMutableBytes { try read(file, at: offset, into: $0, what: what) }
        } catch let e as CheckpointError {
            throw e
        } catch {
            throw .io("\(error)")
        }
        return out
    }

    /// Streams `[offset, offset + count)` of a file in chunks of at most `chunkSize` bytes.
    static func stream(_ file: ZipFileHandle, offset: UInt64, count: UInt64, chunkSize: Int, what: String,
                       _ body: (UnsafeRawBufferPointer) throws -> Void) throws
    {
        guard count > 0 else { return }
        let size = Int(min(UInt64(max(chunkSize, 1)), count))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { buffer.deallocate() }
        if count >= 64 << 20 { file.adviseSequential() }
        var done: UInt64 = 0
        while done < count {
            let n = Int(min(UInt64(size), count - done))
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
            try read(file, at: offset + done, into: part, what: what)
            try body(UnsafeRawBufferPointer(part))
            done += UInt64(n)
        }
    }

    /// Opens a file for reading, with errors as ``CheckpointError``.
    static func open(_ path: String) throws(CheckpointError) -> ZipFileHandle {
        do { return try ZipFileHandle.openForReading(path) } catch { throw .io(error.description) }
    }

    /// A file's size.
    static func size(_ file: ZipFileHandle) throws(CheckpointError) -> UInt64 {
        do { return try file.size() } catch { throw .io(error.description) }
    }
}
