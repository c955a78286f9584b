/// Little-endian reads from a byte array with bounds checks.
struct ZipBytes {
    let bytes: [UInt8]

    func u16(_ at: Int) -> UInt16? {
        guard at >= 0, at + 2 <= bytes.count else { return nil }
        return UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8
    }

    func u32(_ at: Int) -> UInt32? {
        guard at >= 0, at + 4 <= bytes.count else { return nil }
        var value: UInt32 = 0
        for i in 0..<4 { value |= UInt32(bytes[at + i]) << (8 * UInt32(i)) }
        return value
    }

    /// The data of the zip64 extended-information field (header id 0x0001) among the extra fields in
    /// `start..<end`, or nil when there is none (a field whose length runs past `end` ends the search).
    func zip64Field(in start: Int, _ end: Int) -> Range<Int>? {
        var q = start
        while q + 4 <= end, let id = u16(q), let length = u16(q + 2).map(Int.init) {
            guard q + 4 + length <= end else { return nil }
            if id == 0x0001 { return (q + 4)..<(q + 4 + length) }
            q += 4 + length
        }
        return nil
    }

    func u64(_ at: Int) -> UInt64? {
        guard at >= 0, at + 8 <= bytes.count else { return nil }
        var value: UInt64 = 0
        for i in 0..<8 { value |= UInt64(bytes[at + i]) << (8 * UInt64(i)) }
        return value
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
        let tail = ZipBytes(bytes: tailBytes)
        var eocd = -1
        var position = tailLength - 22
        while position >= 0 {
            if tail.u32(position) == Self.eocdSignature {
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
            if tail.u32(position) == Self.eocdSignature, let size = tail.u32(position + 12), let at = tail.u32(position + 16),
               UInt64(at) + UInt64(size) <= fileSize,
               (try? file.readBytes(count: 4, at: UInt64(at))).flatMap({ $0 }).map({ ZipBytes(bytes: $0).u32(0) == Self.centralHeaderSignature }) ?? false
            {
                other.append(tailStart + UInt64(position))
            }
            position -= 1
        }
        endRecordOffset = tailStart + UInt64(eocd)
        otherEndRecords = other

        var count = UInt64(tail.u16(eocd + 10)!)
        var directorySize = UInt64(tail.u32(eocd + 12)!)
        var directoryOffset = UInt64(tail.u32(eocd + 16)!)

        if eocd >= 20, tail.u32(eocd - 20) == Self.zip64LocatorSignature {
            let zip64Offset = tail.u64(eocd - 20 + 8)!
            guard zip64Offset <= fileSize, let raw = try file.readBytes(count: 56, at: zip64Offset) else {
                throw damaged("zip64 end-of-central-directory record at byte \(zip64Offset) is past the end of the file")
            }
            let zip64 = ZipBytes(bytes: raw)
            guard zip64.u32(0) == Self.zip64EOCDSignature else {
                throw damaged("no zip64 end-of-central-directory record at byte \(zip64Offset)")
            }
            count = zip64.u64(32)!
            directorySize = zip64.u64(40)!
            directoryOffset = zip64.u64(48)!
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
        let directory = ZipBytes(bytes: directoryBytes)
        // Every entry takes at least 46 bytes, which bounds the count by the directory's real size.
        guard count <= directorySize / 46 else {
            throw damaged("\(count) records cannot fit in a \(directorySize)-byte central directory")
        }

        var records: [Record] = []
        records.reserveCapacity(Int(count))
        var p = 0
        for index in 0..<Int(count) {
            guard directory.u32(p) == Self.centralHeaderSignature, let nameLength = directory.u16(p + 28),
                let extraLength = directory.u16(p + 30), let commentLength = directory.u16(p + 32)
            else {
                throw damaged("central directory entry \(index) at byte \(directoryOffset + UInt64(p)) is malformed")
            }
            let nameStart = p + 46
            let extraStart = nameStart + Int(nameLength)
            let end = extraStart + Int(extraLength) + Int(commentLength)
            guard end <= directoryBytes.count else {
                throw damaged("central directory entry \(index) runs past the directory")
            }
            var record = Record(
                name: Array(directoryBytes[nameStart..<extraStart]),
                method: directory.u16(p + 10)!,
                flags: directory.u16(p + 8)!,
                crc32: directory.u32(p + 16)!,
                compressedSize: UInt64(directory.u32(p + 20)!),
                size: UInt64(directory.u32(p + 24)!),
                headerOffset: UInt64(directory.u32(p + 42)!),
                versionNeeded: directory.u16(p + 6)!,
                modTime: directory.u16(p + 12)!,
                modDate: directory.u16(p + 14)!)
            // Zip64 extended information: the 64-bit values present are exactly those whose 32-bit field is all ones.
            if record.size == 0xFFFF_FFFF || record.compressedSize == 0xFFFF_FFFF || record.headerOffset == 0xFFFF_FFFF {
                guard let field = directory.zip64Field(in: extraStart, extraStart + Int(extraLength)) else {
                    throw damaged("entry \(index) needs a zip64 extra field but has none")
                }
                var r = field.lowerBound
                func next() throws(ZipError) -> UInt64 {
                    guard r + 8 <= field.upperBound else { throw damaged("zip64 extra field of entry \(index) is too short") }
                    defer { r += 8 }
                    return directory.u64(r)!
                }
                if record.size == 0xFFFF_FFFF { record.size = try next() }
                if record.compressedSize == 0xFFFF_FFFF { record.compressedSize = try next() }
                if record.headerOffset == 0xFFFF_FFFF { record.headerOffset = try next() }
            }
            records.append(record)
            p = end
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
        var h = ZipBytes(bytes: raw)
        guard h.u32(0) == localHeaderSignature, let nameLength = h.u16(26), let extraLength = h.u16(28) else {
            throw damaged("no local header for '\(name)' at byte \(record.headerOffset)")
        }
        let headerLength = 30 + Int(nameLength) + Int(extraLength)
        if raw.count < headerLength {
            guard UInt64(headerLength) <= fileSize - record.headerOffset,
                  let more = try file.readBytes(count: headerLength, at: record.headerOffset) else {
                throw damaged("local header of '\(name)' runs past the end of the file")
            }
            raw = more
            h = ZipBytes(bytes: raw)
        }
        let flags = h.u16(6)!
        let localName = raw[30..<(30 + Int(nameLength))]
        var disagreement: String? = nil
        if !localName.elementsEqual(record.name) {
            disagreement = "the local header of '\(name)' names it '\(String(decoding: localName, as: UTF8.self))'"
        } else if h.u16(4)! > record.versionNeeded || h.u16(8)! != record.method || h.u16(10)! != record.modTime
                    || h.u16(12)! != record.modDate {
            disagreement = "the local header of '\(name)' disagrees with its central directory entry"
        }
        if disagreement != nil, !lenient { throw damaged("local and central header of '\(name)' do not agree") }
        var compressed = UInt64(h.u32(18)!), size = UInt64(h.u32(22)!)
        if compressed == 0xFFFF_FFFF || size == 0xFFFF_FFFF {
            // Zip64 local extra field: both sizes, uncompressed first.
            guard let field = h.zip64Field(in: 30 + Int(nameLength), headerLength), field.count >= 16 else {
                throw damaged("local header of '\(name)' needs a zip64 extra field but has none")
            }
            size = h.u64(field.lowerBound)!
            compressed = h.u64(field.lowerBound + 8)!
        }
        // Without a data descriptor the values must match; with one (bit 3), a local value is zero or matches.
        let descriptor = flags & 0x0008 != 0
        func agrees<T: BinaryInteger>(_ local: T, _ central: T) -> Bool { local == central || (descriptor && local == 0) }
        if !(agrees(h.u32(14)!, record.crc32) && agrees(compressed, record.compressedSize) && agrees(size, record.size)) {
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
