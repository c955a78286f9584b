/// Everything that can go wrong while reading or writing the zip container of a PyTorch checkpoint.
///
/// Each case carries where it happened (file path, record name, byte offset) and its `description`
/// is one lowercase line that says what to do about it.
public enum ZipError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file has no zip end-of-central-directory record and does not start like a zip either.
    case notAZip(path: String)
    /// The file starts with a zip local header but its end (the central directory) is missing: it was cut short.
    case truncatedArchive(path: String)
    /// A record's data ends before its declared size: `got` of `expected` bytes were readable, the last at `offset`.
    case truncated(record: String, offset: UInt64, expected: UInt64, got: UInt64)
    /// The central directory, the local headers or the end records disagree with each other.
    case inconsistent(path: String, detail: String)
    /// A record's bytes do not match the CRC-32 stored for it in the central directory.
    case crcMismatch(record: String, expected: UInt32, actual: UInt32)
    /// A record that the caller requires is not in the archive (the name includes the root folder).
    case missingRecord(String)
    /// Two records carry the same name; which one a reader picks is undefined, so the archive is refused.
    case duplicateRecord(String)
    /// A record name is absolute, contains a `..` or `.` component, an empty component, a backslash,
    /// a NUL byte, or is not valid UTF-8.
    case unsafeRecordName(String)
    /// A record is larger than the limit the caller allows for reading it into memory.
    case recordTooLarge(name: String, size: UInt64, limit: UInt64)
    /// The archive holds more records than the reader accepts.
    case tooManyRecords(count: UInt64, limit: Int)
    /// A record uses a compression method this build cannot decode.
    case unsupportedCompression(record: String, method: UInt16)
    /// A record is encrypted.
    case encryptedRecord(String)
    /// A deflated record declares more bytes than deflate can produce from its compressed size (at most 1032
    /// output bytes per input byte, zlib's bound: a 258-byte match costs at least 2 bits).
    case impossibleExpansion(record: String, size: UInt64, compressedSize: UInt64)
    /// A compressed record inflates to another number of bytes than the central directory declares.
    case inflatedSizeMismatch(record: String, declared: UInt64, inflated: UInt64)
    /// A record written with ``TorchZipWriter`` received a different number of bytes than announced.
    case sizeMismatch(record: String, declared: UInt64, written: UInt64)
    /// An API was called out of order (for example `write` with no open record, or any call after `close()`).
    case misuse(String)
    /// A system call or libzip call failed; the text names the operation, the path and the reason.
    case io(String)

    /// One lowercase line describing the failure and what to do about it.
    public var description: String {
        switch self {
        case .notAZip(let path):
            return "'\(path)' is not a zip archive; it may be a legacy (pre-1.6) torch file, safetensors, or not a checkpoint at all"
        case .truncatedArchive(let path):
            return "'\(path)' starts like a zip but its central directory is missing; the file was cut short, copy or download it again"
        case .truncated(let record, let offset, let expected, let got):
            return "record '\(record)' is truncated: only \(got) of \(expected) bytes could be read (file ends at byte \(offset)); the file was cut short"
        case .inconsistent(let path, let detail):
            return "'\(path)' is a damaged zip archive (\(detail)); restore it from a good copy"
        case .crcMismatch(let record, let expected, let actual):
            return "record '\(record)' is corrupted: crc-32 is \(hex(actual)) but the archive says \(hex(expected)); restore the file from a good copy"
        case .missingRecord(let name):
            return "record '\(name)' is missing from the archive; the file is incomplete or not a torch checkpoint"
        case .duplicateRecord(let name):
            return "record '\(name)' appears more than once; the archive is ambiguous and was refused"
        case .unsafeRecordName(let name):
            return "record name '\(name)' is unsafe (absolute path, '..' or '.' component, empty component, backslash, nul or invalid utf-8); refusing the archive"
        case .recordTooLarge(let name, let size, let limit):
            return "record '\(name)' is \(size) bytes, above the \(limit)-byte limit for reading it into memory; stream it instead or raise the limit"
        case .tooManyRecords(let count, let limit):
            return "archive has \(count) records, more than the \(limit) accepted; it is not a plausible checkpoint"
        case .unsupportedCompression(let record, let method):
            return "record '\(record)' uses zip compression method \(method), which cannot be decoded; re-save the checkpoint with torch.save"
        case .encryptedRecord(let name):
            return "record '\(name)' is encrypted; decrypt the archive first"
        case .impossibleExpansion(let record, let size, let compressed):
            return "record '\(record)' claims \(size) bytes from \(compressed) deflated bytes, more than deflate's 1032 to 1 allows; the archive lies about it and was refused"
        case .inflatedSizeMismatch(let record, let declared, let inflated):
            return "record '\(record)' inflates to \(inflated) bytes\(inflated > declared ? " or more" : ""), not the \(declared) bytes the archive declares; restore the file from a good copy"
        case .sizeMismatch(let record, let declared, let written):
            return "record '\(record)' was announced as \(declared) bytes but \(written) were written; the output is invalid and must be discarded"
        case .misuse(let what):
            return "zip api misuse: \(what)"
        case .io(let what):
            return what
        }
    }
}

private func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}
