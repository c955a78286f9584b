import Foundation

/// The formats ckpt writes: `convert` either, `strip` and `transfer` torch.
public enum OutputFormat: String, Sendable {
    /// A torch zip checkpoint holding the state dict (loads with `torch.load(weights_only=True)`).
    case torch
    /// A `.safetensors` file.
    case safetensors
    /// A folder of safetensors shards and their index, as Hugging Face writes it (`--max-shard-size`).
    case shardedSafetensors = "sharded-safetensors"

    /// The format a path's extension asks for: `.safetensors`, else torch. ONNX and sharded indexes are read-only.
    public init(path: String) throws(CheckpointError) {
        switch (path as NSString).pathExtension.lowercased() {
        case "safetensors": self = .safetensors
        case "onnx": throw .invalidOperation("writing ONNX is not supported (convert to .pt or .safetensors)")
        case "json": throw .invalidOperation("writing sharded checkpoints is not supported (convert to one .pt or .safetensors)")
        default: self = .torch
        }
    }
}

extension OutputFormat {
    /// Refuses an output path whose extension names another format than the torch checkpoint `command` writes
    /// (`strip`, `transfer`): a torch zip under a `.safetensors` name is a file no safetensors loader opens.
    public static func requireTorch(path: String, command: String) throws(CheckpointError) {
        guard try OutputFormat(path: path) == .torch else {
            throw .invalidOperation("\(command) writes a torch checkpoint, not safetensors: name the output .pt "
                + "(ckpt convert writes safetensors)")
        }
    }
}

/// A planned output, in the format it was planned for: what ``Checkpoint/write(_:sources:to:chunkSize:progress:)``
/// hands to that format's writer.
public enum OutputPlan {
    /// A torch zip checkpoint (`strip`, `transfer`, `convert` to a torch file).
    case torch(SurgeryPlan)
    /// A `.safetensors` file (`convert`).
    case safetensors(SafetensorsPlan)
    /// A folder of safetensors shards (`--max-shard-size`).
    case sharded(ShardedSafetensorsPlan)

    /// The format this plan writes.
    public var format: OutputFormat {
        switch self {
        case .torch: .torch
        case .safetensors: .safetensors
        case .sharded: .shardedSafetensors
        }
    }

    /// What the output says it wrote.
    public var sourceBytes: Int64 {
        switch self {
        case .torch(let p): p.sourceBytes
        case .safetensors(let p): p.tensors.reduce(0) { $0 + ($1.tensor.byteCount ?? 0) }
        case .sharded(let p): p.sourceBytes
        }
    }
}

extension Checkpoint {
    /// Writes a plan at `path`, atomically (a temporary file in the same folder, fsynced, renamed over `path`), with
    /// the writer of the format `path`'s extension asks for (``OutputFormat/init(path:)``), which must be the
    /// format the plan was made for: a torch zip (``TorchZipWriter``, torch's own layout) or safetensors (the
    /// reference library's layout). Storage bytes stream from `sources` in bounded chunks: a torch plan's
    /// ``OutputStorage/source`` indexes them; a safetensors plan reads the one source it was planned from.
    ///
    /// Read faults are thrown as ``CheckpointError`` (with several sources, as a ``FileError`` naming the file);
    /// the rest are the output's.
    /// - Parameter progress: the bytes written so far, after each chunk.
    public static func write(_ plan: OutputPlan, sources: [Checkpoint], to path: String, chunkSize: Int = 4 << 20,
                             progress: ((Int64) -> Void)? = nil) throws
    {
        if case .sharded(let p) = plan {
            guard sources.count == 1 else {
                throw CheckpointError.invalidOperation("a sharded safetensors plan reads one checkpoint, not \(sources.count)")
            }
            try prepare(plan, sources: sources)
            return try ShardedSafetensorsWriter.write(p, source: sources[0], to: path, chunkSize: chunkSize, progress: progress)
        }
        let format = try OutputFormat(path: path)
        guard format == plan.format else {
            throw CheckpointError.invalidOperation("the plan is for a \(plan.format.rawValue) file, but \(path) names a "
                + "\(format.rawValue) file")
        }
        try prepare(plan, sources: sources)
        switch plan {
        case .torch(let p):
            try TorchCheckpointWriter.write(p, sources: sources, to: path, chunkSize: chunkSize, progress: progress)
        case .safetensors(let p):
            guard sources.count == 1 else {
                throw CheckpointError.invalidOperation("a safetensors plan reads one checkpoint, not \(sources.count)")
            }
            try SafetensorsWriter.write(p, source: sources[0], to: path, chunkSize: chunkSize, progress: progress)
        case .sharded: break
        }
    }
}

extension Checkpoint {
    /// `convert` and `consolidate`: the record's state dict planned as `format` asks (`.safetensors`, a torch file, or
    /// with `maxShardSize` a folder of safetensors shards), with `half` (floating tensors as float16) and
    /// `weightsOnly` (`consolidate`: the weights alone, never optimizer state, no records carried).
    public func planWeights(record: String?, output: String, format: OutputFormat, half: Bool = false,
                            maxShardSize: Int64? = nil, weightsOnly: Bool = false, dropUnconvertible: Bool = false)
        throws(CheckpointError) -> (plan: OutputPlan, report: ConvertReport)
    {
        if let maxShardSize {
            let p = try planShardedSafetensors(record: record, output: output, half: half, weightsOnly: weightsOnly,
                                               maxShardSize: maxShardSize)
            return (.sharded(p), p.report)
        }
        switch format {
        case .safetensors, .shardedSafetensors:
            let p = try planSafetensors(record: record, output: output, half: half, weightsOnly: weightsOnly)
            return (.safetensors(p), p.report)
        case .torch:
            let (p, r) = try planTorchStateDict(record: record, output: output, dropUnconvertible: dropUnconvertible,
                                                half: half, weightsOnly: weightsOnly)
            return (.torch(p), r)
        }
    }

    /// Has every source check that the storages the plan reads can be read whole, before anything is written (and
    /// for `--dry-run`, which writes nothing but should refuse what writing would refuse).
    public static func prepare(_ plan: OutputPlan, sources: [Checkpoint]) throws {
        do {
            switch plan {
            case .torch(let p):
                for (i, s) in sources.enumerated() {
                    let keys = p.storages.filter { $0.source == i && $0.literal == nil }.map(\.sourceKey)
                        + p.storages.flatMap { $0.average?.parts.filter { $0.source == i }.map(\.key) ?? [] }
                    do { try s.source.prepare(keys) } catch where sources.count > 1 {
                        throw FileError(path: s.path, error: sourceFault(error))
                    }
                }
            case .safetensors(let p):
                try sources.first?.source.prepare(p.tensors.map(\.tensor.storage.key))
            case .sharded(let p):
                try sources.first?.source.prepare(p.files.flatMap { $0.plan.tensors.map(\.tensor.storage.key) })
            }
        } catch let f as FileError {
            throw f
        } catch {
            throw sourceFault(error)
        }
    }
}
