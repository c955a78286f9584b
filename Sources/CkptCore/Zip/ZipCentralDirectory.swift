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

    /// Reads the end records and the central directory of `file`.
    init(file: ZipFileHandle, fileSize: UInt64, maxRecords: Int) throws(ZipError) {
        let path = file.path
        func damaged(_ detail: String) -> ZipError { .inconsistent(path: path, detail: detail) }

        // End of central directory: 22 bytes plus a comment of up to 65,535 bytes, at the end of the file.
        let tailLength = Int(min(fileSize, 22 + 65_535 + 20))
        let tailStart = fileSize - UInt64(tailLength)
        guard let tailBytes = try file.readBytes(count: tailLength, at: tailStart) else {
            throw damaged("file shrank while reading")
        }
        let tail = ZipBytes(bytes: tailBytes)
        var eocd = -1
        var position = tailLength - 22
        while position >= 0 {
            if tail.u32(position) == Self.eocdSignature,
                let commentLength = tail.u16(position + 20), position + 22 + Int(commentLength) <= tailLength
            {
                eocd = position
                break
            }
            position -= 1
        }
        guard eocd >= 0 else { throw damaged("no end-of-central-directory record") }

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
    static func checkLocalHeader(_ record: Record, displayName name: String, file: ZipFileHandle, fileSize: UInt64,
                                 directoryOffset: UInt64) throws(ZipError) -> UInt64
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
        guard h.u16(4)! <= record.versionNeeded, h.u16(8)! == record.method, h.u16(10)! == record.modTime,
              h.u16(12)! == record.modDate, raw[30..<(30 + Int(nameLength))].elementsEqual(record.name)
        else {
            throw damaged("local and central header of '\(name)' do not agree")
        }
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
        guard agrees(h.u32(14)!, record.crc32), agrees(compressed, record.compressedSize), agrees(size, record.size) else {
            throw damaged("local and central header of '\(name)' do not agree")
        }
        let start = record.headerOffset + UInt64(headerLength)
        if start > fileSize || record.compressedSize > fileSize - start {
            throw ZipError.truncated(record: name, offset: fileSize, expected: record.compressedSize,
                                     got: start > fileSize ? 0 : fileSize - start)
        }
        guard start + record.compressedSize <= directoryOffset else {
            throw damaged("the data of '\(name)' runs into the central directory")
        }
        return start
    }
}
