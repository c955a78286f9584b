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
        var opened = try DCPReader.open(folder: path, limits: limits)
        if opened == nil { opened = try DeepSpeedReader.open(folder: path, limits: limits) }
        guard var c = opened else { return nil }
        // Other torch files beside the data (Lightning's sharded folders hold `meta.pt`, which Lightning loads with
        // weights_only=False): not read, but named, and judged by `scan` with the rest.
        let used = Set(c.distributed?.files ?? [])
        let others = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().filter { name in
            let file = path + "/" + name
            guard !used.contains(name), !name.hasPrefix("."), DeepSpeedReader.isRegularFile(file),
                  let kind = try? ContainerKind.detect(path: file) else { return false }
            return [.zip, .legacy, .legacyTar].contains(kind)
        }
        if !others.isEmpty {
            let inner = c.scanPickles
            c.scanPickles = {
                inner() + others.flatMap { name -> [PickleScan] in
                    let file = path + "/" + name
                    guard let raw = try? ContainerPickles.rawScans(path: file, reading: ContainerAudit(file: file).reading,
                                                                   limits: limits)
                    else { return [PickleScanner.scan([], label: name, limits: limits)] }
                    return raw.scans.map { var s = $0; s.label = "\(name): \(s.label)"; return s }
                }
            }
            c.distributed?.notes.append("also in the folder, not read: " + others.joined(separator: ", ")
                                        + " (torch files: ckpt scan judges their pickles with the rest)")
        }
        return c
    }

    /// Refuses a file that is one part of a distributed folder, whose contents alone are not what they look like: a
    /// DCP `.distcp` data file or `.metadata` (the first chunk's zip would read as the whole), and a DeepSpeed ZeRO-3
    /// `zero_pp_rank_N_mp_rank_MM_model_states.pt` (its parameters are 0-element placeholders; the weights are in the
    /// optimizer partitions).
    static func refusePart(file: String) throws(CheckpointError) {
        let name = (file as NSString).lastPathComponent
        let dir = (file as NSString).deletingLastPathComponent
        let folder = dir.isEmpty ? "." : dir
        func isRanked(_ s: Substring) -> Bool { !s.isEmpty && s.allSatisfy { $0.isASCII && $0.isNumber } }
        let distcp = name.hasPrefix("__") && name.hasSuffix(".distcp")
            && name.dropFirst(2).dropLast(7).split(separator: "_", omittingEmptySubsequences: false).allSatisfy(isRanked)
        if distcp || name == ".metadata" || (name.hasPrefix("__") && name.hasSuffix(".metadata")),
           DCPReader.metadataFiles(folder: folder) != nil
        {
            throw .wrongKind("one file of a torch.distributed.checkpoint folder: pass the folder \(folder)")
        }
        if name.hasPrefix("zero_pp_rank_"), name.hasSuffix("_model_states.pt"), DeepSpeedReader.holdsStates(folder) {
            throw .wrongKind("one rank's model states of a DeepSpeed ZeRO-3 checkpoint: its parameters are empty "
                             + "placeholders (the weights are partitioned in the *_optim_states.pt files): pass the folder "
                             + folder)
        }
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
