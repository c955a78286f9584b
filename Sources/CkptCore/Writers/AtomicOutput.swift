#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// Replaces a file all at once: readers see either the old file or the complete new one, never a partial write.
///
/// The new content is written to `.<basename>.ckpt-tmp-<pid>-<random>` in the same folder (so the final `rename` stays
/// on one file system), fsynced, renamed over the final path, and the folder is fsynced so the rename survives a crash.
public struct AtomicOutput {
    /// The prefix of temporary files for `finalPath`: `.<basename>.ckpt-tmp-`.
    public static func tempPrefix(for finalPath: String) -> String {
        "." + split(finalPath).base + ".ckpt-tmp-"
    }

    /// Where a command that writes what it read from `input` puts it when asked for `output`: `output` itself, or
    /// `output/<input's file name>` when `output` is an existing folder (as `cp` does). Checked before anything is
    /// written (see ``checkTarget(_:)``).
    /// - Throws: ``ZipError/io(_:)`` with one line saying what is wrong with the output.
    public static func destination(for output: String, input: String) throws(ZipError) -> String {
        var info = stat()
        var target = output
        if stat(output, &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
            guard stat(input, &info) != 0 || info.st_mode & S_IFMT != S_IFDIR else {
                throw ZipError.io("a folder, and so is the input: name the output file")
            }
            let name = split(input).base
            guard !name.isEmpty, name != ".", name != ".." else {
                throw ZipError.io("a folder: name the output file")
            }
            target = join(output, name)
        }
        try checkTarget(target)
        return target
    }

    /// Refuses an output path that cannot be replaced by a file: `-`, an existing folder, FIFO, device or socket
    /// (renaming over `/dev/null` would replace the device), a path ending in `/`, a folder that does not exist.
    /// - Throws: ``ZipError/io(_:)``.
    public static func checkTarget(_ finalPath: String) throws(ZipError) {
        if finalPath == "-" {
            throw ZipError.io("writing to standard output is not supported: name an output file (./- names a file called '-')")
        }
        var info = stat()
        if stat(finalPath, &info) == 0 {
            switch info.st_mode & S_IFMT {
            case S_IFREG: return
            case S_IFDIR: throw ZipError.io("a folder: name the output file")
            default: throw ZipError.io("\(InputPath.kind(mode: info.st_mode)), not a file ckpt can replace")
            }
        }
        if errno == ELOOP { throw ZipError.io("a symbolic link loop") }
        if finalPath.hasSuffix("/") { throw ZipError.io("no such folder: name an existing folder or an output file") }
        let folder = split(finalPath).folder
        guard stat(folder, &info) == 0 else {
            throw ZipError.io("cannot write it: folder '\(folder)' does not exist")
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw ZipError.io("cannot write it: '\(folder)' is not a folder")
        }
        if access(folder, W_OK | X_OK) != 0 {
            throw ZipError.io(ZipFileHandle.systemMessage("cannot write in folder '\(folder)'"))
        }
    }

    /// Runs `body` with the path of a fresh temporary file next to `finalPath`, then atomically moves it into place.
    ///
    /// `body` writes the complete content to the path it is given (it may truncate or recreate the file).
    /// If `body` throws, or any step fails, the temporary file is removed and `finalPath` is left untouched.
    /// An existing `finalPath` keeps its permission bits; a new one gets 0644 minus the umask.
    /// - Throws: what `body` throws, or ``ZipError/io(_:)``.
    public static func write(to finalPath: String, _ body: (String) throws -> Void) throws {
        let (folder, base) = split(finalPath)
        guard !base.isEmpty, base != ".", base != ".." else {
            throw ZipError.io("cannot write '\(finalPath)': not a file path")
        }
        try checkTarget(finalPath)
        var existing = stat()
        let existingMode: mode_t? = stat(finalPath, &existing) == 0 ? existing.st_mode & 0o7777 : nil

        var tempPath = ""
        var fd: Int32 = -1
        for _ in 0..<16 {
            let random = String(UInt64.random(in: 0...UInt64(UInt32.max)), radix: 16)
            tempPath = join(folder, tempPrefix(for: finalPath) + "\(getpid())-\(random)")
            fd = ZipFileHandle.retryingEINTR { open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644) }
            if fd >= 0 || errno != EEXIST { break }
        }
        if fd < 0 { throw ZipError.io(ZipFileHandle.systemMessage("cannot create a temporary file in '\(folder)'")) }
        if let existingMode { _ = fchmod(fd, existingMode) }
        _ = close(fd)

        do {
            try body(tempPath)
            try syncFile(tempPath)
            if rename(tempPath, finalPath) != 0 {
                throw ZipError.io(ZipFileHandle.systemMessage("cannot rename '\(tempPath)' to '\(finalPath)'"))
            }
        } catch {
            _ = unlink(tempPath)
            throw error
        }
        try syncFolder(folder)
    }

    /// Where a command writes a folder asked for as `output` (`--max-shard-size`): `output` without trailing `/`. It
    /// must not exist, or be an empty folder (replaced whole by the rename), and its parent must be a folder that can
    /// be written. A name with a file extension ckpt reads (`.safetensors`, `.pt`, `.json`, ...) is refused: a folder
    /// under a file's name is a mistake waiting to happen.
    /// - Throws: ``ZipError/io(_:)`` with one line saying what is wrong with the output.
    public static func folderDestination(for output: String) throws(ZipError) -> String {
        if output == "-" { try checkTarget(output) }
        var path = output
        while path.count > 1, path.hasSuffix("/") { path.removeLast() }
        let ext = (split(path).base as NSString).pathExtension.lowercased()
        if ["safetensors", "pt", "pth", "bin", "ckpt", "json", "onnx", "tar"].contains(ext) {
            throw ZipError.io("--max-shard-size writes a folder of shards: name a folder, not a .\(ext) file")
        }
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw ZipError.io("exists and is not a folder: --max-shard-size writes a folder")
            }
            guard (TrainerFolder.listing(path) ?? ["?"]).isEmpty else {
                throw ZipError.io("a folder that is not empty: ckpt writes a whole new folder (name a new or empty one)")
            }
        }
        try checkTarget(path + ".ckpt-probe")  // its folder: exists, is a folder, can be written
        return path
    }

    /// Runs `body` with a fresh temporary folder beside `finalPath`, then renames it to `finalPath`: the folder
    /// appears whole or not at all. `finalPath` must not exist, or be an empty folder (the rename replaces it);
    /// if `body` throws or any step fails, the temporary folder is removed and `finalPath` is left as it was.
    /// Temporary folders of dead runs beside it are removed first.
    /// - Throws: what `body` throws, or ``ZipError/io(_:)``.
    public static func writeFolder(to finalPath: String, _ body: (String) throws -> Void) throws {
        let (parent, name) = split(finalPath)
        FolderFiles.removeStaleTempFolders(in: parent, prefix: tempPrefix(for: name))
        var tmp = ""
        for _ in 0..<16 {
            let random = String(UInt64.random(in: 0...UInt64(UInt32.max)), radix: 16)
            tmp = join(parent, tempPrefix(for: name) + "\(getpid())-\(random)")
            if mkdir(tmp, 0o755) == 0 { break }
            if errno != EEXIST { throw ZipError.io(ZipFileHandle.systemMessage("cannot create a temporary folder in '\(parent)'")) }
        }
        do {
            try body(tmp)
            try FolderFiles.sync(tmp, directory: true)
            var existing = stat()
            if lstat(finalPath, &existing) == 0,
               existing.st_mode & S_IFMT != S_IFDIR || !(TrainerFolder.listing(finalPath) ?? ["?"]).isEmpty
            {
                throw ZipError.io("'\(finalPath)' appeared while it was written; left as it is")
            }
            if rename(tmp, finalPath) != 0 {
                throw ZipError.io(ZipFileHandle.systemMessage("cannot rename '\(tmp)' to '\(finalPath)'"))
            }
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
        try FolderFiles.sync(parent, directory: true)
    }

    /// Deletes `.<basename>.ckpt-tmp-<pid>-*` files next to `finalPath` whose process is no longer running
    /// (left behind by a crash or a kill). Files of live processes and unrelated files are kept.
    ///
    /// - Returns: the paths removed.
    @discardableResult
    public static func removeStaleTemps(for finalPath: String) throws -> [String] {
        let (folder, _) = split(finalPath)
        let prefix = tempPrefix(for: finalPath)
        guard let dir = opendir(folder) else {
            throw ZipError.io(ZipFileHandle.systemMessage("cannot list '\(folder)'"))
        }
        defer { closedir(dir) }
        var removed: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard name.hasPrefix(prefix) else { continue }
            let rest = name.dropFirst(prefix.count)
            guard let dash = rest.firstIndex(of: "-"), let pid = Int32(rest[..<dash]), pid > 0 else { continue }
            guard !isAlive(pid) else { continue }
            let path = join(folder, name)
            if unlink(path) == 0 { removed.append(path) }
        }
        return removed.sorted()
    }

    /// Whether a process with this id exists (a process owned by another user counts as alive).
    static func isAlive(_ pid: Int32) -> Bool {
        if pid == getpid() { return true }
        return kill(pid, 0) == 0 || errno != ESRCH
    }

    private static func syncFile(_ path: String) throws {
        let fd = ZipFileHandle.retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
        if fd < 0 { throw ZipError.io(ZipFileHandle.systemMessage("cannot reopen '\(path)' to fsync it")) }
        defer { _ = close(fd) }
        if ZipFileHandle.retryingEINTR({ fsync(fd) }) != 0 {
            throw ZipError.io(ZipFileHandle.systemMessage("cannot fsync '\(path)'"))
        }
    }

    private static func syncFolder(_ folder: String) throws {
        let fd = ZipFileHandle.retryingEINTR { open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        if fd < 0 { throw ZipError.io(ZipFileHandle.systemMessage("cannot open folder '\(folder)' to fsync it")) }
        defer { _ = close(fd) }
        if ZipFileHandle.retryingEINTR({ fsync(fd) }) != 0 {
            throw ZipError.io(ZipFileHandle.systemMessage("cannot fsync folder '\(folder)'"))
        }
    }

    /// Splits a path into its folder ("." when there is none) and its last component.
    static func split(_ path: String) -> (folder: String, base: String) {
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return (".", String(trimmed)) }
        let folder = trimmed[..<slash]
        return (folder.isEmpty ? "/" : String(folder), String(trimmed[trimmed.index(after: slash)...]))
    }

    private static func join(_ folder: String, _ name: String) -> String {
        folder.hasSuffix("/") ? folder + name : folder + "/" + name
    }
}
