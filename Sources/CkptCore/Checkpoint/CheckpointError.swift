/// What can go wrong reading, checking or rewriting a checkpoint. The CLI prints
/// `ckpt: FILE: <description>` and exits 2.
public enum CheckpointError: Error, Sendable, CustomStringConvertible {
    case container(ZipError)
    case pickle(record: String, PickleError)
    case tensor(TensorCheckError)
    /// A record the format requires is absent.
    case missingRecord(String)
    /// The pickle does not describe a checkpoint this tool understands.
    case notACheckpoint(String)
    /// A record asked for by name is not in the checkpoint.
    case noSuchRecord(String, available: [String])
    /// Nesting deeper than the walk limit.
    case tooDeep(Int)
    /// Shared objects reached by more paths than a walk may take (memo abuse: a pickle that reuses memo
    /// entries so that naming its contents would take exponential time).
    case sharedTooOften(Int)
    /// A surgery option that cannot be applied.
    case invalidOperation(String)
    /// An I/O failure while reading or writing.
    case io(String)
    /// The pickle names globals that run code when unpickled (see ``Checkpoint/dangerousGlobals()``);
    /// rewriting commands refuse such files unless allowed. The CLI exits 1 for it.
    case dangerousGlobals([String])
    /// torch.load could read the file differently from another reader (``ContainerAudit``): what torch reads, then
    /// each other reading. Rewriting commands refuse such files unless allowed. The CLI exits 1 for it.
    case ambiguousContainer(torchReads: String, [String])
    /// A file of another format (`safetensors`, `onnx`, `sharded checkpoint index`) that breaks its format's rules.
    case invalidFile(format: String, String)
    /// The path names something other than a checkpoint file: a folder without weights, a FIFO, a device, an
    /// empty, HTML, Git LFS pointer or text file, a missing path. The text says what it is.
    case wrongKind(String)

    public var description: String {
        switch self {
        case .container(let e): e.description
        case .pickle(let r, let e): "\(r): \(e.description)"
        case .tensor(let e): e.description
        case .missingRecord(let r): "not a torch checkpoint: record \(r) is missing"
        case .notACheckpoint(let why): "not a torch checkpoint: \(why)"
        case .noSuchRecord(let r, let avail):
            "no record '\(r)' (records: \(avail.isEmpty ? "none" : avail.joined(separator: ", ")))"
        case .tooDeep(let n): "objects are nested more than \(n) levels deep"
        case .sharedTooOften(let n): "objects are shared so often that naming them takes more than \(n) steps (memo abuse)"
        case .invalidOperation(let why): why
        case .io(let why): why
        case .dangerousGlobals(let names):
            "refusing to rewrite: its pickle names \(names.count) dangerous global\(names.count == 1 ? "" : "s") ("
                + names.prefix(6).joined(separator: ", ") + (names.count > 6 ? ", ..." : "")
                + ") that can run code when unpickled; see ckpt scan, or pass --allow-unsafe to copy "
                + (names.count == 1 ? "it" : "them") + " unchanged"
        case .ambiguousContainer(let reads, let others):
            "refusing to rewrite: ambiguous container: torch.load reads \(reads); " + others.joined(separator: "; ")
                + " (see ckpt scan, or pass --allow-unsafe to rewrite what ckpt reads)"
        case .invalidFile(let format, let why): "not a valid \(format) file: \(why)"
        case .wrongKind(let what): what
        }
    }
}
