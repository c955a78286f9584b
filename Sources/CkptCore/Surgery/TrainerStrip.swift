#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// What `strip` writes from a Hugging Face Trainer checkpoint folder (see ``TrainerFolder``): the weights alone.
public enum TrainerStripOutput: String, Sendable {
    /// A torch zip holding the state dict (loads with `torch.load(weights_only=True)`).
    case torch
    /// One `.safetensors` file: the tensors and `{"format": "pt"}` metadata `save_pretrained` writes.
    case safetensors
    /// A folder holding what `save_pretrained` writes: `config.json`, `generation_config.json`, the weights.
    case folder
}

/// A planned strip of a Trainer folder: where it goes, the weights as a torch state dict (``SurgeryPlan``, whose report
/// the summary prints), and the folder's files copied or left out.
public struct TrainerStripPlan {
    public var kind: TrainerStripOutput
    /// The final path (a folder output named by an existing folder is `that folder/<input folder's name>`).
    public var output: String
    /// The weights as `planStrip` makes them; its report also lists every file of the folder and what became of it.
    public var strip: SurgeryPlan
    /// Whether an option changes the tensors (`--half`, `--drop`, `--rename`, `--rename-regex`): a safetensors or folder
    /// output is then written from the stripped state dict instead of copying the weights files.
    public var changesTensors: Bool
    /// The files copied byte for byte into a folder output (besides unchanged weights files).
    public var copied: [TrainerFolder.File]
    /// `--max-shard-size`: a folder output's weights written as safetensors shards of at most this many bytes.
    public var maxShardSize: Int64? = nil
    /// What the sharded weights were written as (set by ``Checkpoint/write(_:progress:)``).
    public var shards: ConvertReport? = nil
    public var report: SurgeryReport { strip.report }
}

extension Checkpoint {
    /// Where `strip` of a Trainer folder writes for `output`, and in which form: a folder when `output` ends with `/`,
    /// is an existing folder (then `output/<input folder's name>`, as `cp -r` does) or has no extension; else
    /// `.safetensors`, or a torch file for any other extension (`.json` and `.onnx` are refused). A folder output must
    /// not exist yet; no output may be inside the input folder (which is never modified).
    /// - Throws: a one-line error about the output.
    public static func trainerStripTarget(_ output: String, input: String) throws -> (kind: TrainerStripOutput, path: String) {
        if output == "-" { try AtomicOutput.checkTarget(output) }  // standard output: refused as for any output
        var info = stat()
        var kind: TrainerStripOutput
        var path = output
        if stat(output, &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
            let name = AtomicOutput.split(input).base
            guard !name.isEmpty, name != ".", name != ".." else {
                throw CheckpointError.invalidOperation("a folder: name the output folder or file")
            }
            path = (output.hasSuffix("/") ? output : output + "/") + name
            kind = .folder
        } else if output.hasSuffix("/") || (output as NSString).pathExtension.isEmpty {
            kind = .folder
        } else {
            kind = try OutputFormat(path: output) == .safetensors ? .safetensors : .torch
        }
        if kind == .folder {
            while path.count > 1, path.hasSuffix("/") { path.removeLast() }
            if let a = realPath(path), a == realPath(input) {
                throw CheckpointError.invalidOperation("the input folder, which strip never modifies: name a new folder")
            }
            if lstat(path, &info) == 0 {
                throw CheckpointError.invalidOperation("'\(path)' exists: strip writes a new folder (remove it, or name another)")
            }
        }
        // The folder the output goes in, checked as for a file (exists, is a folder, can be written).
        try AtomicOutput.checkTarget(kind == .folder ? path + ".ckpt-probe" : path)
        let inputReal = realPath(input)
        let parentReal = realPath(AtomicOutput.split(path).folder)
        if let inputReal, let parentReal, parentReal == inputReal || parentReal.hasPrefix(inputReal + "/") {
            throw CheckpointError.invalidOperation("inside the input folder, which strip never modifies: name an output outside it")
        }
        return (kind, path)
    }

    private static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    /// Plans `strip` of a Trainer folder into `target` (``trainerStripTarget(_:input:)``). Options that change tensors
    /// (`--half`, `--drop`, `--rename`, `--rename-regex`, `--state-dict`, which changes nothing here) apply to the
    /// weights as `strip` applies them to a state dict; the others are refused with one line: `--use-ema` (the Trainer
    /// saves no EMA), `--record` (the weights are one state dict, without records), `--keep-training-state`,
    /// `--drop-record`, `--keep-record` (the training state is the folder's files, all left out).
    public func planTrainerStrip(_ options: StripOptions, target: (kind: TrainerStripOutput, path: String),
                                 maxShardSize: Int64? = nil)
        throws(CheckpointError) -> TrainerStripPlan
    {
        if maxShardSize != nil, target.kind != .folder {
            throw .invalidOperation("--max-shard-size writes a folder of shards: name a folder output, not a "
                + "\(target.kind == .torch ? "torch" : ".safetensors") file; nothing written")
        }
        guard let folder = trainerFolder else {
            throw .invalidOperation("not a Hugging Face Trainer checkpoint folder")
        }
        let refused: [(Bool, String)] = [
            (options.useEMA, "--use-ema: a Trainer checkpoint folder holds no EMA (transformers' Trainer saves none)"),
            (options.record != nil, "--record: a Trainer checkpoint folder's weights are one state dict, without records"),
            (!options.dropRecords.isEmpty, "--drop-record: a Trainer folder's weights have no records; its training "
                + "state files are all left out"),
            (!options.keepRecords.isEmpty, "--keep-record: a Trainer folder's weights have no records; its training "
                + "state files are all left out"),
        ]
        if let (_, why) = refused.first(where: { $0.0 }) { throw .invalidOperation(why + "; nothing written") }
        var strip = try planStrip(options)
        let changesTensors = options.half || !options.drop.isEmpty || !options.rename.isEmpty || !options.renameRegex.isEmpty
        var changes: [(record: String, before: String, after: String)] = []
        var copied: [TrainerFolder.File] = []
        for f in folder.trainingState { changes.append((f.name, Figures.bytes(f.bytes), "left out (training state)")) }
        switch target.kind {
        case .folder:
            for f in folder.config { copied.append(f) }
            // The processing class's files (`Trainer._save`: `processing_class.save_pretrained`), a README: copied;
            // subfolders other than training state are not.
            for f in folder.other {
                if f.name.hasSuffix("/") {
                    changes.append((f.name, Figures.bytes(f.bytes), "left out (a folder save_pretrained does not write)"))
                } else {
                    copied.append(f)
                }
            }
            for f in copied { changes.append((f.name, Figures.bytes(f.bytes), "copied")) }
        case .torch, .safetensors:
            for f in folder.config + folder.other {
                changes.append((f.name, Figures.bytes(f.bytes), "left out (a \(target.kind == .torch ? ".pt" : ".safetensors") "
                    + "file holds the weights alone; name a folder output to keep it)"))
            }
        }
        strip.report.recordChanges = changes + strip.report.recordChanges
        return TrainerStripPlan(kind: target.kind, output: target.path, strip: strip, changesTensors: changesTensors,
                                copied: copied, maxShardSize: maxShardSize)
    }

    /// Writes a Trainer strip plan. A torch output is the stripped state dict. A safetensors output is the weights
    /// file copied when it is the one `model.safetensors` and no option changes tensors, else the state dict written as
    /// safetensors (``planSafetensors(record:output:)``: shards merged, `format: pt`); with options that change tensors
    /// the stripped state dict goes through a temporary torch file beside the output first. A folder output is built in
    /// a temporary folder beside it (config and other files copied byte for byte; the weights files copied as they are,
    /// or `model.safetensors` written as above when an option changes tensors), then renamed into place.
    /// - Returns: the bytes written (a folder's: the total of its files).
    ///
    /// With ``TrainerStripPlan/maxShardSize`` the folder's weights are written as shards instead (from the weights
    /// as they are, or from the stripped state dict when an option changes tensors), and `plan.shards` says how.
    @discardableResult
    public func write(_ plan: inout TrainerStripPlan, progress: ((Int64) -> Void)? = nil) throws -> Int64 {
        guard let folder = trainerFolder else { throw CheckpointError.invalidOperation("not a Trainer checkpoint folder") }
        let base = folder.folder.hasSuffix("/") ? folder.folder : folder.folder + "/"
        switch plan.kind {
        case .torch:
            try Checkpoint.write(.torch(plan.strip), sources: [self], to: plan.output, progress: progress)
            return FolderFiles.fileBytes(plan.output)
        case .safetensors:
            try writeSafetensors(plan, to: plan.output, folder: folder)
            return FolderFiles.fileBytes(plan.output)
        case .folder:
            var shards: ConvertReport? = nil
            let output = plan.output
            try AtomicOutput.writeFolder(to: plan.output) { tmp in
                for f in plan.copied { try FolderFiles.copyFile(base + f.name, to: tmp + "/" + f.name) }
                if let m = plan.maxShardSize {
                    let write = { (weights: Checkpoint) throws in
                        let p = try weights.planShardedSafetensors(output: output, maxShardSize: m)
                        try Checkpoint.prepare(.sharded(p), sources: [weights])
                        try ShardedSafetensorsWriter.writeFiles(p, source: weights, into: tmp, chunkSize: 4 << 20,
                                                                progress: nil)
                        shards = p.report
                    }
                    if plan.changesTensors { try staged(plan.strip, beside: tmp + "/model", write) } else { try write(self) }
                } else if plan.changesTensors {
                    try writeSafetensors(plan, to: tmp + "/model.safetensors", folder: folder)
                } else {
                    for f in folder.weights { try FolderFiles.copyFile(base + f.name, to: tmp + "/" + f.name) }
                }
            }
            plan.shards = shards
            return TrainerFolder.folderBytes(plan.output)
        }
    }

    /// The weights as one safetensors file at `path` (written atomically).
    private func writeSafetensors(_ plan: TrainerStripPlan, to path: String, folder: TrainerFolder) throws {
        let base = folder.folder.hasSuffix("/") ? folder.folder : folder.folder + "/"
        if !plan.changesTensors {
            if folder.weights.count == 1, folder.weights[0].name.hasSuffix(".safetensors") {
                try AtomicOutput.write(to: path) { tmp in try FolderFiles.copyFile(base + folder.weights[0].name, to: tmp) }
            } else {
                try Checkpoint.write(.safetensors(try planSafetensors(output: path)), sources: [self], to: path)
            }
            return
        }
        try staged(plan.strip, beside: path) { stripped in
            try Checkpoint.write(.safetensors(try stripped.planSafetensors(output: path)), sources: [stripped], to: path)
        }
    }

    /// Runs `body` with a strip's output as a checkpoint: the plan written as a torch file beside `path` (a temporary
    /// file, removed afterwards), and opened. What the stripped state dict becomes in another format (safetensors,
    /// shards) is then planned from it as from any checkpoint.
    func staged<T>(_ plan: SurgeryPlan, beside path: String, _ body: (Checkpoint) throws -> T) throws -> T {
        let (parent, name) = AtomicOutput.split(path)
        let staged = parent + "/" + AtomicOutput.tempPrefix(for: name) + "\(getpid())-staged.pt"
        defer { _ = unlink(staged) }
        try Checkpoint.write(.torch(plan), sources: [self], to: staged)
        return try body(try Checkpoint(path: staged))
    }

    /// Writes a strip plan's weights record (the record ``SurgeryReport/weightsRecord`` names in the output, else its
    /// default record) as a folder of safetensors shards: `strip --max-shard-size` of a checkpoint file. The stripped
    /// file is staged beside the folder (``staged(_:beside:_:)``); the folder appears whole or not at all.
    public func writeShardedStrip(_ plan: SurgeryPlan, to folder: String, maxShardSize: Int64,
                                  progress: ((Int64) -> Void)? = nil) throws -> ConvertReport
    {
        try staged(plan, beside: folder) { stripped in
            let record = plan.report.weightsRecord.flatMap { r in (try? stripped.record(named: r)).map { _ in r } }
            let p = try stripped.planShardedSafetensors(record: record, output: folder, maxShardSize: maxShardSize)
            try Checkpoint.write(.sharded(p), sources: [stripped], to: folder, progress: progress)
            return p.report
        }
    }
}

/// File copies and syncs for folder outputs.
enum FolderFiles {
    /// Deletes the temporary folders `<prefix><pid>-*` in `parent` whose process is no longer running (left by a
    /// strip that was killed), as ``AtomicOutput/removeStaleTemps(for:)`` does for files.
    static func removeStaleTempFolders(in parent: String, prefix: String) {
        for entry in TrainerFolder.listing(parent) ?? [] where entry.hasPrefix(prefix) && entry.hasSuffix("/") {
            let rest = entry.dropFirst(prefix.count)
            guard let dash = rest.firstIndex(of: "-"), let pid = Int32(rest[..<dash]), pid > 0,
                  !AtomicOutput.isAlive(pid) else { continue }
            try? FileManager.default.removeItem(atPath: parent + "/" + entry.dropLast())
        }
    }

    static func fileBytes(_ path: String) -> Int64 {
        var info = stat()
        return stat(path, &info) == 0 ? Int64(info.st_size) : 0
    }

    /// Copies a regular file byte for byte (bounded chunks), then fsyncs the copy. The copy gets 0644 minus the umask.
    static func copyFile(_ from: String, to: String) throws {
        let input = open(from, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw CheckpointError.io(ZipFileHandle.systemMessage("cannot open '\(from)'")) }
        defer { _ = close(input) }
        let output = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard output >= 0 else { throw ZipError.io(ZipFileHandle.systemMessage("cannot create '\(to)'")) }
        defer { _ = close(output) }
        let size = 1 << 20
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        defer { buffer.deallocate() }
        while true {
            let n = ZipFileHandle.retryingEINTR { Int32(truncatingIfNeeded: read(input, buffer, size)) }
            if n < 0 { throw CheckpointError.io(ZipFileHandle.systemMessage("cannot read '\(from)'")) }
            if n == 0 { break }
            var done = 0
            while done < Int(n) {
                let w = ZipFileHandle.retryingEINTR { Int32(truncatingIfNeeded: write(output, buffer + done, Int(n) - done)) }
                if w <= 0 { throw ZipError.io(ZipFileHandle.systemMessage("cannot write '\(to)'")) }
                done += Int(w)
            }
        }
        if ZipFileHandle.retryingEINTR({ fsync(output) }) != 0 {
            throw ZipError.io(ZipFileHandle.systemMessage("cannot fsync '\(to)'"))
        }
    }

    static func sync(_ path: String, directory: Bool) throws {
        let fd = ZipFileHandle.retryingEINTR { open(path, O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0)) }
        if fd < 0 { throw ZipError.io(ZipFileHandle.systemMessage("cannot open '\(path)' to fsync it")) }
        defer { _ = close(fd) }
        if ZipFileHandle.retryingEINTR({ fsync(fd) }) != 0 {
            throw ZipError.io(ZipFileHandle.systemMessage("cannot fsync '\(path)'"))
        }
    }
}


