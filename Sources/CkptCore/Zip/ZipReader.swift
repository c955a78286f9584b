internal import CLibzip

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// Read-only access to a zip archive (the container of a `torch.save` checkpoint), backed by libzip.
///
/// Opening reads the central directory twice, with libzip and with ``ZipCentralDirectory``, which must agree, checks
/// every local header against it (what libzip's `ZIP_CHECKCONS` would, in one read per record instead of two),
/// then refuses duplicate and unsafe record names. Stored records, which is every record `torch.save`
/// writes, are read with `pread` straight from their data offset and CRC-checked with zlib as they stream; other
/// records are decoded by libzip, which checks their CRC too.
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

    /// Read stored records through libzip instead of `pread` (for tests and benchmarks of both paths).
    var readsStoredThroughLibzip = false

    private var archive: OpaquePointer?
    private var file: ZipFileHandle?
    private let indexByName: [String: Int]
    /// The read buffer, kept from one read to the next. A fresh chunk-sized buffer per record made glibc's malloc
    /// keep the freed ones (its mmap threshold rises after the first big free): resident memory grew with the
    /// number of records streamed (+70 MB over the 745 records of a YOLOv5x strip).
    private var scratch: UnsafeMutableRawBufferPointer?
    private var scratchInUse = false

    /// The default cap on the number of records.
    public static let defaultMaxRecords = 4_000_000

    /// Opens and validates the archive at `path`.
    ///
    /// - Parameter maxRecords: archives with more records than this are refused with ``ZipError/tooManyRecords(count:limit:)``.
    /// - Throws: ``ZipError`` (`notAZip`, `truncatedArchive`, `inconsistent`, `duplicateRecord`, `unsafeRecordName`,
    ///   `tooManyRecords`, `io`).
    public init(path: String, maxRecords: Int = ZipReader.defaultMaxRecords) throws(ZipError) {
        self.path = path
        let file = try ZipFileHandle.openForReading(path)
        let fileSize = try file.size()
        self.fileSize = fileSize

        if fileSize < 22 {
            throw try Self.notAZipError(file: file)
        }

        var code: Int32 = 0
        guard let archive = zip_open(path, ZIP_RDONLY, &code) else {
            var error = zip_error_t()
            zip_error_init_with_code(&error, code)
            defer { zip_error_fini(&error) }
            throw try Self.openError(&error, file: file)
        }
        var ok = false
        defer { if !ok { zip_discard(archive) } }

        let count = zip_get_num_entries(archive, 0)
        guard count >= 0 else { throw ZipError.io("cannot list records of '\(path)'") }
        guard count <= Int64(maxRecords) else { throw ZipError.tooManyRecords(count: UInt64(count), limit: maxRecords) }

        let directory = try ZipCentralDirectory(file: file, fileSize: fileSize, maxRecords: maxRecords)
        guard directory.records.count == Int(count) else {
            throw ZipError.inconsistent(
                path: path, detail: "libzip lists \(count) records but the central directory holds \(directory.records.count)")
        }

        var entries: [ZipEntry] = []
        entries.reserveCapacity(Int(count))
        var indexByName: [String: Int] = [:]
        indexByName.reserveCapacity(Int(count))

        for index in 0..<Int(count) {
            var stat = zip_stat_t()
            zip_stat_init(&stat)
            guard zip_stat_index(archive, UInt64(index), zip_flags_t(ZIP_FL_ENC_RAW), &stat) == 0, let cName = stat.name else {
                throw Self.archiveError(archive, path: path, doing: "reading record \(index) of")
            }
            let record = directory.records[index]
            let rawName = Array(UnsafeRawBufferPointer(start: cName, count: strlen(cName)))
            let lossyName = String(decoding: record.name, as: UTF8.self)
            guard rawName == record.name else {
                if record.name.contains(0) { throw ZipError.unsafeRecordName(lossyName) }
                throw ZipError.inconsistent(path: path, detail: "record \(index) is named differently by libzip and by the central directory")
            }
            guard let name = ZipNames.decode(record.name), ZipNames.isSafe(name) else {
                throw ZipError.unsafeRecordName(lossyName)
            }
            guard indexByName.updateValue(index, forKey: name) == nil else { throw ZipError.duplicateRecord(name) }
            guard stat.size == record.size, stat.comp_size == record.compressedSize, stat.crc == record.crc32,
                stat.comp_method == record.method
            else {
                throw ZipError.inconsistent(path: path, detail: "record '\(name)' has different sizes in libzip and in the central directory")
            }
            if stat.encryption_method != UInt16(ZIP_EM_NONE) { throw ZipError.encryptedRecord(name) }

            let method = ZipEntry.Method(rawValue: record.method)
            var dataOffset: UInt64? = nil
            // Where the record's bytes start: after the local header, its name and its extra field.
            let start = try ZipCentralDirectory.checkLocalHeader(
                record, displayName: name, file: file, fileSize: fileSize, directoryOffset: directory.directoryOffset)
            if method == .stored {
                guard record.compressedSize == record.size else {
                    throw ZipError.inconsistent(path: path, detail: "stored record '\(name)' has different compressed and uncompressed sizes")
                }
                dataOffset = start
            }
            entries.append(
                ZipEntry(
                    name: name, index: index, size: record.size, compressedSize: record.compressedSize, method: method,
                    crc32: record.crc32, headerOffset: record.headerOffset, dataOffset: dataOffset))
        }

        if let first = entries.first, let slash = first.name.firstIndex(of: "/") {
            root = String(first.name[..<slash])
        } else {
            root = ""
        }
        self.entries = entries
        self.indexByName = indexByName
        self.archive = archive
        self.file = file
        ok = true
    }

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

    /// Releases the archive and its file descriptor. Further reads throw ``ZipError/misuse(_:)``. Safe to call twice.
    public func close() {
        if let archive { zip_discard(archive) }
        archive = nil
        try? file?.close()
        file = nil
    }

    /// The record with the full name `name` (root folder included), if any.
    public func entry(fullName name: String) -> ZipEntry? {
        indexByName[name].map { entries[$0] }
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
    /// - Throws: ``ZipError`` (`recordTooLarge`, `truncated`, `crcMismatch`, `unsupportedCompression`, `io`, `misuse`).
    public func readAll(_ entry: ZipEntry, limit: UInt64) throws(ZipError) -> [UInt8] {
        guard entry.size <= limit, entry.size <= UInt64(Int.max) else {
            throw ZipError.recordTooLarge(name: entry.name, size: entry.size, limit: limit)
        }
        let size = Int(entry.size)
        if entry.dataOffset == nil {
            // Compressed: the declared size is only a claim until the bytes arrive, so memory grows with what
            // decompression actually produces (streamCore stops at the declared size), not with the claim.
            var out: [UInt8] = []
            out.reserveCapacity(min(size, 16 << 20))
            try streamCore(entry, chunkSize: min(max(size, 1), 4 << 20)) { (chunk) throws(ZipError) in
                out.append(contentsOf: chunk)
            }
            return out
        }
        var failure: ZipError? = nil
        let result = [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            initialized = 0
            do {
                try streamCore(entry, chunkSize: min(max(size, 1), 4 << 20)) { (chunk) throws(ZipError) in
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
        if let dataOffset = entry.dataOffset, !readsStoredThroughLibzip {
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
        _ entry: ZipEntry, chunkSize: Int, _ body: (UnsafeRawBufferPointer) throws(ZipError) -> Void
    ) throws(ZipError) {
        guard let archive, let file else { throw ZipError.misuse("read from '\(path)' after close()") }
        guard entry.index >= 0, entry.index < entries.count, entries[entry.index] == entry else {
            throw ZipError.misuse("record '\(entry.name)' does not belong to '\(path)'")
        }
        let chunkSize = max(1, chunkSize)
        if entry.size == 0 && entry.compressedSize == 0 { return }

        let buffer = borrowBuffer(count: Int(min(UInt64(chunkSize), max(entry.size, 1))))
        defer { returnBuffer(buffer) }
        var crc: UInt32 = 0
        var total: UInt64 = 0

        if let dataOffset = entry.dataOffset, !readsStoredThroughLibzip {
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
            if entry.hasChecksum && crc != entry.crc32 {
                throw ZipError.crcMismatch(record: entry.name, expected: entry.crc32, actual: crc)
            }
            return
        }

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
                throw ZipError.inconsistent(path: path, detail: "record '\(entry.name)' holds more than its declared \(entry.size) bytes")
            }
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<Int(n)])
            crc = ZipCRC32.update(crc, chunk)
            total += UInt64(n)
            try body(chunk)
        }
        if total != entry.size {
            throw ZipError.truncated(record: entry.name, offset: fileSize, expected: entry.size, got: total)
        }
        if entry.hasChecksum && crc != entry.crc32 {
            throw ZipError.crcMismatch(record: entry.name, expected: entry.crc32, actual: crc)
        }
    }

    // MARK: - Errors

    private static func notAZipError(file: ZipFileHandle) throws(ZipError) -> ZipError {
        if let magic = try file.readBytes(count: 4, at: 0), ZipBytes(bytes: magic).u32(0) == ZipCentralDirectory.localHeaderSignature {
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
