// libzip inflates and CRC-checks the records ckpt does not read itself: deflated ones (torch.save never writes
// them, but TorchScript archives and zips other tools re-packed hold them). Stored records never go through it.
internal import CLibzip

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// Read-only access to a zip archive (the container of a `torch.save` checkpoint); libzip decodes compressed records.
///
/// Opening reads the central directory (``ZipCentralDirectory``), refuses duplicate, unsafe and encrypted records,
/// and checks the local headers of the records outside `data/` against it (what libzip's `ZIP_CHECKCONS` checks);
/// a storage's local header is checked when its bytes are first read (``dataOffset(of:)``). Stored records, which is
/// every record `torch.save` writes, are read with `pread` straight from their data offset and CRC-checked as they
/// stream; other records are decoded by libzip, which checks their CRC too.
///
/// Not thread-safe: use one reader per task.
public final class ZipReader {
    /// The path the archive was opened from.
    public let path: String
    /// Every record, in central-directory order.
    public let entries: [ZipEntry]
    /// The folder holding the records: the text of the first record's name before its first `/`
    /// (`torch.save` uses the file's base name, or `archive` when saving to a buffer). Empty if the first record
    /// is not in a folder or the archive has no records.
    public let root: String
    /// The archive's size in bytes.
    public let fileSize: UInt64

    /// Where the zip starts in the file at ``path`` when it was opened as a window of it (nil for a whole file).
    let windowStart: UInt64?

    /// Read stored records through libzip instead of `pread` (for tests and benchmarks of both paths).
    var readsStoredThroughLibzip = false

    /// libzip's handle, opened on first use: only compressed records (which `torch.save` never writes) and
    /// ``readsStoredThroughLibzip`` need it.
    private var archive: OpaquePointer?
    private var file: ZipFileHandle?
    private let directory: ZipCentralDirectory
    /// Where each record's data starts, once its local header has been checked (``unchecked`` until then).
    private var dataOffsets: [UInt64]
    private static let unchecked = UInt64.max
    /// Records by name folded to lower case (ASCII, as miniz folds it): the first record of each folded name.
    private let indexByFoldedName: [String: Int]
    /// Folded names that more than one record has (names that differ only in case, or duplicates): these are
    /// looked up as torch's reader looks them up (``MinizLookup``).
    private let collidingFoldedNames: Set<String>
    /// miniz's sorted order of the records, made on the first lookup of a colliding name.
    private var minizOrder: [Int]? = nil
    /// Whether the archive was opened with `lenient` (see ``init(path:maxRecords:lenient:)``).
    public let lenient: Bool
    /// What makes this archive read differently by different zip readers: duplicate names, names that differ
    /// only in case, other end records, and (once ``auditLocalHeaders()`` or reads have run, lenient only)
    /// local headers that disagree with the central directory. Empty for every archive torch.save writes.
    public private(set) var ambiguities: [String] = []
    /// The read buffer, kept from one read to the next. A fresh chunk-sized buffer per record made glibc's malloc
    /// keep the freed ones (its mmap threshold rises after the first big free): resident memory grew with the
    /// number of records streamed (+70 MB over the 745 records of a YOLOv5x strip).
    private var scratch: UnsafeMutableRawBufferPointer?
    private var scratchInUse = false

    /// The default cap on the number of records.
    public static let defaultMaxRecords = 4_000_000

    /// Opens and validates the archive at `path`.
    ///
    /// Records are looked up as torch's zip reader looks them up (``entry(fullName:)``), and the end record is the
    /// one it takes (the last, ``ZipCentralDirectory``).
    ///
    /// - Parameter maxRecords: archives with more records than this are refused with ``ZipError/tooManyRecords(count:limit:)``.
    /// - Parameter lenient: open what torch's reader opens: duplicate names, and local headers that disagree with the
    ///   central directory, are noted in ``ambiguities`` instead of refused; ``readAll(_:limit:verifyCRC:)`` can
    ///   skip the CRC. For finding what torch would unpickle (``ContainerAudit``), never for rewriting.
    /// - Throws: ``ZipError`` (`notAZip`, `truncatedArchive`, `inconsistent`, `duplicateRecord`, `unsafeRecordName`,
    ///   `tooManyRecords`, `io`).
    public convenience init(path: String, maxRecords: Int = ZipReader.defaultMaxRecords, lenient: Bool = false) throws(ZipError) {
        try self.init(path: path, window: nil, maxRecords: maxRecords, lenient: lenient)
    }

    /// Opens the zip stored at `window` of the file at `path` (a DCP item: a whole `torch.save` zip inside a
    /// `.distcp` file), offsets inside it relative to its start. Only stored records can be read from a window:
    /// libzip opens whole files.
    init(path: String, window: Range<UInt64>?, maxRecords: Int = ZipReader.defaultMaxRecords, lenient: Bool = false) throws(ZipError) {
        self.path = path
        self.lenient = lenient
        self.windowStart = window?.lowerBound
        let file: ZipFileHandle
        if let window { file = try ZipFileHandle.openForReading(path, window: window) } else {
            file = try ZipFileHandle.openForReading(path)
        }
        let fileSize = try file.size()
        self.fileSize = fileSize

        if fileSize < 22 {
            throw try Self.notAZipError(file: file)
        }

        let directory: ZipCentralDirectory
        do {
            directory = try ZipCentralDirectory(file: file, fileSize: fileSize, maxRecords: maxRecords)
        } catch {
            if case .inconsistent(_, let detail) = error, detail.hasPrefix("no end-of-central-directory") {
                throw try Self.notAZipError(file: file)
            }
            throw error
        }
        let count = directory.records.count

        var entries: [ZipEntry] = []
        entries.reserveCapacity(count)
        var indexByName: [String: Int] = [:]
        indexByName.reserveCapacity(count)
        var colliding = Set<String>()
        var ambiguities: [String] = []
        if !directory.otherEndRecords.isEmpty {
            ambiguities.append("\(directory.otherEndRecords.count + 1) end-of-central-directory records (at bytes "
                + (directory.otherEndRecords.reversed() + [directory.endRecordOffset]).map(String.init).joined(separator: ", ")
                + "): torch.load reads the archive of the last one")
        }

        for (index, record) in directory.records.enumerated() {
            let lossyName = String(decoding: record.name, as: UTF8.self)
            // A lenient reader extracts nothing to disk and torch reads such records: only the strict one refuses.
            let decoded = ZipNames.decode(record.name).flatMap { ZipNames.isSafe($0) ? $0 : nil }
            guard let name = decoded ?? (lenient ? lossyName : nil) else { throw ZipError.unsafeRecordName(lossyName) }
            let folded = MinizLookup.fold(name)
            if let first = indexByName[folded] {
                let other = entries[first].name
                if other == name {
                    guard lenient else { throw ZipError.duplicateRecord(name) }
                    Self.note("two records named '\(name)'", in: &ambiguities)
                } else {
                    Self.note("records '\(other)' and '\(name)' differ only in case (torch looks names up without regard to case)",
                              in: &ambiguities)
                }
                colliding.insert(folded)
            } else {
                indexByName[folded] = index
            }
            // Bit 0: traditional PKWARE encryption; bit 6: strong encryption.
            if record.flags & 0x0041 != 0 && !lenient { throw ZipError.encryptedRecord(name) }
            let method = ZipEntry.Method(rawValue: record.method)
            if method == .stored && record.compressedSize != record.size && !lenient {
                throw ZipError.inconsistent(path: path, detail: "stored record '\(name)' has different compressed and uncompressed sizes")
            }
            let (most, overflow) = record.compressedSize.multipliedReportingOverflow(by: Self.maxDeflateRatio)
            if method == .deflated, !overflow, record.size > most, !lenient {
                throw ZipError.impossibleExpansion(record: name, size: record.size, compressedSize: record.compressedSize)
            }
            entries.append(
                ZipEntry(
                    name: name, index: index, size: record.size, compressedSize: record.compressedSize, method: method,
                    crc32: record.crc32, headerOffset: record.headerOffset))
        }

        if let first = entries.first, let slash = first.name.firstIndex(of: "/") {
            root = String(first.name[..<slash])
        } else {
            root = ""
        }
        self.entries = entries
        self.indexByFoldedName = indexByName
        self.collidingFoldedNames = colliding
        self.ambiguities = ambiguities
        self.file = file
        self.directory = directory
        dataOffsets = Array(repeating: Self.unchecked, count: count)
        // The local headers of the small records (data.pkl, version, byteorder, ...) are checked now; those of the
        // storages under data/, when their bytes are first read: `keys` and `info` read none of them, and a
        // checkpoint holds thousands (one pread each).
        // (A lenient reader checks only what is read: torch fails on a damaged record only when it reads it.)
        let storages = root.isEmpty ? "data/" : root + "/data/"
        for e in entries where !e.name.hasPrefix(storages) && !lenient {
            _ = try dataOffset(of: e)
        }
        // A compressed record's sizes and CRC are only claims until it is inflated: inflate each one now, in bounded
        // chunks, so that no command lists a record as what it claims to be (torch.save never compresses, so
        // this costs only on files other writers made).
        for e in entries where e.method != .stored && !lenient {
            try streamCore(e, chunkSize: 1 << 20) { (_: UnsafeRawBufferPointer) throws(ZipError) in }
        }
    }

    /// Deflate's largest expansion: 1032 output bytes per input byte (zlib's technical details; a 258-byte match
    /// costs at least 2 bits).
    static let maxDeflateRatio: UInt64 = 1032

    deinit {
        if let archive { zip_discard(archive) }
        scratch?.deallocate()
    }

    /// A buffer of `count` bytes: the kept one when it is free (growing it if needed), else a fresh one (a read
    /// nested in another read's body) that ``returnBuffer(_:)`` frees.
    private func borrowBuffer(count: Int) -> UnsafeMutableRawBufferPointer {
        guard !scratchInUse else { return .allocate(byteCount: count, alignment: 64) }
        if let kept = scratch, kept.count < count {
            kept.deallocate()
            scratch = nil
        }
        if scratch == nil { scratch = .allocate(byteCount: count, alignment: 64) }
        scratchInUse = true
        return UnsafeMutableRawBufferPointer(rebasing: scratch![0..<count])
    }

    private func returnBuffer(_ buffer: UnsafeMutableRawBufferPointer) {
        if let kept = scratch, scratchInUse, buffer.baseAddress == kept.baseAddress {
            scratchInUse = false
        } else {
            buffer.deallocate()
        }
    }

    /// The open file stored records are read from with `pread`, for in-kernel copies (nil after ``close()`` or when
    /// stored records are read through libzip).
    var storedDataFile: ZipFileHandle? { readsStoredThroughLibzip ? nil : file }

    /// Offset of a record's first data byte in the file (local header offset + 30 + name length + extra length), for
    /// stored records; nil for compressed ones. This is where `torch.load(mmap=True)` maps a storage from. The
    /// first call reads the record's local header and checks it against the central directory (version, method,
    /// time, name, CRC and sizes) and that the data lies inside the file, before the central directory.
    /// - Throws: ``ZipError/inconsistent(path:detail:)``, ``ZipError/truncated(record:offset:expected:got:)``,
    ///   ``ZipError/misuse(_:)`` after ``close()``.
    public func dataOffset(of entry: ZipEntry) throws(ZipError) -> UInt64? {
        guard entry.index >= 0, entry.index < entries.count, entries[entry.index] == entry else {
            throw ZipError.misuse("record '\(entry.name)' does not belong to '\(path)'")
        }
        var start = dataOffsets[entry.index]
        if start == Self.unchecked {
            guard let file else { throw ZipError.misuse("read from '\(path)' after close()") }
            let checked = try ZipCentralDirectory.checkLocalHeader(
                directory.records[entry.index], displayName: entry.name, file: file, fileSize: fileSize,
                directoryOffset: directory.directoryOffset, lenient: lenient)
            start = checked.start
            if let d = checked.disagreement {
                Self.note(d + " (torch.load reads the data the central directory points to)", in: &ambiguities)
            }
            dataOffsets[entry.index] = start
        }
        return entry.method == .stored ? start : nil
    }

    /// libzip's handle on the archive, opened on first use.
    private func libzipArchive() throws(ZipError) -> OpaquePointer {
        if let archive { return archive }
        if let w = windowStart {
            throw ZipError.io("'\(path)': the zip at byte \(w) holds a compressed record, which ckpt reads only in whole zip files")
        }
        guard let file else { throw ZipError.misuse("read from '\(path)' after close()") }
        var code: Int32 = 0
        guard let opened = zip_open(path, ZIP_RDONLY, &code) else {
            var error = zip_error_t()
            zip_error_init_with_code(&error, code)
            defer { zip_error_fini(&error) }
            throw try Self.openError(&error, file: file)
        }
        guard zip_get_num_entries(opened, 0) == Int64(entries.count) else {
            zip_discard(opened)
            throw ZipError.inconsistent(path: path, detail: "libzip and the central directory list different records")
        }
        archive = opened
        return opened
    }

    /// Releases the archive and its file descriptor. Further reads throw ``ZipError/misuse(_:)``. Safe to call twice.
    public func close() {
        if let archive { zip_discard(archive) }
        archive = nil
        try? file?.close()
        file = nil
    }

    /// The record with the full name `name` (root folder included), if any, found as torch's zip reader finds it
    /// (caffe2/serialize/inline_container.cc calls miniz's `mz_zip_reader_locate_file` with flags 0): without
    /// regard to ASCII case, and among names that differ only in case, or duplicates, the one miniz's binary search
    /// over its heap-sorted names meets first (``MinizLookup``).
    public func entry(fullName name: String) -> ZipEntry? {
        let folded = MinizLookup.fold(name)
        guard collidingFoldedNames.contains(folded) else { return indexByFoldedName[folded].map { entries[$0] } }
        if minizOrder == nil { minizOrder = MinizLookup.sortedOrder(directory.records.map(\.name)) }
        return MinizLookup.find(Array(name.utf8), names: directory.records.map(\.name), order: minizOrder!).map { entries[$0] }
    }

    /// At most 16 notes, then one saying that there are more: an archive of a million duplicates is one line.
    private static func note(_ text: String, in notes: inout [String]) {
        if notes.count < 16 { notes.append(text) } else if notes.count == 16 { notes.append("and more of the same") }
    }

    /// Reads every record's local header (one small read each), so that ``ambiguities`` lists the local headers
    /// that disagree with the central directory (a record whose local header is missing is skipped: reading it
    /// fails). Lenient archives only (a strict one throws at the first).
    public func auditLocalHeaders() {
        for e in entries { _ = try? dataOffset(of: e) }
    }

    /// The record `root + "/" + relative` (for example `entry(named: "data.pkl")`), if any.
    public func entry(named relative: String) -> ZipEntry? {
        entry(fullName: root.isEmpty ? relative : root + "/" + relative)
    }

    /// The record `root + "/" + relative`, or ``ZipError/missingRecord(_:)``.
    public func requireEntry(named relative: String) throws(ZipError) -> ZipEntry {
        guard let entry = entry(named: relative) else {
            throw ZipError.missingRecord(root.isEmpty ? relative : root + "/" + relative)
        }
        return entry
    }

    /// Reads a whole record into memory.
    ///
    /// - Parameter limit: refuse records larger than this many bytes (``ZipError/recordTooLarge(name:size:limit:)``).
    /// - Parameter verifyCRC: false reads the bytes as torch does, without checking them against the CRC-32 (miniz
    ///   is built with `MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS`); only for a ``lenient`` archive.
    /// - Throws: ``ZipError`` (`recordTooLarge`, `truncated`, `crcMismatch`, `unsupportedCompression`, `io`, `misuse`).
    public func readAll(_ entry: ZipEntry, limit: UInt64, verifyCRC: Bool = true) throws(ZipError) -> [UInt8] {
        let verifyCRC = verifyCRC || !lenient
        guard entry.size <= limit, entry.size <= UInt64(Int.max) else {
            throw ZipError.recordTooLarge(name: entry.name, size: entry.size, limit: limit)
        }
        let size = Int(entry.size)
        if try dataOffset(of: entry) == nil {
            // Compressed: the declared size is only a claim until the bytes arrive, so memory grows with what
            // decompression actually produces (streamCore stops at the declared size), not with the claim.
            var out: [UInt8] = []
            out.reserveCapacity(min(size, 16 << 20))
            try streamCore(entry, chunkSize: min(max(size, 1), 4 << 20), verifyCRC: verifyCRC) { (chunk) throws(ZipError) in
                out.append(contentsOf: chunk)
            }
            return out
        }
        var failure: ZipError? = nil
        let result = [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            initialized = 0
            do {
                try streamCore(entry, chunkSize: min(max(size, 1), 4 << 20), verifyCRC: verifyCRC) { (chunk) throws(ZipError) in
                    // streamCore never hands out more than the declared size.
                    UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(buffer)[initialized...])
                        .copyMemory(from: chunk)
                    initialized += chunk.count
                }
            } catch let error as ZipError {
                failure = error
                initialized = 0
            } catch {
                failure = .io("\(error)")
                initialized = 0
            }
        }
        if let failure { throw failure }
        return result
    }

    /// Reads `buffer.count` bytes of a record starting `offset` bytes into it. Stored records are read in place
    /// with `pread`; compressed ones are decoded from their start up to the range. A part of a record cannot be
    /// CRC-checked: use ``stream(_:chunkSize:_:)`` where the whole record is wanted.
    public func read(_ entry: ZipEntry, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(ZipError) {
        guard let file else { throw ZipError.misuse("read from '\(path)' after close()") }
        let (end, o) = offset.addingReportingOverflow(UInt64(buffer.count))
        guard !o, end <= entry.size else {
            throw ZipError.truncated(record: entry.name, offset: offset, expected: end, got: entry.size)
        }
        if buffer.isEmpty { return }
        if let dataOffset = try dataOffset(of: entry), !readsStoredThroughLibzip {
            let got = try file.read(into: buffer, at: dataOffset + offset)
            if got < buffer.count {
                throw ZipError.truncated(record: entry.name, offset: dataOffset + offset + UInt64(got),
                                         expected: entry.size, got: offset + UInt64(got))
            }
            return
        }
        var position: UInt64 = 0
        var filled = 0
        do {
            try streamCore(entry, chunkSize: 1 << 20) { (chunk) throws(ZipError) in
                let chunkEnd = position + UInt64(chunk.count)
                defer { position = chunkEnd }
                guard chunkEnd > offset + UInt64(filled) else { return }
                let from = Int(offset + UInt64(filled) - position)
                let n = min(chunk.count - from, buffer.count - filled)
                UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + n)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: chunk[from..<(from + n)]))
                filled += n
                if filled == buffer.count { throw ZipError.misuse("range read complete") }
            }
        } catch {
            if filled == buffer.count { return }
            throw error
        }
        if filled < buffer.count {
            throw ZipError.truncated(record: entry.name, offset: offset + UInt64(filled), expected: end, got: offset + UInt64(filled))
        }
    }

    /// Streams a record's bytes to `body` in chunks of at most `chunkSize` bytes, never holding the whole record.
    ///
    /// The CRC-32 is checked after the last chunk: when it fails, `body` has already seen the bad bytes and the call
    /// throws ``ZipError/crcMismatch(record:expected:actual:)``, so callers must discard what they built from them.
    /// Errors thrown by `body` stop the read and are rethrown unchanged.
    public func stream(
        _ entry: ZipEntry, chunkSize: Int = 1 << 20, _ body: (UnsafeRawBufferPointer) throws -> Void
    ) throws {
        var bodyError: (any Error)? = nil
        do {
            try streamCore(entry, chunkSize: chunkSize) { (chunk) throws(ZipError) in
                do { try body(chunk) } catch {
                    bodyError = error
                    throw ZipError.misuse("stopped by caller")  // unwinds streamCore; replaced below
                }
            }
        } catch {
            if let bodyError { throw bodyError }
            throw error
        }
    }

    private func streamCore(
        _ entry: ZipEntry, chunkSize: Int, verifyCRC: Bool = true, _ body: (UnsafeRawBufferPointer) throws(ZipError) -> Void
    ) throws(ZipError) {
        guard let file else { throw ZipError.misuse("read from '\(path)' after close()") }
        let storedAt = try dataOffset(of: entry)
        let chunkSize = max(1, chunkSize)
        if entry.size == 0 && entry.compressedSize == 0 { return }

        let buffer = borrowBuffer(count: Int(min(UInt64(chunkSize), max(entry.size, 1))))
        defer { returnBuffer(buffer) }
        var crc: UInt32 = 0
        var total: UInt64 = 0

        if let dataOffset = storedAt, !readsStoredThroughLibzip {
            // Stored: read the bytes in place; libzip's own read path adds a copy and per-call overhead.
            if entry.size >= 64 << 20 { file.adviseSequential() }
            while total < entry.size {
                let want = Int(min(UInt64(buffer.count), entry.size - total))
                let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want])
                let got = try file.read(into: part, at: dataOffset + total)
                if got < want {
                    throw ZipError.truncated(
                        record: entry.name, offset: dataOffset + total + UInt64(got), expected: entry.size,
                        got: total + UInt64(got))
                }
                let chunk = UnsafeRawBufferPointer(part)
                crc = ZipCRC32.update(crc, chunk)
                total += UInt64(got)
                try body(chunk)
            }
            if verifyCRC && entry.hasChecksum && crc != entry.crc32 {
                throw ZipError.crcMismatch(record: entry.name, expected: entry.crc32, actual: crc)
            }
            return
        }

        let archive = try libzipArchive()
        if zip_compression_method_supported(Int32(entry.method.rawValue), 0) == 0 {
            throw ZipError.unsupportedCompression(record: entry.name, method: entry.method.rawValue)
        }
        guard let handle = zip_fopen_index(archive, UInt64(entry.index), 0) else {
            let error = Self.archiveError(archive, path: path, doing: "opening record '\(entry.name)' of")
            if case .io = error, zip_error_code_zip(zip_get_error(archive)) == ZIP_ER_COMPNOTSUPP {
                throw ZipError.unsupportedCompression(record: entry.name, method: entry.method.rawValue)
            }
            throw error
        }
        defer { zip_fclose(handle) }
        while true {
            let n = zip_fread(handle, buffer.baseAddress, UInt64(buffer.count))
            if n < 0 {
                let error = zip_file_get_error(handle)
                if zip_error_code_zip(error) == ZIP_ER_CRC {
                    throw ZipError.crcMismatch(record: entry.name, expected: entry.crc32, actual: crc)
                }
                let message = String(cString: zip_error_strerror(error)).lowercased()
                throw ZipError.io("cannot read record '\(entry.name)' of '\(path)': \(message)")
            }
            if n == 0 { break }
            guard total + UInt64(n) <= entry.size else {
                throw ZipError.inflatedSizeMismatch(record: entry.name, declared: entry.size, inflated: total + UInt64(n))
            }
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<Int(n)])
            crc = ZipCRC32.update(crc, chunk)
            total += UInt64(n)
            try body(chunk)
        }
        if total != entry.size {
            throw ZipError.inflatedSizeMismatch(record: entry.name, declared: entry.size, inflated: total)
        }
        if entry.hasChecksum && crc != entry.crc32 {
            throw ZipError.crcMismatch(record: entry.name, expected: entry.crc32, actual: crc)
        }
    }

    // MARK: - Errors

    private static func notAZipError(file: ZipFileHandle) throws(ZipError) -> ZipError {
        if let magic = try file.readBytes(count: 4, at: 0),
           ZipCentralDirectory.signature(magic, at: 0) == ZipCentralDirectory.localHeaderSignature
        {
            return .truncatedArchive(path: file.path)
        }
        return .notAZip(path: file.path)
    }

    private static func openError(_ error: UnsafeMutablePointer<zip_error_t>, file: ZipFileHandle) throws(ZipError) -> ZipError {
        let code = zip_error_code_zip(error)
        let message = String(cString: zip_error_strerror(error)).lowercased()
        switch code {
        case ZIP_ER_NOZIP, ZIP_ER_INCONS, ZIP_ER_EXISTS, ZIP_ER_MULTIDISK, ZIP_ER_EOF:
            return try diagnose(file: file, libzipMessage: message)
        default:
            return .io("cannot open '\(file.path)' as a zip archive: \(message)")
        }
    }

    /// Turns libzip's refusal into the most specific error: a cut-off file, a record running past the end of the
    /// file, a duplicate name, or (failing those) a generic inconsistency with libzip's own words.
    private static func diagnose(file: ZipFileHandle, libzipMessage: String) throws(ZipError) -> ZipError {
        let fileSize = try file.size()
        let directory: ZipCentralDirectory
        do {
            directory = try ZipCentralDirectory(file: file, fileSize: fileSize, maxRecords: Int.max)
        } catch {
            if case .inconsistent(_, let detail) = error, detail.hasPrefix("no end-of-central-directory") {
                return try notAZipError(file: file)
            }
            return error
        }
        var seen = Set<[UInt8]>()
        for record in directory.records {
            let name = String(decoding: record.name, as: UTF8.self)
            if !seen.insert(record.name).inserted { return .duplicateRecord(name) }
            if record.headerOffset > fileSize || record.compressedSize > fileSize - record.headerOffset {
                let available = record.headerOffset > fileSize ? 0 : fileSize - record.headerOffset
                return .truncated(record: name, offset: fileSize, expected: record.compressedSize, got: min(available, record.compressedSize))
            }
        }
        return .inconsistent(path: file.path, detail: libzipMessage)
    }

    private static func archiveError(_ archive: OpaquePointer, path: String, doing what: String) -> ZipError {
        let message = String(cString: zip_error_strerror(zip_get_error(archive))).lowercased()
        return .io("libzip failed \(what) '\(path)': \(message)")
    }
}
