import Foundation

/// Writes a zip archive byte for byte the way `torch.save` does (caffe2's `PyTorchStreamWriter` on miniz).
///
/// Layout of one record (everything little-endian):
///
///     local header (30 bytes): PK\3\4, version needed 0, flags 0x0808 (0x0800 when empty), method 0 (stored),
///                              time 0, date 0, crc 0, sizes 0, name length, extra length
///     name                     root + "/" + relative name
///     [zip64 extra]            id 1, then size and 0 (if size >= 0xFFFFFFFF), then header offset (if >= 0xFFFFFFFF)
///     "FB" extra               id 0x4246, length n, n x 'Z', with n making the data start at a multiple of `alignment`
///     data
///     [data descriptor]        only when size > 0: PK\7\8, crc, sizes (32-bit: 16 bytes; 64-bit: 24 bytes whenever
///                              the record has a zip64 extra)
///
/// then the central directory (one 46-byte entry per record: version made by 0, needed 0, same flags, time/date 0,
/// crc, sizes and header offset capped at 0xFFFFFFFF, a zip64 extra holding the capped values, no attributes), a zip64
/// end-of-central-directory record (made by 0x031E, needed 45) and locator, which torch always writes, and the classic
/// end record with counts capped at 0xFFFF and sizes/offsets at 0xFFFFFFFF.
///
/// Records are written in call order. When the archive carries `.format_version`, torch may compute storage offsets
/// instead of reading the directory (`calculate_storage_offsets`, meta/fake loading): it then assumes the first
/// storage the pickle uses is `data/0` and that each next storage in first-use order is the very next record.
/// Write storages in that order with nothing between them, or leave `.format_version` out.
///
/// Writes go through a 4 MiB buffer; `finish()` flushes and fsyncs. The caller owns atomicity (see ``AtomicOutput``): a writer that is dropped or fails leaves a partial file behind.
public final class TorchZipWriter {
    /// The archive's root folder (for example the checkpoint's base name, or `archive`).
    public let root: String
    /// The path being written.
    public let path: String
    /// Data of every record starts at a multiple of this (torch's `.storage_alignment`, default 64).
    public let alignment: Int
    /// Whether CRC-32s are computed; `false` writes 0, as torch does with `config.save.compute_crc32 = False`.
    public let computesCRC32: Bool

    private struct Written {
        var name: [UInt8]
        var crc32: UInt32
        var size: UInt64
        var headerOffset: UInt64
        var flags: UInt16
        /// Where the record's data starts (after its local header).
        var dataOffset: UInt64
    }

    private struct Open {
        var relativeName: String
        var written: Written
        var count: UInt64 = 0
        var crc: UInt32 = 0
        /// Set when copying a record whose bytes the reader checks against this CRC.
        var knownCRC: UInt32? = nil
    }

    private enum State {
        case idle
        case inRecord(Open)
        case finished
        case failed
    }

    private var file: ZipFileHandle?
    private var state = State.idle
    private var offset: UInt64 = 0
    private var records: [Written] = []
    private var names: Set<String> = []
    private let buffer: UnsafeMutableRawBufferPointer
    private var buffered = 0

    private static let bufferSize = 4 << 20
    /// Chunks at least this large are written as they are, not through the buffer.
    static let directWriteBytes = 64 << 10
    /// Bytes written to the file (by write and copy_file_range), and where the range not yet handed to writeback
    /// starts; writeback is started every ``writebackBytes``.
    private var written: UInt64 = 0
    private var writebackFrom: UInt64 = 0
    static let writebackBytes: UInt64 = 32 << 20
    private static let max32: UInt64 = 0xFFFF_FFFF

    /// Creates (or truncates) `path` and starts an archive whose records live under `root`.
    ///
    /// - Parameters:
    ///   - alignment: the data alignment torch records in `.storage_alignment` (1...32768; torch's default is 64).
    ///   - computeCRC32: pass `false` only to reproduce files saved with `compute_crc32 = False`.
    public init(path: String, root: String, alignment: Int = 64, computeCRC32: Bool = true) throws(ZipError) {
        guard !root.isEmpty, !root.contains("/"), ZipNames.isSafe(root) else { throw ZipError.unsafeRecordName(root) }
        guard (1...32_768).contains(alignment) else {
            throw ZipError.misuse("alignment \(alignment) is outside 1...32768")
        }
        self.root = root
        self.path = path
        self.alignment = alignment
        self.computesCRC32 = computeCRC32
        self.buffer = .allocate(byteCount: Self.bufferSize, alignment: 64)
        do {
            self.file = try ZipFileHandle.openForWriting(path)
        } catch {
            buffer.deallocate()
            throw error
        }
    }

    deinit {
        buffer.deallocate()
        checkBuffer?.deallocate()
    }

    /// Writes a whole record (`name` is relative to the root, e.g. `data.pkl`, `data/0`, `.format_version`).
    public func addRecord(_ name: String, bytes: [UInt8]) throws(ZipError) {
        try beginRecord(name, size: UInt64(bytes.count))
        try withBytes(bytes) { (chunk) throws(ZipError) in try write(chunk) }
        try endRecord()
    }

    /// Starts a record whose size is known up front; feed it with ``write(_:)`` and close it with ``endRecord()``.
    ///
    /// - Parameter crc32: the CRC-32 of the bytes that will be written, when the caller already knows it: a record
    ///   copied unchanged from a ``ZipReader`` that verifies that same checksum as it streams (the copy then fails,
    ///   and its output is discarded, if the bytes do not match). The writer then does not compute it again.
    public func beginRecord(_ name: String, size: UInt64, crc32: UInt32? = nil) throws(ZipError) {
        guard case .idle = state else { throw misuseError("beginRecord('\(name)')") }
        let fullName = root + "/" + name
        guard ZipNames.isSafe(name), ZipNames.isSafe(fullName), !fullName.hasSuffix("/") else {
            throw ZipError.unsafeRecordName(fullName)
        }
        guard fullName.utf8.count <= 0xFFFF else { throw ZipError.unsafeRecordName(fullName) }
        guard !names.contains(name) else { throw ZipError.duplicateRecord(fullName) }

        let nameBytes = Array(fullName.utf8)
        let headerOffset = offset
        let bigSize = size >= Self.max32
        let bigOffset = headerOffset >= Self.max32

        var extra: [UInt8] = []
        if bigSize || bigOffset {
            // miniz writes the zip64 extra before the data, when the compressed size is still 0.
            extra.append(u16: 0x0001)
            extra.append(u16: UInt16((bigSize ? 16 : 0) + (bigOffset ? 8 : 0)))
            if bigSize {
                extra.append(u64: size)
                extra.append(u64: 0)
            }
            if bigOffset { extra.append(u64: headerOffset) }
        }
        // torch's getPadding: the "FB" field is always present and pads the data start to the alignment.
        let unpadded = headerOffset + 30 + UInt64(nameBytes.count) + UInt64(extra.count) + 4
        let padding = Int((UInt64(alignment) - unpadded % UInt64(alignment)) % UInt64(alignment))
        extra.append(u16: 0x4246)
        extra.append(u16: UInt16(padding))
        extra.append(contentsOf: repeatElement(UInt8(ascii: "Z"), count: padding))
        guard extra.count <= 0xFFFF else { throw ZipError.misuse("extra field for '\(fullName)' exceeds 65535 bytes") }

        let flags: UInt16 = size > 0 ? 0x0808 : 0x0800
        var header: [UInt8] = []
        header.reserveCapacity(30 + nameBytes.count + extra.count)
        header.append(u32: ZipCentralDirectory.localHeaderSignature)
        header.append(u16: 0)  // version needed: 0 for stored, as miniz writes
        header.append(u16: flags)
        header.append(u16: 0)  // method: stored
        header.append(u16: 0)  // time
        header.append(u16: 0)  // date
        header.append(u32: 0)  // crc (in the data descriptor)
        header.append(u32: 0)  // compressed size
        header.append(u32: 0)  // uncompressed size
        header.append(u16: UInt16(nameBytes.count))
        header.append(u16: UInt16(extra.count))
        header.append(contentsOf: nameBytes)
        header.append(contentsOf: extra)
        try emit(header)

        names.insert(name)
        state = .inRecord(
            Open(
                relativeName: name,
                written: Written(name: nameBytes, crc32: 0, size: size, headerOffset: headerOffset, flags: flags,
                                 dataOffset: headerOffset + UInt64(header.count)),
                knownCRC: crc32))
    }

    /// Appends bytes to the open record. Writing more than the announced size throws ``ZipError/sizeMismatch(record:declared:written:)``.
    public func write(_ chunk: UnsafeRawBufferPointer) throws(ZipError) {
        guard case .inRecord(var open) = state else { throw misuseError("write()") }
        let newCount = open.count + UInt64(chunk.count)
        guard newCount <= open.written.size else {
            state = .failed
            throw ZipError.sizeMismatch(
                record: root + "/" + open.relativeName, declared: open.written.size, written: newCount)
        }
        if computesCRC32 && open.knownCRC == nil { open.crc = ZipCRC32.update(open.crc, chunk) }
        open.count = newCount
        state = .inRecord(open)
        try emit(chunk)
    }

    /// Closes the open record: checks its size and writes its data descriptor.
    public func endRecord() throws(ZipError) {
        guard case .inRecord(var open) = state else { throw misuseError("endRecord()") }
        guard open.count == open.written.size else {
            state = .failed
            throw ZipError.sizeMismatch(
                record: root + "/" + open.relativeName, declared: open.written.size, written: open.count)
        }
        let crc = computesCRC32 ? (open.knownCRC ?? open.crc) : 0
        open.written.crc32 = crc
        let size = open.written.size
        if size > 0 {
            var descriptor: [UInt8] = []
            descriptor.append(u32: 0x0807_4b50)
            descriptor.append(u32: crc)
            if size >= Self.max32 || open.written.headerOffset >= Self.max32 {
                descriptor.append(u64: size)
                descriptor.append(u64: size)
            } else {
                descriptor.append(u32: UInt32(size))
                descriptor.append(u32: UInt32(size))
            }
            try emit(descriptor)
        }
        records.append(open.written)
        state = .idle
    }

    /// Replaces the bytes of a record written earlier with as many other bytes, and its CRC-32 (in its data
    /// descriptor, and in the central directory ``finish()`` writes): for a value known only after the records
    /// that follow it were written (``SurgeryPlan/lateStrings``). No record may be open.
    public func rewriteRecord(_ name: String, bytes: [UInt8]) throws(ZipError) {
        guard case .idle = state, let file else { throw misuseError("rewriteRecord('\(name)')") }
        let fullName = Array((root + "/" + name).utf8)
        guard let i = records.firstIndex(where: { $0.name == fullName }) else { throw ZipError.missingRecord(root + "/" + name) }
        guard records[i].size == UInt64(bytes.count) else {
            throw ZipError.sizeMismatch(record: root + "/" + name, declared: records[i].size, written: UInt64(bytes.count))
        }
        guard !bytes.isEmpty else { return }
        try flush()  // what is still buffered goes to its place first; the rewrite then lands over it
        let crc = computesCRC32 ? ZipCRC32.checksum(bytes) : 0
        do throws(ZipError) {
            try withBytes(bytes) { (raw) throws(ZipError) in try file.writeAll(raw, at: records[i].dataOffset) }
            // The data descriptor follows the data: its signature, then the CRC-32.
            try withBytes([UInt8]().appending(u32: crc)) { (raw) throws(ZipError) in
                try file.writeAll(raw, at: records[i].dataOffset + records[i].size + 4)
            }
        } catch {
            state = .failed
            throw error
        }
        records[i].crc32 = crc
    }

    /// Fills the open record with byte ranges of other files, one after another, without passing them through this
    /// process (copy_file_range), then reads them back from this file and checks each against its CRC-32: what is
    /// checked is what was written. Cheaper than streaming through a buffer: the copy stays in the page cache, and
    /// the check is one read and one CRC pass (a buffered copy is a read, a CRC pass and a write, and the record's
    /// CRC-32 a second pass).
    ///
    /// The record must have been begun with the pieces' combined CRC-32 (``ZipCRC32/combine(_:_:lengthOfB:)``) and
    /// their total size, and have had nothing written yet. Returns false, having written nothing, when it was not,
    /// or when the kernel cannot copy between the files: the caller then streams the bytes with ``write(_:)``.
    /// `progress` gets the bytes copied after each part.
    /// - Throws: ``ZipError/crcMismatch(record:expected:actual:)`` naming the first piece whose bytes do not match
    ///   its CRC (`record` is the piece's ``StoredPiece/name``), ``ZipError/truncated(record:offset:expected:got:)``,
    ///   ``ZipError/io(_:)``; the writer is then failed.
    func copyStoredPieces(_ pieces: [StoredPiece], progress: (Int) -> Void = { _ in }) throws(ZipError) -> Bool {
        let total = pieces.reduce(UInt64(0)) { $0 + $1.count }
        let combined = pieces.reduce(UInt32(0)) { ZipCRC32.combine($0, $1.crc, lengthOfB: $1.count) }
        guard case .inRecord(var open) = state, open.count == 0, open.written.size == total, total > 0, computesCRC32,
              open.knownCRC == combined, let file
        else { return false }
        try flush()
        let start = offset
        // Copy in parts; when there are several, a second thread reads each part back and checksums it while the
        // next one is copied, so the check costs little more than the copy (2 cores). One checker thread with one
        // buffer: memory stays flat. (Not libdispatch: its pool started up to ten threads here, +120 MB.)
        let part = max(1, copyPieceSize)
        // 256 KiB: each part read back stays in the CPU's cache for its CRC pass (4 MiB went to memory and back).
        if checkBuffer == nil { checkBuffer = .allocate(byteCount: 256 << 10, alignment: 64) }
        let checker = ReadBackChecker(file: file, buffer: checkBuffer!, pieces: pieces.count, threaded: total > part)
        var at = start
        do throws(ZipError) {
            for (i, p) in pieces.enumerated() {
                var copied: UInt64 = 0
                while copied < p.count {
                    let n = min(part, p.count - copied)
                    guard try file.copyRange(from: p.file, at: p.offset + copied, count: n, record: p.name) else {
                        if at == start {
                            checker.finish()
                            return false
                        }
                        throw ZipError.io("cannot copy into '\(path)': the kernel stopped copying between files")
                    }
                    checker.submit(at: at, count: n, piece: i)
                    at += n
                    copied += n
                    progress(Int(n))
                }
            }
        } catch {
            checker.finish()
            state = .failed
            throw error
        }
        checker.finish()
        offset += total
        written += total  // its parts' writeback was started as they were checked
        writebackFrom = written
        open.count = total
        state = .inRecord(open)
        if let error = checker.error {
            state = .failed
            throw error
        }
        for (i, p) in pieces.enumerated() where checker.crcs[i] != p.crc {
            state = .failed
            throw ZipError.crcMismatch(record: p.name, expected: p.crc, actual: checker.crcs[i])
        }
        return true
    }

    /// Copies a record from another archive, streaming it in chunks of `chunkSize` bytes.
    ///
    /// `name` defaults to the entry's name relative to the reader's root. When the source records a CRC, the reader
    /// verifies the bytes against it and the writer reuses it instead of computing it again; a mismatch throws
    /// ``ZipError/crcMismatch(record:expected:actual:)`` and leaves this writer failed.
    public func copyRecord(
        _ entry: ZipEntry, from reader: ZipReader, as name: String? = nil, chunkSize: Int = 1 << 20
    ) throws(ZipError) {
        let relative: String
        if let name {
            relative = name
        } else if !reader.root.isEmpty, entry.name.hasPrefix(reader.root + "/") {
            relative = String(entry.name.dropFirst(reader.root.count + 1))
        } else {
            relative = entry.name
        }
        try beginRecord(relative, size: entry.size)
        if entry.hasChecksum, case .inRecord(var open) = state {
            open.knownCRC = entry.crc32
            state = .inRecord(open)
        }
        do {
            try reader.stream(entry, chunkSize: chunkSize) { chunk in try self.write(chunk) }
        } catch {
            state = .failed
            throw (error as? ZipError) ?? .io("copying '\(entry.name)': \(error)")
        }
        try endRecord()
    }

    /// Writes the central directory and end records, flushes, fsyncs and closes the file.
    public func finish() throws(ZipError) {
        guard case .idle = state else { throw misuseError("finish()") }
        let directoryOffset = offset
        var directory: [UInt8] = []
        directory.reserveCapacity(1 << 16)
        for record in records {
            let bigSize = record.size >= Self.max32
            let bigOffset = record.headerOffset >= Self.max32
            var extra: [UInt8] = []
            if bigSize || bigOffset {
                extra.append(u16: 0x0001)
                extra.append(u16: UInt16((bigSize ? 16 : 0) + (bigOffset ? 8 : 0)))
                if bigSize {
                    extra.append(u64: record.size)
                    extra.append(u64: record.size)
                }
                if bigOffset { extra.append(u64: record.headerOffset) }
            }
            let size32 = UInt32(min(record.size, Self.max32))
            directory.append(u32: ZipCentralDirectory.centralHeaderSignature)
            directory.append(u16: 0)  // version made by
            directory.append(u16: 0)  // version needed
            directory.append(u16: record.flags)
            directory.append(u16: 0)  // method
            directory.append(u16: 0)  // time
            directory.append(u16: 0)  // date
            directory.append(u32: record.crc32)
            directory.append(u32: size32)
            directory.append(u32: size32)
            directory.append(u16: UInt16(record.name.count))
            directory.append(u16: UInt16(extra.count))
            directory.append(u16: 0)  // comment length
            directory.append(u16: 0)  // disk number
            directory.append(u16: 0)  // internal attributes
            directory.append(u32: 0)  // external attributes
            directory.append(u32: UInt32(min(record.headerOffset, Self.max32)))
            directory.append(contentsOf: record.name)
            directory.append(contentsOf: extra)
            if directory.count >= 1 << 20 {
                try emit(directory)
                directory.removeAll(keepingCapacity: true)
            }
        }
        try emit(directory)
        let directorySize = offset - directoryOffset
        let count = UInt64(records.count)

        var end: [UInt8] = []
        let zip64Offset = offset
        end.append(u32: ZipCentralDirectory.zip64EOCDSignature)
        end.append(u64: 44)  // size of the rest of this record
        end.append(u16: 0x031E)  // made by: Unix, spec 3.0
        end.append(u16: 0x002D)  // needed: 4.5
        end.append(u32: 0)  // this disk
        end.append(u32: 0)  // disk with the directory
        end.append(u64: count)
        end.append(u64: count)
        end.append(u64: directorySize)
        end.append(u64: directoryOffset)
        end.append(u32: ZipCentralDirectory.zip64LocatorSignature)
        end.append(u32: 0)
        end.append(u64: zip64Offset)
        end.append(u32: 1)  // total disks
        end.append(u32: ZipCentralDirectory.eocdSignature)
        end.append(u16: 0)
        end.append(u16: 0)
        end.append(u16: UInt16(min(count, 0xFFFF)))
        end.append(u16: UInt16(min(count, 0xFFFF)))
        end.append(u32: UInt32(min(directorySize, Self.max32)))
        end.append(u32: UInt32(min(directoryOffset, Self.max32)))
        end.append(u16: 0)  // comment length
        try emit(end)
        try flush()
        guard let file else { throw misuseError("finish()") }
        do {
            try file.sync()
            try file.close()
        } catch {
            state = .failed
            throw error
        }
        self.file = nil
        state = .finished
    }

    /// The read-back buffer of ``copyStoredPieces(_:progress:)``, allocated once: a new one per record
    /// made glibc's heap grow by 120 MB over the 745 records of a YOLOv5x strip (freed chunks left between others).
    private var checkBuffer: UnsafeMutableRawBufferPointer?

    /// How much ``copyStoredPieces(_:progress:)`` copies before handing a part to the checker (tests lower it to
    /// cover several parts with a small record). 8 MiB: a record of more than one part is checked on the second
    /// thread while the rest is copied, so most tensors of a checkpoint are (a DCP tensor is often tens of MB).
    var copyPieceSize: UInt64 = 8 << 20

    /// Total bytes written so far (buffered included).
    public var bytesWritten: UInt64 { offset }

    // MARK: - Buffered output

    private func emit(_ bytes: [UInt8]) throws(ZipError) {
        try withBytes(bytes) { (chunk) throws(ZipError) in try emit(chunk) }
    }

    /// `Array.withUnsafeBytes` with a typed error.
    private func withBytes(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(ZipError) -> Void) throws(ZipError) {
        var failure: ZipError? = nil
        bytes.withUnsafeBytes { raw in
            do throws(ZipError) { try body(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    private func emit(_ bytes: UnsafeRawBufferPointer) throws(ZipError) {
        guard bytes.count > 0 else { return }
        if bytes.count >= Self.directWriteBytes {
            // A large chunk goes to the kernel from where it is, while it is still in the cache (the reader's buffer
            // was just filled and checksummed): copying it into the 4 MiB buffer first would make the kernel's copy
            // read it back from memory.
            try flush()
            try rawWrite(bytes)
        } else if buffered + bytes.count <= buffer.count {
            UnsafeMutableRawBufferPointer(rebasing: buffer[buffered...]).copyMemory(from: bytes)
            buffered += bytes.count
        } else {
            try flush()
            if bytes.count >= buffer.count {
                try rawWrite(bytes)
            } else {
                UnsafeMutableRawBufferPointer(rebasing: buffer[0...]).copyMemory(from: bytes)
                buffered = bytes.count
            }
        }
        offset += UInt64(bytes.count)
    }

    private func flush() throws(ZipError) {
        guard buffered > 0 else { return }
        try rawWrite(UnsafeRawBufferPointer(rebasing: buffer[0..<buffered]))
        buffered = 0
    }

    private func rawWrite(_ bytes: UnsafeRawBufferPointer) throws(ZipError) {
        guard let file else { throw misuseError("write after finish()") }
        do {
            try file.writeAll(bytes)
        } catch {
            state = .failed
            throw error
        }
        // Start writing what has piled up to disk now, while the next bytes are made, rather than all at the fsync
        // (a hint: the range is where the bytes went, the file being written from its start, in order).
        written += UInt64(bytes.count)
        if written - writebackFrom >= Self.writebackBytes {
            file.startWriteback(at: writebackFrom, count: written - writebackFrom)
            writebackFrom = written
        }
    }

    private func misuseError(_ call: String) -> ZipError {
        switch state {
        case .idle: return .misuse("\(call) on '\(path)' with no open record")
        case .inRecord(let open): return .misuse("\(call) on '\(path)' while record '\(open.relativeName)' is still open")
        case .finished: return .misuse("\(call) on '\(path)' after finish()")
        case .failed: return .misuse("\(call) on '\(path)' after an earlier error; discard the file")
        }
    }
}

/// A byte range of a file whose CRC-32 is known (a stored zip record, a DCP chunk's record): what
/// ``TorchZipWriter/copyStoredPieces(_:progress:)`` copies inside the kernel and then checks.
struct StoredPiece {
    let file: ZipFileHandle
    /// The range's first byte, in `file`'s window.
    let offset: UInt64
    let count: UInt64
    let crc: UInt32
    /// How a mismatch names it (``ZipError/crcMismatch(record:expected:actual:)``'s record).
    let name: String

    /// A record of `reader` as it is stored, or nil when it cannot be copied so: compressed, without a CRC-32, or read
    /// through libzip.
    static func record(_ entry: ZipEntry, of reader: ZipReader) throws(ZipError) -> StoredPiece? {
        guard entry.hasChecksum, entry.size > 0, let file = reader.storedDataFile,
              let start = try reader.dataOffset(of: entry)
        else { return nil }
        return StoredPiece(file: file, offset: start, count: entry.size, crc: entry.crc32, name: entry.name)
    }
}

/// Reads parts of a file back and checksums them in order, a CRC-32 per piece (a piece is one or more parts): on
/// its own thread when `threaded` (parts are submitted while the next one is being copied), else right away on
/// the caller's. ``finish()`` waits for the
/// last part; then ``error`` and ``crcs`` are final.
private final class ReadBackChecker: @unchecked Sendable {
    private let file: ZipFileHandle
    private let buffer: UnsafeMutableRawBufferPointer
    private let condition = NSCondition()
    private var queued: [(offset: UInt64, count: UInt64, piece: Int)] = []
    private var closed = false
    private var done = false
    /// Each piece's CRC-32, of its parts checked so far (final after ``finish()``).
    private(set) var crcs: [UInt32]
    private(set) var error: ZipError?
    private var thread: Thread?

    /// `buffer` stays the caller's; it must outlive ``finish()``. Parts are submitted for pieces `0..<pieces`.
    init(file: ZipFileHandle, buffer: UnsafeMutableRawBufferPointer, pieces: Int, threaded: Bool) {
        self.file = file
        self.buffer = buffer
        self.crcs = Array(repeating: 0, count: pieces)
        if threaded {
            let t = Thread { [self] in self.run() }
            t.name = "ckpt read-back check"
            thread = t
            t.start()
        }
    }

    func submit(at offset: UInt64, count: UInt64, piece: Int) {
        guard thread != nil else {
            check(offset, count, piece)
            return
        }
        condition.lock()
        queued.append((offset, count, piece))
        condition.signal()
        condition.unlock()
    }

    /// No more pieces: waits until every submitted piece is checked.
    func finish() {
        guard thread != nil else { return }
        condition.lock()
        closed = true
        condition.broadcast()
        while !done { condition.wait() }
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while queued.isEmpty && !closed { condition.wait() }
            if queued.isEmpty {
                done = true
                condition.broadcast()
                condition.unlock()
                return
            }
            let (offset, count, piece) = queued.removeFirst()
            condition.unlock()
            check(offset, count, piece)
        }
    }

    private func check(_ offset: UInt64, _ count: UInt64, _ piece: Int) {
        guard error == nil else { return }
        var pieceCRC: UInt32 = 0
        var checked: UInt64 = 0
        do {
            while checked < count {
                let want = Int(min(UInt64(buffer.count), count - checked))
                let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want])
                let got = try file.read(into: part, at: offset + checked)
                guard got == want else {
                    throw ZipError.io("cannot read back '\(file.path)' at byte \(offset + checked)")
                }
                pieceCRC = ZipCRC32.update(pieceCRC, UnsafeRawBufferPointer(part))
                checked += UInt64(got)
            }
        } catch let e as ZipError {
            error = e
            return
        } catch {
            self.error = .io("\(error)")
            return
        }
        crcs[piece] = ZipCRC32.combine(crcs[piece], pieceCRC, lengthOfB: count)
        // Checked: start writing the piece to disk now, while the next one is copied, rather than all at the fsync.
        file.startWriteback(at: offset, count: count)
    }

}

extension [UInt8] {
    fileprivate func appending(u32 value: UInt32) -> [UInt8] {
        var out = self
        out.append(u32: value)
        return out
    }

    fileprivate mutating func append(u16 value: UInt16) {
        append(UInt8(truncatingIfNeeded: value))
        append(UInt8(truncatingIfNeeded: value >> 8))
    }

    fileprivate mutating func append(u32 value: UInt32) {
        for shift in stride(from: 0, to: 32, by: 8) { append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    fileprivate mutating func append(u64 value: UInt64) {
        for shift in stride(from: 0, to: 64, by: 8) { append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }
}
