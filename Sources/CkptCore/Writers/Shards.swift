import Foundation

// Sharded safetensors output (`--max-shard-size`), as Hugging Face writes it: huggingface_hub's
// `save_torch_state_dict` (huggingface_hub/serialization/_torch.py), whose split is
// `split_state_dict_into_shards_factory` and whose sizes are `parse_size_to_int` (serialization/_base.py);
// transformers' `save_pretrained` (modeling_utils.py) uses the same split and file names.

/// `--max-shard-size SIZE`: a number of bytes, or a number and a unit as huggingface_hub's `parse_size_to_int` reads
/// it: `TB`, `GB`, `MB`, `KB` (any case; powers of 1000, not 1024: "5GB" is 5,000,000,000 bytes), spaces allowed
/// around the number, a decimal fraction allowed ("1.5GB"); the bytes are `int(value * unit)` (truncated).
public enum ShardSize {
    /// The units `parse_size_to_int` accepts (`SIZE_UNITS`).
    public static let units: [(name: String, bytes: Int64)] = [
        ("TB", 1_000_000_000_000), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000),
    ]

    /// The bytes `text` names. Refused (one line): another unit (`GiB`, `B`), a value that is not a plain decimal
    /// number (Python's `float` also takes `1_000`, `inf`, `nan`: ckpt does not), a negative size, more than 2^63-1 bytes.
    public static func parse(_ text: String) throws(CheckpointError) -> Int64 {
        func bad(_ why: String) -> CheckpointError { .invalidOperation("--max-shard-size '\(text)': \(why)") }
        let s = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if !s.isEmpty, s.allSatisfy({ $0.isASCII && $0.isNumber }) {
            guard let n = Int64(s) else { throw bad("more bytes than ckpt can count") }
            return n
        }
        let unit = String(s.suffix(2)).uppercased()
        guard s.count >= 2, let multiplier = units.first(where: { $0.name == unit })?.bytes else {
            throw bad("unit '\(s.suffix(2))' is not supported: use TB, GB, MB, KB (powers of 1000, as huggingface_hub) "
                + "or a number of bytes")
        }
        let number = s.dropLast(2).trimmingCharacters(in: .whitespacesAndNewlines)
        let allowed = Set("0123456789.eE+-")
        guard !number.isEmpty, number.allSatisfy({ allowed.contains($0) }), number.contains(where: \.isNumber),
              let value = Double(number), value.isFinite
        else { throw bad("'\(number)' is not a number") }
        guard value >= 0 else { throw bad("a size cannot be negative") }
        let bytes = value * Double(multiplier)  // Python: int(value * multiplier), in doubles as here
        guard bytes < 9.223372036854775807e18 else { throw bad("more bytes than ckpt can count") }
        return Int64(bytes)
    }
}

/// One tensor as the split sees it: its name, the bytes its storage takes once saved, and its storage (tensors of
/// one storage go to one shard; nil: a storage of its own).
public struct ShardEntry: Sendable, Equatable {
    public var name: String
    public var size: Int64
    public var storage: String?

    public init(name: String, size: Int64, storage: String?) {
        self.name = name
        self.size = size
        self.storage = storage
    }
}

/// How a state dict is split into shard files, exactly as `split_state_dict_into_shards_factory` splits it.
public struct ShardSplit: Sendable, Equatable {
    /// The tensor names of each shard, in the order the reference lists them (its `filename_to_tensors`).
    public var shards: [[String]]
    /// The index's `total_size`: each storage counted once.
    public var totalSize: Int64

    /// Splits `entries` (in the state dict's order) into shards of at most `maxShardSize` bytes, as the reference:
    /// tensors taken in order, greedily (a tensor that would tip the current shard over the limit starts a new
    /// one); a tensor larger than the limit goes alone into a shard of its own, appended at once (so before the shard
    /// being filled); a tensor whose storage was met before is skipped and then put in the shard of that storage's
    /// first tensor, after its tensors, and counted in no size.
    public static func split(_ entries: [ShardEntry], maxShardSize: Int64) -> ShardSplit {
        var groups: [String: [String]] = [:]
        var groupOrder: [String] = []
        var shards: [[String]] = []
        var current: [String] = []
        var currentSize: Int64 = 0
        var total: Int64 = 0
        for e in entries {
            if let id = e.storage {
                if groups[id] != nil { groups[id]!.append(e.name); continue }
                groups[id] = [e.name]
                groupOrder.append(id)
            }
            if e.size > maxShardSize {
                total += e.size
                shards.append([e.name])
                continue
            }
            if currentSize + e.size > maxShardSize {
                shards.append(current)
                current = []
                currentSize = 0
            }
            current.append(e.name)
            currentSize += e.size
            total += e.size
        }
        if !current.isEmpty { shards.append(current) }
        for id in groupOrder {
            let names = groups[id]!
            guard names.count > 1, let i = shards.firstIndex(where: { $0.contains(names[0]) }) else { continue }
            shards[i] += names.dropFirst()
        }
        return ShardSplit(shards: shards, totalSize: total)
    }

    /// The shard files' names: `model.safetensors` for one shard, else `model-00001-of-00003.safetensors`, ...
    /// (`"model{suffix}.safetensors"` with `-{i:05d}-of-{n:05d}`).
    public var fileNames: [String] {
        if shards.count == 1 { return ["model.safetensors"] }
        func pad(_ n: Int) -> String { let s = String(n); return String(repeating: "0", count: max(0, 5 - s.count)) + s }
        return shards.indices.map { "model-\(pad($0 + 1))-of-\(pad(shards.count)).safetensors" }
    }

    /// The index file's name.
    public static let indexName = "model.safetensors.index.json"
}

/// A sharded safetensors folder to write: each file's plan, and the index (nil for one file, which has none).
public struct ShardedSafetensorsPlan {
    public var files: [(name: String, plan: SafetensorsPlan)]
    /// `model.safetensors.index.json`'s bytes, as `json.dump(index, f, indent=2)` writes them.
    public var index: [UInt8]?
    public var report: ConvertReport
    /// Bytes the writer reads from the source.
    public var sourceBytes: Int64 {
        files.reduce(0) { $0 + $1.plan.tensors.reduce(0) { $0 + ($1.tensor.byteCount ?? 0) } }
    }
}

extension TensorRef {
    /// Whether torch's `is_contiguous()` holds: row-major strides, dimensions of size 1 ignored, any empty tensor.
    var isContiguous: Bool {
        guard let n = numel, n > 0 else { return true }
        var expected: Int64 = 1
        for (size, stride) in zip(shape, stride).reversed() where size != 1 {
            if stride != expected { return false }
            expected *= size
        }
        return true
    }
}

extension Checkpoint {
    /// Plans the record's state dict (see ``safetensorsWeights(record:output:half:weightsOnly:format:)``: deduplicated, `half`
    /// converting) as a folder of safetensors shards of at most `maxShardSize` bytes, as huggingface_hub's
    /// `save_torch_state_dict(state_dict, folder, max_shard_size=...)` writes it:
    ///
    /// - aliases of a shared storage removed first (`_clean_state_dict_for_safetensors`), then the split
    ///   (``ShardSplit``) over what is left, in the state dict's order, each tensor counted by the bytes written;
    /// - one shard: `model.safetensors` alone, `__metadata__` `format: pt` and the aliases; several:
    ///   `model-0000K-of-0000N.safetensors`, each `{"format": "pt"}`, and `model.safetensors.index.json`:
    ///   `{"metadata": {"total_size": ..., alias: kept, ...}, "weight_map": {name: file, ...}}`, shard by shard.
    ///
    /// transformers' `save_pretrained` splits the same way; its index adds `total_parameters` (the model's parameter
    /// count, which a state dict does not tell from its buffers) and sorts the keys.
    public func planShardedSafetensors(record: String? = nil, output: String, half: Bool = false,
                                       weightsOnly: Bool = false, maxShardSize: Int64)
        throws(CheckpointError) -> ShardedSafetensorsPlan
    {
        let w = try safetensorsWeights(record: record, output: output, half: half, weightsOnly: weightsOnly,
                                       format: .shardedSafetensors)
        var report = w.report
        // What the reference's split sees after `_clean_state_dict_for_safetensors`: every tensor left covers its own
        // storage whole (it refuses any other), so its size is its own bytes and no two share a storage, except
        // empty ones: storages of no bytes have no address in torch (data_ptr 0), and it takes them all for one.
        // ckpt also writes a tensor that is a view of part of a larger storage (the reference refuses it), compacted:
        // its size is then the bytes written.
        let entries = w.tensors.map { t -> ShardEntry in
            let bytes = (t.tensor.numel ?? 0) * Int64((w.outputDTypes[t.tensor.storage.key] ?? t.tensor.dtype).itemSize)
            let empty = (storageRecordBytes(t.tensor.storage.key) ?? t.tensor.storage.byteCount ?? 0) == 0
            return ShardEntry(name: t.name, size: bytes, storage: empty ? "" : nil)
        }
        let split = ShardSplit.split(entries, maxShardSize: maxShardSize)
        let byName = Dictionary(w.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let names = split.fileNames
        var files: [(name: String, plan: SafetensorsPlan)] = []
        for (file, shard) in zip(names, split.shards) {
            var metadata: [(key: String, value: String)] = [("format", "pt")]
            if split.shards.count == 1 { metadata += report.removedAliases.map { ($0.removed, $0.kept) } }
            let plan = try SafetensorsPlan(tensors: shard.map { byName[$0]! }, metadata: metadata,
                                           outputDTypes: w.outputDTypes, report: report)
            files.append((file, plan))
            report.shards.append((file, plan.tensors.count, plan.dataBytes))
        }
        var index: [UInt8]? = nil
        if split.shards.count > 1 {
            var metadata: [(String, JSONValue)] = [("total_size", .int(split.totalSize))]
            for a in w.removed {
                if let i = metadata.firstIndex(where: { $0.0 == a.removed }) { metadata[i].1 = .string(a.kept) } else {
                    metadata.append((a.removed, .string(a.kept)))
                }
            }
            let weightMap = zip(names, split.shards).flatMap { file, shard in shard.map { ($0, JSONValue.string(file)) } }
            index = Array(PythonJSON.dump(.object([("metadata", .object(metadata)), ("weight_map", .object(weightMap))])).utf8)
        }
        report.tensors = files.reduce(0) { $0 + $1.plan.tensors.count }
        report.dataBytes = files.reduce(0) { $0 + $1.plan.dataBytes }
        report.maxShardSize = maxShardSize
        report.totalSize = split.totalSize
        return ShardedSafetensorsPlan(files: files, index: index, report: report)
    }
}

/// Python's `json.dump(obj, f, indent=2)` for objects of strings and integers: `": "` after keys, `","` and a newline
/// between items, `{}` for an empty object, no final newline, non-ASCII characters escaped (`ensure_ascii`).
enum PythonJSON {
    static func dump(_ value: JSONValue, level: Int = 0) -> String {
        switch value {
        case .object(let pairs):
            if pairs.isEmpty { return "{}" }
            let inner = String(repeating: " ", count: 2 * (level + 1))
            let items = pairs.map { inner + JSONValue.quote($0.0, asciiOnly: true) + ": " + dump($0.1, level: level + 1) }
            return "{\n" + items.joined(separator: ",\n") + "\n" + String(repeating: " ", count: 2 * level) + "}"
        case .string(let s): return JSONValue.quote(s, asciiOnly: true)
        case .int(let n): return String(n)
        default: return value.rendered(indent: 0)
        }
    }
}

/// Writes a ``ShardedSafetensorsPlan``: every file into a temporary folder beside the output, then the folder renamed
/// into place (``AtomicOutput/writeFolder(to:_:)``).
enum ShardedSafetensorsWriter {
    static func write(_ plan: ShardedSafetensorsPlan, source: Checkpoint, to folder: String, chunkSize: Int,
                      progress: ((Int64) -> Void)?) throws
    {
        try AtomicOutput.writeFolder(to: folder) { tmp in
            try writeFiles(plan, source: source, into: tmp, chunkSize: chunkSize, progress: progress)
        }
    }

    /// Writes the plan's files into `folder`, which exists (a temporary folder that is renamed into place afterwards).
    static func writeFiles(_ plan: ShardedSafetensorsPlan, source: Checkpoint, into folder: String, chunkSize: Int,
                           progress: ((Int64) -> Void)?) throws
    {
        var before: Int64 = 0
        for f in plan.files {
            try SafetensorsWriter.write(f.plan, source: source, to: folder + "/" + f.name, chunkSize: chunkSize,
                                        progress: progress.map { p in { p(before + $0) } })
            before += f.plan.tensors.reduce(0) { $0 + ($1.tensor.byteCount ?? 0) }
        }
        if let index = plan.index {
            try AtomicOutput.write(to: folder + "/" + ShardSplit.indexName) { path in
                let out = try ZipFileHandle.openForWriting(path)
                try index.withUnsafeBytes { try out.writeAll($0) }
                try out.close()
            }
        }
    }
}
