import Foundation

/// Which container `torch.load(path, weights_only=False)` reads from a file, and which other readings the same
/// bytes allow. A file that two readers read differently is *ambiguous*: a scanner (or ckpt before this check)
/// may judge one reading while torch runs the other, so `ckpt scan` flags it (exit 1) and every rewriting command
/// refuses it unless `--allow-unsafe`.
///
/// torch's choice (torch/serialization.py, torch 2.13):
/// - `_is_zipfile`: a zip only when the file starts with the local-header magic `PK\x03\x04`; then
///   caffe2/serialize/inline_container.cc reads it through miniz (``ZipReader`` follows it: the last end record,
///   names looked up without regard to case, ``MinizLookup``; CRCs not checked);
/// - otherwise `_legacy_load` tries `tarfile.open` first (the torch 0.1.x tar format, ``LegacyTarReader``);
/// - otherwise the pickle stream from byte 0 (``LegacyReader``): its first pickle is unpickled before anything
///   is checked.
///
/// The other readings looked for: a zip archive anywhere else in the file (a reader that finds a zip by its end
/// record, as Python's `zipfile` does), a tar or a pickle stream at byte 0 beside the reading torch takes, and
/// inside a zip what ``ZipReader/ambiguities`` lists (duplicate names, names that differ only in case, more than
/// one end record, local headers that disagree with the central directory).
public struct ContainerAudit: Sendable {
    /// The container torch.load reads.
    public enum Reading: String, Sendable {
        case zip = "torch zip"
        case legacyTar = "torch tar"
        case pickleStream = "pickle stream"
        /// A sharded checkpoint's index: each shard is audited as a file of its own.
        case shards = "sharded index"
    }

    public let reading: Reading
    /// What torch.load reads, in a few words ("the pickle stream at byte 0").
    public let torchReads: String
    /// Each other reading of the bytes, in one line. Empty for a file that only one reading fits.
    public let ambiguities: [String]
    /// Whether torch.load hands the file to torch.jit.load (a zip with a `constants.pkl` record).
    public private(set) var isTorchScript = false

    public var isAmbiguous: Bool { !ambiguities.isEmpty }

    /// Audits a regular file (``InputPath/resolve(_:)`` has resolved the path). Never throws: what cannot be read
    /// contributes no reading.
    public init(file: String) { self.init(file: file, shards: true) }

    private init(file: String, shards: Bool) {
        let head = (try? InputPath.head(file))?.head ?? []
        var found: [String] = []
        if shards, (try? ContainerKind.detect(path: file)) == .shardIndex {
            reading = .shards
            torchReads = "each shard as a file of its own"
            let folder = (file as NSString).deletingLastPathComponent
            for name in Self.shardNames(index: file) {
                let audit = ContainerAudit(file: folder.isEmpty ? name : folder + "/" + name, shards: false)
                found += audit.ambiguities.map { "shard \(name): torch.load reads \(audit.torchReads); \($0)" }
            }
            ambiguities = found
            return
        }
        // A zip reader that looks for the end record (not at byte 0): lenient, so that it opens what torch's opens.
        let zip = try? ZipReader(path: file, lenient: true)
        defer { zip?.close() }
        let tar = LegacyTarReader.looksLikeTar(head: head)
        if head.starts(with: [0x50, 0x4B, 0x03, 0x04]) {
            reading = .zip
            if let zip {
                zip.auditLocalHeaders()
                found += zip.ambiguities
                isTorchScript = TorchScriptArchive.isTorchScript(zip)
                torchReads = isTorchScript
                    ? "the TorchScript archive that starts at byte 0" : "the zip archive that starts at byte 0"
            } else {
                torchReads = "the zip archive that starts at byte 0"
            }
            if tar {
                found.append("the file is also a tar archive (its first member is named '" + Self.memberName(head)
                             + "'): torch.load reads the zip, a tar reader the tar")
            }
        } else if tar {
            reading = .legacyTar
            torchReads = "the torch 0.1.x tar archive that starts at byte 0"
            if let zip {
                found.append("a zip archive follows the tar (its records start at byte \(zip.entries.map(\.headerOffset).min() ?? 0)):"
                             + " torch.load reads the tar, a zip reader the zip")
            }
            if Self.isPickle(head) {
                found.append("the tar's first member name ('" + Self.memberName(head) + "') is itself a pickle stream:"
                             + " torch.load reads the tar, a pickle reader the name")
            }
        } else {
            reading = .pickleStream
            let size = (try? InputPath.head(file))?.size ?? 0
            torchReads = !SafetensorsReader.looksLikeSafetensors(head: head, fileSize: size) ? "the pickle stream at byte 0"
                : file.hasSuffix(".safetensors") ? "the safetensors file (its name ends in .safetensors)"
                : "the pickle stream at byte 0 (a safetensors file not named .safetensors, which it cannot read)"
            if let zip {
                found.append("a zip archive follows other bytes (its records start at byte \(zip.entries.map(\.headerOffset).min() ?? 0)):"
                             + " torch.load unpickles from byte 0, a zip reader reads the archive")
            }
        }
        // torch.load (2.13) hands a path ending in ".safetensors" to safetensors.torch.load_file before it looks at
        // the bytes: a zip, tar or pickle stream so named is read by content elsewhere (ckpt included).
        if file.hasSuffix(".safetensors"), reading != .shards, !SafetensorsReader.looksLikeSafetensors(
            head: head, fileSize: (try? InputPath.head(file))?.size ?? 0), head.count >= 4,
           head.starts(with: [0x50, 0x4B, 0x03, 0x04]) || tar || Self.isPickle(head)
        {
            found.append("its name ends in .safetensors, so torch.load reads it with safetensors, while by its bytes it"
                         + " is a \(reading.rawValue) (read as such by ckpt and by readers that go by content)")
        }
        ambiguities = found
    }

    /// One line for a report: what torch reads and the other readings.
    public var verdictLine: String {
        "ambiguous container: torch.load reads \(torchReads); " + ambiguities.joined(separator: "; ")
    }

    /// The shard files a sharded checkpoint's index names (its `weight_map` values), sorted; none when the index
    /// cannot be read (opening the checkpoint says why).
    private static func shardNames(index: String) -> [String] {
        guard let file = try? FileRange.open(index) else { return [] }
        defer { try? file.close() }
        guard let size = try? FileRange.size(file), size <= ShardedCheckpoint.maxIndexBytes,
              let data = try? FileRange.readBytes(file, at: 0, count: Int(size), what: "the index"),
              let json = try? JSONParser.parse(data), case .object(let map)? = json["weight_map"]
        else { return [] }
        var names = Set<String>()
        for (_, v) in map {
            if case .string(let f) = v, !f.isEmpty, !f.hasPrefix("/"), !f.split(separator: "/").contains("..") { names.insert(f) }
        }
        return names.sorted()
    }

    /// Whether the first bytes decode as a complete pickle (the first of a legacy checkpoint's stream).
    private static func isPickle(_ head: [UInt8]) -> Bool {
        (try? PickleDecoder.decodePrefix(head, offset: 0)) != nil
    }

    /// The first tar member's name as bytes 0..<100 hold it (up to the first NUL), printable.
    private static func memberName(_ head: [UInt8]) -> String {
        let raw = head.prefix(100).prefix { $0 != 0 }
        let text = raw.map { $0 >= 0x20 && $0 < 0x7F ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined()
        return text.count > 60 ? String(text.prefix(60)) + "..." : text
    }
}

extension Checkpoint {
    /// Opens a checkpoint for a rewriting command (strip, convert, transfer): refuses, unless `allowUnsafe`, a file
    /// whose container torch could read differently (``ContainerAudit``) with
    /// ``CheckpointError/ambiguousContainer(torchReads:_:)``, and one whose pickles name dangerous globals with
    /// ``CheckpointError/dangerousGlobals(_:)`` — also when the file cannot be read as a checkpoint but its
    /// pickles can be scanned (a data.pkl with a wrong CRC still runs in torch.load). The CLI exits 1 for both.
    public static func openForRewriting(path: String, allowUnsafe: Bool, limits: PickleLimits = PickleLimits())
        throws(CheckpointError) -> Checkpoint
    {
        // A distributed checkpoint folder (DCP, DeepSpeed) has no one file torch.load reads: its pickles are judged
        // below, each as its own loader reads it (ScanBuilder).
        var audit: ContainerAudit? = nil
        if !allowUnsafe {
            do {
                let file = try InputPath.resolve(path)
                try DistributedFolder.refusePart(file: file)  // what it is, before how torch would read it
                audit = ContainerAudit(file: file)
            } catch {
                if !ScanBuilder.isFolder(path) { throw error }
            }
        }
        if let audit, audit.isAmbiguous { throw .ambiguousContainer(torchReads: audit.torchReads, audit.ambiguities) }
        let c: Checkpoint
        do {
            c = try Checkpoint(path: path, limits: limits)
        } catch {
            if !allowUnsafe, let report = try? ScanBuilder(path: path, limits: limits).build() {
                let bad = report.dangerous.map(\.name)
                if !bad.isEmpty { throw .dangerousGlobals(bad) }
            }
            throw error
        }
        try c.refuseDangerousGlobals(allowUnsafe: allowUnsafe)
        return c
    }

    /// The globals of this checkpoint's pickles that can run code when unpickled (empty for a clean file).
    /// Every rewriting command checks this before writing.
    public func dangerousGlobals() -> [GlobalReport] {
        ScanReport.merge(pickleScans).filter { $0.verdict.globalClass == .dangerous }
    }

    /// Throws ``CheckpointError/dangerousGlobals(_:)`` when the checkpoint names dangerous globals,
    /// unless `allowUnsafe`. Rewriting commands call it before planning.
    /// (TorchScript's list type tags, `torch.jit._pickle.build_intlist` and friends, are on the scan's allow-list.)
    public func refuseDangerousGlobals(allowUnsafe: Bool) throws(CheckpointError) {
        guard !allowUnsafe else { return }
        let bad = dangerousGlobals()
        if !bad.isEmpty { throw .dangerousGlobals(bad.map(\.name)) }
    }
}
