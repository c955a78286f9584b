import Foundation

/// Checkpoints that outgrew one machine: a folder of per-rank files that, read together, are one state dict. Each
/// format's reader opens the folder as one ``OpenedContainer``: the graph `torch.save` would pickle for the dict the
/// format's own consolidation tool produces, and a ``GatheredSource`` serving each logical tensor's bytes from its
/// shards. Then every command reads it as it reads a file.
enum DistributedFolder {
    /// Opens `path` when it is a folder one of the distributed readers recognises; nil for anything else.
    static func open(path: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer? {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return nil }
        if let c = try DCPReader.open(folder: path, limits: limits) { return c }
        if let c = try DeepSpeedReader.open(folder: path, limits: limits) { return c }
        return nil
    }

    /// For `scan` of a folder that cannot be opened: the pickles a reader can still find and scan raw (a DCP
    /// folder's `.metadata` files), with the format and how torch's loader reads them; nil when no reader claims it.
    static func rawScans(path: String, limits: PickleLimits) -> (format: String, scans: [PickleScan], torchLoads: String?)? {
        if let files = DCPReader.metadataFiles(folder: path) {
            let scans = files.map { name in
                PickleScanner.scan((try? DCPReader.readBytes(path + "/" + name)) ?? [], label: name, limits: limits)
            }
            return (DCPReader.formatName, scans, DCPReader.torchLoads)
        }
        if let tagDir = DeepSpeedReader.tagFolder(path) {
            // Every *_states.pt file's pickles, read raw as torch.load would read the file.
            let files = DeepSpeedReader.globbed(tagDir, suffix: ".pt").sorted(by: DeepSpeedReader.naturalLess)
            let scans = files.flatMap { name -> [PickleScan] in
                let file = tagDir + "/" + name
                let reading = ContainerAudit(file: file).reading
                guard let raw = try? ContainerPickles.rawScans(path: file, reading: reading, limits: limits) else {
                    return [PickleScanner.scan([], label: name, limits: limits)]  // reported as unreadable
                }
                return raw.scans.map { var s = $0; s.label = "\(name): \(s.label)"; return s }
            }
            return ("DeepSpeed ZeRO", scans, DeepSpeedReader.torchLoads)
        }
        return nil
    }

    /// Whether a folder looks like one of the distributed formats (so that its reader's error is the one reported).
    static func looksDistributed(path: String) -> Bool {
        DCPReader.metadataFiles(folder: path) != nil || DCPHuggingFace.shards(folder: path) != nil
            || DeepSpeedReader.tagFolder(path) != nil
    }
}

/// What `info` shows of a distributed checkpoint besides its tensors.
public struct DistributedLayout: Sendable {
    /// The format, as `info` names it (`torch.distributed.checkpoint`, `DeepSpeed ZeRO stage 3`, ...).
    public var format: String
    /// How many ranks wrote it.
    public var worldSize: Int
    /// The data files read (names relative to the folder).
    public var files: [String]
    /// For each logical tensor (by its flattened name, in order), the number of chunks or partitions it is read from.
    public var chunks: [(name: String, count: Int)]
    /// Bytes of the model's tensors and of the optimizer's state (as stored).
    public var modelBytes: Int64
    public var optimizerBytes: Int64
    /// The items that are not tensors, by flattened name, with their values as text.
    public var otherItems: [(name: String, value: String)]
    /// Notes on what was not read or is not understood.
    public var notes: [String] = []
    /// How the format's own loader unpickles the folder's pickles, for `scan` (which torch.load does not read).
    public var torchLoads: String? = nil
}
