#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// What a path a shell passed names, told with `stat` before anything is opened (opening a FIFO for reading
/// blocks until a writer comes): a regular file is read; a Hugging Face model folder is read through the weights
/// file `from_pretrained` would load; anything else is refused with one line saying what it is.
enum InputPath {
    /// The weights files of a Hugging Face model folder, in the order `from_pretrained` looks them up
    /// (transformers `modeling_utils.py`, `_get_resolved_checkpoint_files`, for a local folder without
    /// `subfolder`, `variant` or `from_tf`/`from_flax`): `use_safetensors` defaults to None, so both safetensors
    /// names come first and the `.bin` names are tried after them (`not use_safetensors`). Each must be a
    /// regular file (`os.path.isfile`, which follows symbolic links).
    static let huggingFaceWeights = [
        "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
    ]

    /// The regular file to read for `path`: `path` itself, or the weights file of a Hugging Face model folder.
    /// - Throws: ``CheckpointError/wrongKind(_:)`` for `-`, a missing path, a symbolic link loop, a folder without
    ///   weights, a FIFO, a device, a socket or a file that cannot be opened for reading.
    static func resolve(_ path: String) throws(CheckpointError) -> String {
        if path == "-" {
            throw .wrongKind("reading a checkpoint from standard input is not supported: save it to a file first"
                             + " (./- names a file called '-')")
        }
        var info = stat()
        guard stat(path, &info) == 0 else { throw .wrongKind(missing(path, errno: errno)) }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            try checkReadable(path)
            return path
        case S_IFDIR:
            return try weightsFile(inFolder: path)
        default:
            throw .wrongKind(notAFile(mode: info.st_mode))
        }
    }

    /// Why `stat` failed, in words: a dangling link, a loop, a path through something that is not a folder.
    private static func missing(_ path: String, errno code: Int32) -> String {
        switch code {
        case ENOENT:
            var link = stat()
            if lstat(path, &link) == 0, link.st_mode & S_IFMT == S_IFLNK {
                return "a symbolic link to '\(linkTarget(path))', which does not exist"
            }
            return "no such file"
        case ELOOP: return "a symbolic link loop (too many levels of symbolic links)"
        case ENOTDIR: return "no such file (a part of the path is not a folder)"
        case EACCES: return "permission denied (a folder on the path cannot be searched)"
        case ENAMETOOLONG: return "the path is too long"
        default: return String(cString: strerror(code)).lowercased()
        }
    }

    private static func linkTarget(_ path: String) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n >= 0 else { return "?" }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// What a file of this mode is, in a few words ("a FIFO (named pipe)", "a character device").
    static func kind(mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: "a FIFO (named pipe)"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        case S_IFDIR: "a folder"
        default: "a special file"
        }
    }

    /// Why a file that is neither regular nor a folder is refused.
    static func notAFile(mode: mode_t) -> String {
        "\(kind(mode: mode)), not a checkpoint file: ckpt reads regular files it can seek (save the stream to a file first)"
    }

    /// Opens and closes `path` to tell a permission problem at once, in one line.
    private static func checkReadable(_ path: String) throws(CheckpointError) {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        if fd >= 0 {
            _ = close(fd)
            return
        }
        let code = errno
        if code == EACCES || code == EPERM { throw .wrongKind("permission denied: cannot open it for reading") }
        throw .wrongKind("cannot open it for reading: \(String(cString: strerror(code)).lowercased())")
    }

    /// The weights file of a Hugging Face model folder, or a refusal that says what the folder holds.
    private static func weightsFile(inFolder folder: String) throws(CheckpointError) -> String {
        let base = folder.hasSuffix("/") ? folder : folder + "/"
        for name in huggingFaceWeights {
            var info = stat()
            if stat(base + name, &info) == 0, info.st_mode & S_IFMT == S_IFREG {
                try checkReadable(base + name)
                return base + name
            }
        }
        guard let names = TrainerFolder.listing(folder) else {
            let code = errno
            throw .wrongKind(code == EACCES ? "a folder that cannot be listed (permission denied)"
                                            : "a folder that cannot be listed: \(String(cString: strerror(code)).lowercased())")
        }
        guard !names.isEmpty else { throw .wrongKind("an empty folder, not a checkpoint") }
        let shown = names.prefix(6).joined(separator: ", ") + (names.count > 6 ? ", ..." : "")
        let holds = "holds \(names.count) \(names.count == 1 ? "entry" : "entries"): \(shown)"
        if names.contains("config.json") {
            throw .wrongKind("a model folder without weights: no "
                             + huggingFaceWeights.joined(separator: ", ") + " (it \(holds))")
        }
        throw .wrongKind("a folder, not a checkpoint (it \(holds)); name the checkpoint file in it")
    }

    /// What a regular file whose first bytes match no format ckpt reads is, in words: an HTML page, a Git LFS
    /// pointer, JSON or other text, a bare pickle, a gzip, HDF5 or GGUF file; nil when nothing is recognised.
    static func describeForeign(head: [UInt8]) -> String? {
        var bytes = head[...]
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes = bytes.dropFirst(3) }  // a UTF-8 byte order mark
        let trimmed = bytes.drop { [0x20, 0x09, 0x0A, 0x0D].contains($0) }
        let lower = String(decoding: trimmed.prefix(64), as: UTF8.self).lowercased()
        if lower.hasPrefix("version https://git-lfs.github.com/spec/") {
            let text = String(decoding: bytes, as: UTF8.self)
            let size = text.split(separator: "\n").first { $0.hasPrefix("size ") }.flatMap { Int64($0.dropFirst(5)) }
            return "a Git LFS pointer\(size.map { " to a \(Figures.bytes($0)) file" } ?? ""): run git lfs pull"
        }
        if lower.hasPrefix("<!doctype html") || lower.hasPrefix("<html") || lower.hasPrefix("<head")
            || (lower.hasPrefix("<") && String(decoding: trimmed, as: UTF8.self).lowercased().contains("<html"))
        {
            return "an HTML page, not a checkpoint: a failed download?"
        }
        if head.starts(with: [0x1F, 0x8B]) { return "a gzip file, not a checkpoint: gunzip it first" }
        if head.starts(with: [0x89, 0x48, 0x44, 0x46]) { return "an HDF5 file (Keras?), not a torch checkpoint" }
        if head.starts(with: Array("GGUF".utf8)) { return "a GGUF file (llama.cpp), not a torch checkpoint" }
        if head.first == 0x80, head.count > 1, (2...5).contains(head[1]) {
            return "a pickle without torch's magic number, not a torch checkpoint (torch.load refuses it too)"
        }
        if let text = textPrefix(bytes) {
            return trimmed.first == UInt8(ascii: "{") || trimmed.first == UInt8(ascii: "[")
                ? "JSON text, not a checkpoint (it starts with \(text))"
                : "a text file, not a checkpoint (it starts with \(text))"
        }
        return nil
    }

    /// The first line of `bytes`, quoted and cut at 40 characters, when they are text (UTF-8 without control
    /// characters other than tab, line feed, carriage return and form feed; a character cut at the end is allowed).
    private static func textPrefix(_ bytes: ArraySlice<UInt8>) -> String? {
        let body = Array(bytes)
        guard !body.isEmpty, !body.contains(where: { $0 < 0x20 && ![0x09, 0x0A, 0x0C, 0x0D].contains($0) || $0 == 0x7F })
        else { return nil }
        // A multi-byte character may be cut by the end of the head.
        guard let text = (0...min(3, body.count - 1)).lazy.compactMap({ String(validating: body.dropLast($0), as: UTF8.self) }).first
        else { return nil }
        let line = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        let cut = line.count > 40 ? String(line.prefix(40)) + "..." : line
        return "'\(cut)'"
    }

    /// The first bytes of a regular file (up to `count`) and its size.
    static func head(_ path: String, count: Int = 512) throws(CheckpointError) -> (head: [UInt8], size: UInt64) {
        let file = try FileRange.open(path)
        let size = try FileRange.size(file)
        let n = Int(min(UInt64(count), size))
        return (try FileRange.readBytes(file, at: 0, count: n, what: "the start of the file"), size)
    }
}
