/// One record of a zip archive, as listed by the central directory.
public struct ZipEntry: Sendable, Equatable {
    /// How a record's bytes are stored.
    public enum Method: Sendable, Equatable, CustomStringConvertible {
        /// Stored as is (method 0). `torch.save` writes every record this way.
        case stored
        /// Raw deflate (method 8).
        case deflated
        /// Any other zip method number.
        case other(UInt16)

        /// The zip method number.
        public var rawValue: UInt16 {
            switch self {
            case .stored: return 0
            case .deflated: return 8
            case .other(let value): return value
            }
        }

        init(rawValue: UInt16) {
            switch rawValue {
            case 0: self = .stored
            case 8: self = .deflated
            default: self = .other(rawValue)
            }
        }

        /// "stored", "deflated" or "method N".
        public var description: String {
            switch self {
            case .stored: return "stored"
            case .deflated: return "deflated"
            case .other(let value): return "method \(value)"
            }
        }
    }

    /// The full record name, root folder included (for example `model/data/0`).
    public let name: String
    /// Position in the central directory, starting at 0.
    public let index: Int
    /// Uncompressed size in bytes.
    public let size: UInt64
    /// Size of the record's bytes in the file.
    public let compressedSize: UInt64
    /// How the bytes are stored.
    public let method: Method
    /// CRC-32 from the central directory. 0 for a non-empty record means no checksum was recorded
    /// (`torch.utils.serialization.config.save.compute_crc32 = False`); readers then skip the check.
    public let crc32: UInt32
    /// Offset of the record's local header in the file.
    public let headerOffset: UInt64

    /// Memberwise initializer.
    public init(
        name: String, index: Int, size: UInt64, compressedSize: UInt64, method: Method, crc32: UInt32,
        headerOffset: UInt64
    ) {
        self.name = name
        self.index = index
        self.size = size
        self.compressedSize = compressedSize
        self.method = method
        self.crc32 = crc32
        self.headerOffset = headerOffset
    }

    /// Whether the archive records a checksum that reads of this record are verified against.
    public var hasChecksum: Bool { crc32 != 0 || size == 0 }
}

/// Record-name checks shared by the reader and the writer.
enum ZipNames {
    /// Whether a full record name is safe to accept: not absolute (no leading `/` or drive letter), no `..`, `.`
    /// or empty components, no backslash and no NUL byte. A single trailing `/` (a folder entry) is allowed.
    static func isSafe(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { isSafe(bytes: $0) }
    }

    /// ``isSafe(_:)`` on the name's UTF-8 bytes, in one pass and without allocating (archives hold up to millions
    /// of names, and `ckpt keys` opens one per call).
    static func isSafe(bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
        let count = bytes.count
        if count == 0 || bytes[0] == slash { return false }
        // A drive letter ("C:", "C:/x") makes a Windows path absolute.
        if count >= 2, bytes[1] == UInt8(ascii: ":"), (bytes[0] | 0x20) >= UInt8(ascii: "a"),
            (bytes[0] | 0x20) <= UInt8(ascii: "z"), count == 2 || bytes[2] == slash
        {
            return false
        }
        for b in bytes where b == 0 || b == UInt8(ascii: "\\") { return false }
        // A single trailing "/" (a folder entry "a/b/") ends the last component; every component must be non-empty
        // and neither "." nor "..".
        let end = count > 1 && bytes[count - 1] == slash ? count - 1 : count
        var start = 0
        for i in 0...end where i == end || bytes[i] == slash {
            let length = i - start
            if length == 0 || (length <= 2 && bytes[start] == dot && (length == 1 || bytes[start + 1] == dot)) {
                return false
            }
            start = i + 1
        }
        return true
    }

    /// Decodes raw name bytes as strict UTF-8, or returns `nil`.
    static func decode(_ bytes: [UInt8]) -> String? {
        let string = String(decoding: bytes, as: UTF8.self)
        return Array(string.utf8) == bytes ? string : nil
    }
}
