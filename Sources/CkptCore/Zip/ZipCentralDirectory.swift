extension ByteCursor {
    /// The zip64 extended-information field (header id 0x0001) among the extra fields this cursor spans, as a
    /// cursor over its data; nil when there is none (a field whose length runs past the end ends the search).
    func zip64Field() -> ByteCursor? {
        var c = self
        while c.remaining >= 4, let id = try? c.u16le(), let length = try? c.u16le() {
            guard let field = try? c.sub(Int(length)) else { return nil }
            if id == 0x0001 { return field }
        }
        return nil
    }
}

/// The facts libzip does not expose: where each record's local header is, read from the central directory.
///
/// libzip has already validated the archive when this runs; this walk only locates, and every value it finds is
/// cross-checked against libzip's view by the caller.
struct ZipCentralDirectory {
    struct Record {
        var name: [UInt8]
        var method: UInt16
        var flags: UInt16
        var crc32: UInt32
        var compressedSize: UInt64
        var size: UInt64
        var headerOffset: UInt64
        /// Version needed to extract, and the DOS modification time and date: a local header repeats them.
        var versionNeeded: UInt16 = 0
        var modTime: UInt16 = 0
        var modDate: UInt16 = 0
    }

    static let eocdSignature: UInt32 = 0x0605_4b50
    static let zip64LocatorSignature: UInt32 = 0x0706_4b50
    static let zip64EOCDSignature: UInt32 = 0x0606_4b50
    static let centralHeaderSignature: UInt32 = 0x0201_4b50
    static let localHeaderSignature: UInt32 = 0x0403_4b50

    var records: [Record]
    /// Where the central directory starts: every record's data ends before it.
    var directoryOffset: UInt64 = 0
    /// Where the end record read is (the last one, as torch's reader takes it).
    var endRecordOffset: UInt64 = 0
    /// Where other plausible end records are (each points at a central directory inside the file): a reader that
    /// picks end records otherwise reads another archive.
    var otherEndRecords: [UInt64] = []

    /// The 4-byte little-endian signature at `position` of `bytes`, if there are 4 bytes there.
    static func signature(_ bytes: [UInt8], at position: Int) -> UInt32? {
        var c = ByteCursor(bytes, at: position)
        return try? c.u32le()
    }

    /// Where miniz's backward search for the end record stops (`mz_zip_reader_locate_header_sig`): it reads
    /// 4096-byte blocks from the end, each starting 4093 bytes before the previous one, and gives up after the
    /// block that starts 65,535 + 22 bytes or more before the end of the file (or at byte 0).
    static func endRecordSearchStart(fileSize: UInt64) -> UInt64 {
        var start = fileSize > 4096 ? fileSize - 4096 : 0
        while start > 0 && fileSize - start < 65_535 + 22 {
            start = start > 4093 ? start - 4093 : 0
        }
        return start
    }

    /// Reads the end records and the central directory of `file`.
    init(file: ZipFileHandle, fileSize: UInt64, maxRecords: Int) throws(ZipError) {
        let path = file.path
        func damaged(_ detail: String) -> ZipError { .inconsistent(path: path, detail: detail) }

        // End of central directory, found as torch's zip reader (miniz `mz_zip_reader_locate_header_sig`) finds
        // it: the last signature with at least 22 bytes after it, searching back from the end in 4096-byte blocks
        // (each overlapping the next by 3 bytes) until a block starts 65,535 + 22 bytes or more before the end.
        // The comment length is not checked: a record whose comment runs past the end of the file still counts.
        let tailStart = Self.endRecordSearchStart(fileSize: fileSize)
        let tailLength = Int(fileSize - tailStart)
        guard let tailBytes = try file.readBytes(count: tailLength, at: tailStart) else {
            throw damaged("file shrank while reading")
        }
        var eocd = -1
        var position = tailLength - 22
        while position >= 0 {
            if Self.signature(tailBytes, at: position) == Self.eocdSignature {
                eocd = position
                break
            }
            position -= 1
        }
        guard eocd >= 0 else { throw damaged("no end-of-central-directory record") }
        // Earlier end records whose central directory lies inside the file and starts with a central header:
        // another reader (one that checks the comment length, or takes the first) may read that archive instead.
        var other: [UInt64] = []
        position = eocd - 1
        while position >= 0 {
            var fields = ByteCursor(tailBytes, at: position + 12)
            if Self.signature(tailBytes, at: position) == Self.eocdSignature, let size = try? fields.u32le(),
               let at = try? fields.u32le(), UInt64(at) + UInt64(size) <= fileSize,
               let head = (try? file.readBytes(count: 4, at: UInt64(at))).flatMap({ $0 }),
               Self.signature(head, at: 0) == Self.centralHeaderSignature
            {
                other.append(tailStart + UInt64(position))
            }
            position -= 1
        }
        endRecordOffset = tailStart + UInt64(eocd)
        otherEndRecords = other

        // The end record (22 bytes, all in the tail): signature, disk numbers and this disk's count (8 bytes), then
        // the record count, the directory's size and offset.
        var count: UInt64, directorySize: UInt64, directoryOffset: UInt64
        do throws(ByteCursor.Failure) {
            var end = ByteCursor(tailBytes, at: eocd + 10)
            count = UInt64(try end.u16le())
            directorySize = UInt64(try end.u32le())
            directoryOffset = UInt64(try end.u32le())
        } catch {
            throw damaged("end-of-central-directory record: \(error)")
        }

        // The zip64 locator (20 bytes) right before it: signature, disk, then the zip64 end record's offset.
        var locator = ByteCursor(tailBytes, at: eocd - 20, end: eocd)
        if eocd >= 20, (try? locator.u32le()) == Self.zip64LocatorSignature, (try? locator.skip(4)) != nil,
           let zip64Offset = try? locator.u64le()
        {
            guard zip64Offset <= fileSize, let raw = try file.readBytes(count: 56, at: zip64Offset) else {
                throw damaged("zip64 end-of-central-directory record at byte \(zip64Offset) is past the end of the file")
            }
            var zip64 = ByteCursor(raw)
            guard (try? zip64.u32le()) == Self.zip64EOCDSignature else {
                throw damaged("no zip64 end-of-central-directory record at byte \(zip64Offset)")
            }
            // Record size (8), versions (4), disk numbers (8), this disk's count (8); then the count, size, offset.
            do throws(ByteCursor.Failure) {
                try zip64.skip(28)
                count = try zip64.u64le()
                directorySize = try zip64.u64le()
                directoryOffset = try zip64.u64le()
            } catch {
                throw damaged("zip64 end-of-central-directory record: \(error)")
            }
        }

        guard count <= UInt64(maxRecords) else { throw ZipError.tooManyRecords(count: count, limit: maxRecords) }
        guard directoryOffset <= fileSize, directorySize <= fileSize - directoryOffset,
            directorySize <= UInt64(Int.max)
        else {
            throw damaged("central directory (\(directorySize) bytes at byte \(directoryOffset)) lies outside the file")
        }
        guard let directoryBytes = try file.readBytes(count: Int(directorySize), at: directoryOffset) else {
            throw damaged("file shrank while reading")
        }
        // Every entry takes at least 46 bytes, which bounds the count by the directory's real size.
        guard count <= directorySize / 46 else {
            throw damaged("\(count) records cannot fit in a \(directorySize)-byte central directory")
        }

        var records: [Record] = []
        records.reserveCapacity(Int(count))
        var directory = ByteCursor(directoryBytes)
        for index in 0..<Int(count) {
            // A central header (46 bytes): signature, version made by, version needed, flags, method, time, date,
            // CRC, sizes, the three lengths, disk, attributes, local header offset; then name, extra, comment.
            let entryStart = directory.offset
            var record: Record
            let nameLength: UInt16, extraLength: UInt16, commentLength: UInt16
            do throws(ByteCursor.Failure) {
                guard try directory.u32le() == Self.centralHeaderSignature else { throw .badLength(offset: entryStart, length: 0) }
                try directory.skip(2)
                let versionNeeded = try directory.u16le(), flags = try directory.u16le(), method = try directory.u16le()
                let modTime = try directory.u16le(), modDate = try directory.u16le(), crc32 = try directory.u32le()
                let compressedSize = try directory.u32le(), size = try directory.u32le()
                (nameLength, extraLength, commentLength) = (try directory.u16le(), try directory.u16le(), try directory.u16le())
                record = Record(name: [], method: method, flags: flags, crc32: crc32, compressedSize: UInt64(compressedSize),
                                size: UInt64(size), headerOffset: 0, versionNeeded: versionNeeded, modTime: modTime,
                                modDate: modDate)
            } catch {
                throw damaged("central directory entry \(index) at byte \(directoryOffset + UInt64(entryStart)) is malformed")
            }
            let extra: ByteCursor
            do throws(ByteCursor.Failure) {
                guard directory.remaining >= 12 + Int(nameLength) + Int(extraLength) + Int(commentLength) else {
                    throw .outOfBytes(offset: directory.offset, wanted: 0, available: directory.remaining)
                }
                try directory.skip(8)
                record.headerOffset = UInt64(try directory.u32le())
                record.name = Array(try directory.bytes(Int(nameLength)))
                extra = try directory.sub(Int(extraLength))
                try directory.skip(Int(commentLength))
            } catch {
                throw damaged("central directory entry \(index) runs past the directory")
            }
            // Zip64 extended information: the 64-bit values present are exactly those whose 32-bit field is all ones.
            if record.size == 0xFFFF_FFFF || record.compressedSize == 0xFFFF_FFFF || record.headerOffset == 0xFFFF_FFFF {
                guard var field = extra.zip64Field() else {
                    throw damaged("entry \(index) needs a zip64 extra field but has none")
                }
                func next() throws(ZipError) -> UInt64 {
                    do { return try field.u64le() } catch { throw damaged("zip64 extra field of entry \(index) is too short") }
                }
                if record.size == 0xFFFF_FFFF { record.size = try next() }
                if record.compressedSize == 0xFFFF_FFFF { record.compressedSize = try next() }
                if record.headerOffset == 0xFFFF_FFFF { record.headerOffset = try next() }
            }
            records.append(record)
        }
        self.records = records
        self.directoryOffset = directoryOffset
    }

    /// Reads a record's local header, checks that it agrees with the central directory (what libzip's
    /// `ZIP_CHECKCONS` checked: version, method, time, name, and, without a data descriptor, CRC and sizes, zip64
    /// ones included) and that the data ends before the central directory; returns where the data starts.
    ///
    /// `lenient`: read as torch's zip reader does (miniz `mz_zip_reader_extract_to_mem_no_alloc`): the local header
    /// only needs its signature, and its own name and extra lengths say where the data starts; a disagreement with
    /// the central directory is returned (in words) instead of thrown.
    static func checkLocalHeader(_ record: Record, displayName name: String, file: ZipFileHandle, fileSize: UInt64,
                                 directoryOffset: UInt64, lenient: Bool = false) throws(ZipError)
        -> (start: UInt64, disagreement: String?)
    {
        let path = file.path
        func damaged(_ detail: String) -> ZipError { .inconsistent(path: path, detail: detail) }
        // One read for the usual case: the fixed part, the name and up to 192 bytes of extra field.
        let want = UInt64(30 + record.name.count + 192)
        guard record.headerOffset <= fileSize, fileSize - record.headerOffset >= 30 else {
            throw damaged("no local header for '\(name)' at byte \(record.headerOffset)")
        }
        var raw = try file.readBytes(count: Int(min(want, fileSize - record.headerOffset)), at: record.headerOffset) ?? []
        // The fixed part (30 bytes): signature, version needed, flags, method, time, date, CRC, compressed and
        // uncompressed size, name and extra lengths.
        var h = ByteCursor(raw)
        let version: UInt16, flags: UInt16, method: UInt16, modTime: UInt16, modDate: UInt16, crc: UInt32
        var compressed: UInt64, size: UInt64
        let nameLength: UInt16, extraLength: UInt16
        do throws(ByteCursor.Failure) {
            guard try h.u32le() == localHeaderSignature else { throw .badLength(offset: 0, length: 0) }
            (version, flags, method, modTime, modDate) = (try h.u16le(), try h.u16le(), try h.u16le(), try h.u16le(), try h.u16le())
            crc = try h.u32le()
            (compressed, size) = (UInt64(try h.u32le()), UInt64(try h.u32le()))
            (nameLength, extraLength) = (try h.u16le(), try h.u16le())
        } catch {
            throw damaged("no local header for '\(name)' at byte \(record.headerOffset)")
        }
        let headerLength = 30 + Int(nameLength) + Int(extraLength)
        if raw.count < headerLength {
            guard UInt64(headerLength) <= fileSize - record.headerOffset,
                  let more = try file.readBytes(count: headerLength, at: record.headerOffset) else {
                throw damaged("local header of '\(name)' runs past the end of the file")
            }
            raw = more
            h = ByteCursor(raw, at: 30)
        }
        let localName: ArraySlice<UInt8>, extra: ByteCursor
        do throws(ByteCursor.Failure) {
            localName = try h.bytes(Int(nameLength))
            extra = try h.sub(Int(extraLength))
        } catch {
            throw damaged("local header of '\(name)' runs past the end of the file")
        }
        var disagreement: String? = nil
        if !localName.elementsEqual(record.name) {
            disagreement = "the local header of '\(name)' names it '\(String(decoding: localName, as: UTF8.self))'"
        } else if version > record.versionNeeded || method != record.method || modTime != record.modTime
                    || modDate != record.modDate {
            disagreement = "the local header of '\(name)' disagrees with its central directory entry"
        }
        if disagreement != nil, !lenient { throw damaged("local and central header of '\(name)' do not agree") }
        if compressed == 0xFFFF_FFFF || size == 0xFFFF_FFFF {
            // Zip64 local extra field: both sizes, uncompressed first.
            guard var field = extra.zip64Field(), let u = try? field.u64le(), let c = try? field.u64le() else {
                throw damaged("local header of '\(name)' needs a zip64 extra field but has none")
            }
            (size, compressed) = (u, c)
        }
        // Without a data descriptor the values must match; with one (bit 3), a local value is zero or matches.
        let descriptor = flags & 0x0008 != 0
        func agrees<T: BinaryInteger>(_ local: T, _ central: T) -> Bool { local == central || (descriptor && local == 0) }
        if !(agrees(crc, record.crc32) && agrees(compressed, record.compressedSize) && agrees(size, record.size)) {
            guard lenient else { throw damaged("local and central header of '\(name)' do not agree") }
            disagreement = disagreement ?? "the local header of '\(name)' declares other sizes or another CRC than its central directory entry"
        }
        let start = record.headerOffset + UInt64(headerLength)
        if start > fileSize || record.compressedSize > fileSize - start {
            throw ZipError.truncated(record: name, offset: fileSize, expected: record.compressedSize,
                                     got: start > fileSize ? 0 : fileSize - start)
        }
        guard lenient || start + record.compressedSize <= directoryOffset else {
            throw damaged("the data of '\(name)' runs into the central directory")
        }
        return (start, disagreement)
    }
}
