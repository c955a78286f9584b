#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// A Hugging Face Trainer checkpoint folder (`checkpoint-N/`), as transformers' `Trainer._save_checkpoint` writes it
/// (huggingface/transformers: src/transformers/trainer.py, 5.24): `save_model` -> `_save` -> the model's
/// `save_pretrained` (src/transformers/modeling_utils.py: `config.json`, `generation_config.json` when the model can
/// generate, `model.safetensors` or `model-0000x-of-0000y.safetensors` + `model.safetensors.index.json`, tied weights
/// written once), the processing class's own files (tokenizer), `training_args.bin`; then, unless `save_only_model`,
/// `_save_optimizer_and_scheduler` (`optimizer.pt`, `scheduler.pt`), `_save_scaler` (`scaler.pt`), `_save_rng_state`
/// (`rng_state.pth`, or `rng_state_<process index>.pth` when distributed); then `trainer_state.json`.
///
/// A folder is a Trainer checkpoint when its weights are found (``InputPath``) and at least one of these training-state
/// files is beside them. `info` lists the files; `strip` writes the weights alone (see ``TrainerStripPlan``). This is
/// the evidence the convention table uses for framework `hf-trainer`.
public struct TrainerFolder: Sendable {
    /// One file of the folder and its size.
    public struct File: Sendable, Equatable {
        public let name: String
        public let bytes: Int64
    }

    /// The folder as given (`checkpoint-500/`).
    public let folder: String
    /// The weights `from_pretrained` loads: `model.safetensors`, or the index and its shards (index first, shards in
    /// file-name order), or `pytorch_model.bin` (older transformers) likewise.
    public let weights: [File]
    /// `config.json` and `generation_config.json`, those present (what `save_pretrained` writes beside the weights).
    public let config: [File]
    /// The training-state files found, in folder-name order (`optimizer.pt`, `rng_state.pth`, `trainer_state.json`,
    /// ...); subfolders of training state (DeepSpeed's `global_step500/`, FSDP's `optimizer_0/`) end with `/`, their
    /// size the total of the files in them.
    public let trainingState: [File]
    /// Every other entry (the tokenizer's files, a README); folders end with `/`.
    public let other: [File]

    /// Whether the folder holds an entry of this name (a folder's name ends with `/`): the convention table's
    /// `folderFile` clue.
    public func holds(_ name: String) -> Bool { files.contains { $0.file.name == name } }

    /// Whether `trainer_state.json`, the file every `_save_checkpoint` writes last, is present.
    public var hasTrainerState: Bool { trainingState.contains { $0.name == "trainer_state.json" } }

    /// The names of the training-state files transformers' Trainer writes (trainer.py: `TRAINER_STATE_NAME`,
    /// `TRAINING_ARGS_NAME`, `OPTIMIZER_NAME`, `OPTIMIZER_NAME_BIN` (accelerate's), `SCHEDULER_NAME`, `SCALER_NAME`).
    public static let trainingStateNames = [
        "trainer_state.json", "training_args.bin", "optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt",
        "rng_state.pth",
        // DeepSpeed (engine.save_checkpoint from _save_optimizer_and_scheduler): the tag file and the script it adds.
        "latest", "zero_to_fp32.py",
    ]

    /// Whether `name` (a folder's name ends with `/`) is training state: one of ``trainingStateNames``,
    /// `rng_state_<N>.pth` (`_save_rng_state` when distributed), `rank<i>-of-<n>-optimizer.pt` (XLA FSDP), or a folder
    /// of DeepSpeed (`global_step<N>/`) or FSDP (`pytorch_model_fsdp_<N>/`, `optimizer_<N>/`,
    /// accelerate's `save_fsdp_model`/`save_fsdp_optimizer`).
    public static func isTrainingState(_ name: String) -> Bool {
        if trainingStateNames.contains(name) { return true }
        func digits(_ s: Substring) -> Bool { !s.isEmpty && s.allSatisfy(\.isASCII) && s.allSatisfy(\.isNumber) }
        if name.hasPrefix("rng_state_"), name.hasSuffix(".pth") {
            return digits(name.dropFirst("rng_state_".count).dropLast(".pth".count))
        }
        if name.hasPrefix("rank"), name.hasSuffix("-optimizer.pt") { return true }
        // accelerate's save_state (accelerate/utils/constants.py, checkpointing.py save_accelerator_state):
        // optimizer/scheduler/sampler/dataloader state as `<name>.bin` or `<name>_<i>.bin`, `random_states_<i>.pkl`,
        // `custom_checkpoint_<i>.pkl`; FSDP's full model copy for resuming (save_fsdp_model):
        // `pytorch_model_fsdp.bin`, `pytorch_model_fsdp_<i>.bin`, `pytorch_model_fsdp_rank<r>.bin`.
        for (prefix, suffix) in [("optimizer", ".bin"), ("scheduler", ".bin"), ("sampler", ".bin"),
                                 ("dl_state_dict", ".bin"), ("random_states", ".pkl"), ("custom_checkpoint", ".pkl"),
                                 ("pytorch_model_fsdp", ".bin")]
            where name.hasPrefix(prefix) && name.hasSuffix(suffix) && name.count >= prefix.count + suffix.count {
            let middle = name.dropFirst(prefix.count).dropLast(suffix.count)
            if middle.isEmpty { return true }
            if middle.hasPrefix("_rank"), digits(middle.dropFirst(5)) { return true }
            if middle.hasPrefix("_"), digits(middle.dropFirst()) { return true }
        }
        if name.hasSuffix("/") {
            let n = name.dropLast()
            for prefix in ["global_step", "pytorch_model_fsdp_", "optimizer_"] where n.hasPrefix(prefix) {
                if digits(n.dropFirst(prefix.count)) { return true }
            }
        }
        return false
    }

    /// Whether a file of the folder may be a pickle that resuming unpickles (`optimizer.pt`, `rng_state.pth`,
    /// `training_args.bin`, accelerate's `.pkl` files), so that `scan` of the folder reads it: not JSON, text,
    /// safetensors or Python source.
    public static func mayHoldPickles(_ name: String) -> Bool {
        let text = [".json", ".txt", ".md", ".safetensors", ".py", ".model", ".vocab", ".merges", ".jinja"]
        return !text.contains { name.hasSuffix($0) } && name != "latest"
    }

    /// What `save_pretrained` writes beside the weights and `strip` copies into a folder output byte for byte.
    public static let configNames = ["config.json", "generation_config.json"]

    /// Describes the folder `folder` whose weights file (``InputPath/resolve(_:)``) is `weightsFile`; nil when it is no
    /// Trainer checkpoint (no training-state file beside the weights) or cannot be listed.
    /// - Parameter shards: the shard files an index names (their paths), when the weights file is an index.
    static func read(folder: String, weightsFile: String, shards: [String]) -> TrainerFolder? {
        let base = folder.hasSuffix("/") ? folder : folder + "/"
        guard let entries = listing(folder) else { return nil }
        func size(_ name: String) -> Int64 {
            var info = stat()
            guard stat(base + name, &info) == 0 else { return 0 }
            if info.st_mode & S_IFMT == S_IFDIR { return folderBytes(base + name) }
            return Int64(info.st_size)
        }
        let weightsName = (weightsFile as NSString).lastPathComponent
        var weightNames = [weightsName]
        for s in shards {
            let n = (s as NSString).lastPathComponent
            if !weightNames.contains(n) { weightNames.append(n) }
        }
        var weights: [File] = [], config: [File] = [], state: [File] = [], other: [File] = []
        for name in weightNames { weights.append(File(name: name, bytes: size(name))) }
        for name in entries where !weightNames.contains(name) {
            let f = File(name: name, bytes: size(name.hasSuffix("/") ? String(name.dropLast()) : name))
            if configNames.contains(name) { config.append(f) }
            else if isTrainingState(name) { state.append(f) }
            else { other.append(f) }
        }
        guard !state.isEmpty else { return nil }
        config.sort { configNames.firstIndex(of: $0.name)! < configNames.firstIndex(of: $1.name)! }
        return TrainerFolder(folder: folder, weights: weights, config: config, trainingState: state, other: other)
    }

    /// The entries of a folder, sorted, folders with a trailing `/` (`.` and `..` left out); nil when it cannot be listed.
    static func listing(_ folder: String) -> [String]? {
        let base = folder.hasSuffix("/") ? folder : folder + "/"
        guard let dir = opendir(folder) else { return nil }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            var info = stat()
            let isFolder = stat(base + name, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
            names.append(isFolder ? name + "/" : name)
        }
        return names.sorted { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) }
    }

    /// The total size of the regular files under a folder (symbolic links not followed).
    public static func folderBytes(_ path: String) -> Int64 {
        guard let e = FileManager.default.enumerator(atPath: path) else { return 0 }
        var total: Int64 = 0
        while let name = e.nextObject() as? String {
            var info = stat()
            if lstat(path + "/" + name, &info) == 0, info.st_mode & S_IFMT == S_IFREG { total += Int64(info.st_size) }
        }
        return total
    }

    /// Every file of the folder with its role, in the order `info` lists them: weights, config, training state, other.
    public var files: [(file: File, role: String)] {
        weights.map { ($0, "weights") } + config.map { ($0, "config") } + trainingState.map { ($0, "training state") }
            + other.map { ($0, "other") }
    }

    /// The bytes of every entry of the folder.
    public var totalBytes: Int64 { files.reduce(0) { $0 + $1.file.bytes } }

    /// `{folder, weights: [{name, bytes}], config: [...], training_state: [...], other: [...]}`.
    public var json: JSONValue {
        func list(_ files: [File]) -> JSONValue {
            .array(files.map { .object([("name", .string($0.name)), ("bytes", .int($0.bytes))]) })
        }
        return .object([("folder", .string(folder)), ("weights", list(weights)), ("config", list(config)),
                         ("training_state", list(trainingState)), ("other", list(other))])
    }

    /// The lines `info` prints under the records: what the folder holds, each file's role and size.
    public var table: String {
        let head = "Hugging Face Trainer checkpoint folder: the records above are its weights ("
            + weights[0].name + "); training state in \(trainingState.count) file"
            + (trainingState.count == 1 ? "" : "s") + " (\(Figures.bytes(trainingState.reduce(0) { $0 + $1.bytes }))), "
            + "not read"
        var rows: [[String]] = [["folder file", "role", "size"]]
        for (f, role) in files { rows.append([f.name, role, Figures.bytes(f.bytes)]) }
        return head + "\n\n" + Figures.table(rows)
    }
}
