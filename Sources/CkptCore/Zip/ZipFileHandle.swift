internal import CSys

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// A thin owner of a POSIX file descriptor with full-length `pread`/`write` loops and errors that name the path.
final class ZipFileHandle {
    let path: String
    private(set) var fd: Int32
    /// A window of the file read as if it were the whole file (a `torch.save` zip stored inside a DCP `.distcp`
    /// file at `[offset, offset + length)`): offsets are relative to its start and the file ends at its end.
    private(set) var window: Range<UInt64>? = nil

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    /// Where byte 0 of this handle is in the file.
    var windowStart: UInt64 { window?.lowerBound ?? 0 }

    /// Opens `range` of the file at `path` read-only as a file of its own (see ``window``).
    static func openForReading(_ path: String, window range: Range<UInt64>) throws(ZipError) -> ZipFileHandle {
        let h = try openForReading(path)
        let size = try h.size()
        guard range.upperBound <= size else {
            throw ZipError.io("'\(path)' is cut short: bytes \(range.lowerBound)..<\(range.upperBound) are needed, the file has \(size)")
        }
        h.window = range
        return h
    }

    /// Opens `path` read-only.
    /// Opens `path` read-only. Anything but a regular file is refused: O_NONBLOCK keeps the open of a FIFO from
    /// waiting for a writer, and reads of a FIFO or a device could not seek.
    static func openForReading(_ path: String) throws(ZipError) -> ZipFileHandle {
        let fd = Self.retryingEINTR { open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC) }
        if fd < 0 { throw ZipError.io(systemMessage("cannot open '\(path)' for reading")) }
        let handle = ZipFileHandle(path: path, fd: fd)
        var info = stat()
        if fstat(fd, &info) != 0 { throw ZipError.io(systemMessage("cannot stat '\(path)'")) }
        if info.st_mode & S_IFMT != S_IFREG { throw ZipError.io("'\(path)' is \(InputPath.notAFile(mode: info.st_mode))") }
        return handle
    }

    /// Creates or truncates `path` for writing (mode 0644 before the umask). It is opened for reading too, so that
    /// bytes copied in by ``copyRange(from:at:count:)`` can be read back and checked.
    static func openForWriting(_ path: String) throws(ZipError) -> ZipFileHandle {
        let fd = Self.retryingEINTR { open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
        if fd < 0 { throw ZipError.io(systemMessage("cannot create '\(path)'")) }
        return ZipFileHandle(path: path, fd: fd)
    }

    deinit {
        if fd >= 0 { _ = closeFD(fd) }
    }

    /// The file's size in bytes.
    func size() throws(ZipError) -> UInt64 {
        if let w = window { return w.upperBound - w.lowerBound }
        var info = stat()
        if fstat(fd, &info) != 0 { throw ZipError.io(Self.systemMessage("cannot stat '\(path)'")) }
        return UInt64(info.st_size)
    }

    /// Reads up to `buffer.count` bytes at `offset`; returns fewer only at end of file.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(ZipError) -> Int {
        if let w = window {
            // Inside the window only: its end is the end of the file.
            let size = w.upperBound - w.lowerBound
            guard offset < size else { return 0 }
            let n = Int(min(UInt64(buffer.count), size - offset))
            guard w.lowerBound <= UInt64(Int64.max) - size else { return 0 }
            return try readRaw(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]), at: w.lowerBound + offset)
        }
        return try readRaw(into: buffer, at: offset)
    }

    private func readRaw(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(ZipError) -> Int {
        // Offsets come from the file; past what off_t can hold there is nothing to read.
        guard offset <= UInt64(Int64.max) - UInt64(buffer.count) else { return 0 }
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw ZipError.io(Self.systemMessage("cannot read '\(path)' at byte \(offset + UInt64(done))"))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Reads exactly `count` bytes at `offset`, or returns `nil` if the file ends first.
    func readBytes(count: Int, at offset: UInt64) throws(ZipError) -> [UInt8]? {
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 8)
        defer { raw.deallocate() }
        let got = try read(into: raw, at: offset)
        return got == count ? Array(raw) : nil
    }

    /// Writes all of `bytes` at the current position, or at `offset` leaving the position where it is (pwrite).
    func writeAll(_ bytes: UnsafeRawBufferPointer, at offset: UInt64? = nil) throws(ZipError) {
        var done = 0
        while done < bytes.count {
            let n = offset.map { pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t($0) + off_t(done)) }
                ?? posixWrite(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw ZipError.io(Self.systemMessage("cannot write '\(path)'"))
            }
            done += n
        }
    }

    /// Appends `count` bytes of `source`, from `offset`, at this file's position, inside the kernel
    /// (copy_file_range): the bytes never pass through this process. Returns false, having copied nothing, when the
    /// kernel or the pair of file systems cannot do it (the caller then copies through a buffer).
    ///
    /// - Throws: ``ZipError/truncated(record:offset:expected:got:)`` (named `record`) when `source` ends first, and
    ///   ``ZipError/io(_:)`` when a copy that had started fails.
    func copyRange(from source: ZipFileHandle, at offset: UInt64, count: UInt64, record: String) throws(ZipError) -> Bool {
        #if os(Linux)
        var position = Int64(offset + source.windowStart)
        var left = count
        while left > 0 {
            let n = ckpt_copy_file_range(source.fd, &position, fd, min(left, 1 << 30))
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                if left == count, [EXDEV, ENOSYS, EINVAL, EOPNOTSUPP, EBADF, EPERM, ETXTBSY].contains(code) { return false }
                throw ZipError.io(Self.systemMessage("cannot copy from '\(source.path)' to '\(path)'"))
            }
            if n == 0 {
                throw ZipError.truncated(record: record, offset: UInt64(position), expected: count, got: count - left)
            }
            left -= UInt64(n)
        }
        return true
        #else
        return false
        #endif
    }

    /// Starts writing a range's dirty pages to disk without waiting (a hint; failures are ignored), so that the
    /// final ``sync()`` of a large file waits for the tail only instead of the whole file.
    func startWriteback(at offset: UInt64, count: UInt64) {
        #if os(Linux)
        _ = ckpt_start_writeback(fd, Int64(clamping: offset), Int64(clamping: count))
        #endif
    }

    /// Flushes the file's data and metadata to stable storage.
    func sync() throws(ZipError) {
        if Self.retryingEINTR({ fsync(fd) }) != 0 { throw ZipError.io(Self.systemMessage("cannot fsync '\(path)'")) }
    }

    /// Closes the descriptor, reporting a failed close (which can carry a deferred write error).
    func close() throws(ZipError) {
        guard fd >= 0 else { return }
        let result = closeFD(fd)
        fd = -1
        if result != 0 { throw ZipError.io(Self.systemMessage("cannot close '\(path)'")) }
    }

    /// Hints the kernel that the file will be read sequentially (no-op where unsupported).
    func adviseSequential() {
        #if canImport(Glibc) || canImport(Musl)
        _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
        #endif
    }

    /// Runs a system call again while it fails with EINTR.
    static func retryingEINTR(_ body: () -> Int32) -> Int32 {
        while true {
            let result = body()
            if result < 0 && errno == EINTR { continue }
            return result
        }
    }

    static func systemMessage(_ what: String) -> String {
        let code = errno
        return "\(what): \(String(cString: strerror(code)).lowercased())"
    }
}


@inline(__always)
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, buffer, count)
}

@inline(__always)
private func closeFD(_ fd: Int32) -> Int32 {
    close(fd)
}
