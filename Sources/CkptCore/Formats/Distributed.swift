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
}
