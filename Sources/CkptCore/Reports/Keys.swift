/// What `ckpt keys` lists: one line a tensor.
public struct KeyListing: Sendable {
    public var record: String?
    public var tensors: [NamedTensor]
    /// What the state_dict view covers of the record (see ``ViewCoverage``); complete for `--all`.
    public var coverage: ViewCoverage
    /// The framework's EMA keys left out of a default listing (LitEma's `model_ema.*` inside `state_dict`), and their prefix.
    public var emaLeftOut: (count: Int, prefix: String)? = nil
    /// When the weights are the whole file: what of its top-level optimizer records was left out
    /// (``Checkpoint/leavingOutOptimizerRecords(_:)``), as `consolidate` leaves it out.
    public var optimizerLeftOut: (note: String, records: [String])? = nil

    /// The note for stderr when the view leaves tensors out (see ``ViewCoverage/note(file:)``), or when the framework's
    /// EMA keys were left out.
    public func note(file: String) -> String? {
        let ema = emaLeftOut.map { "note: \($0.count) EMA tensors (\(record.map { "\($0)." } ?? "")\($0.prefix)*) are not "
            + "the model's weights and are not listed; --record \(record ?? "state_dict") lists them" }
        let optimizer = optimizerLeftOut.map { "note: \($0.note); --record \($0.records[0]) lists them" }
        let notes = [coverage.note(file: file), ema, optimizer].compactMap { $0 }
        return notes.isEmpty ? nil : notes.joined(separator: "\n")
    }

    /// `[{"name", "dtype", "shape"}]`.
    public var json: JSONValue {
        .array(tensors.map {
            .object([("name", .string($0.name)), ("dtype", .string($0.tensor.dtype.rawValue)),
                     ("shape", .array($0.tensor.shape.map { .int($0) }))])
        })
    }

    /// `name  dtype  [shape]`, aligned.
    public var table: String {
        Figures.table(tensors.map {
            [$0.name, $0.tensor.dtype.rawValue, "[" + $0.tensor.shape.map(String.init).joined(separator: ", ") + "]"]
        })
    }
}

/// Builds `ckpt keys`' listing (``KeyListing``): the state_dict view of a record (see
/// ``Checkpoint/defaultRecord()``), filtered by prefix and glob, with what the view covers of the record. With `all`,
/// every tensor the record holds, by its path in the object graph (``PickleGraph/allTensors(from:limits:)``), each
/// tensor once. When the weights are the whole file, its top-level optimizer records are left out with a note, as
/// `consolidate` leaves them out.
public struct KeysBuilder {
    /// The checkpoint listed.
    public let checkpoint: Checkpoint
    /// The record to list (dotted names reach into nested dicts); nil for the framework's weights record.
    public var record: String?
    /// Only names starting with this prefix.
    public var prefix: String?
    /// Only names matching this glob (``globMatches(_:_:)``).
    public var match: String?
    /// Every tensor the record holds, not only those in its state_dict view.
    public var all: Bool

    public init(checkpoint: Checkpoint, record: String? = nil, prefix: String? = nil, match: String? = nil,
                all: Bool = false)
    {
        self.checkpoint = checkpoint
        self.record = record
        self.prefix = prefix
        self.match = match
        self.all = all
    }

    /// The listing.
    public func build() throws(CheckpointError) -> KeyListing {
        let c = checkpoint, graph = checkpoint.graph
        let (name, node): (String?, NodeID)
        if let r = record { (name, node) = (r, try c.record(named: r)) } else { (name, node) = c.defaultRecord() }
        var tensors = all ? try graph.allTensors(from: node) : try graph.stateDict(node)
        let coverage = graph.coverage(of: node, record: name, shown: tensors.map(\.tensor))
        // A TorchScript archive's constants live in constants.pkl, a graph of their own (see constantsNote).
        if all, record == nil, let constants = c.torchScript?.constants { tensors += constants }
        if tensors.count == 1, tensors[0].name.isEmpty, let n = name { tensors[0].name = n }  // a bare tensor record
        let (kept, emaLeftOut) = c.modelWeights(tensors, recordNamed: record != nil || all)
        tensors = kept
        var optimizerLeftOut: (note: String, records: [String])? = nil
        if record == nil, name == nil, !all {
            let (kept, note, records) = c.leavingOutOptimizerRecords(tensors)
            tensors = kept
            optimizerLeftOut = note.map { ($0, records) }
        }
        if let p = prefix { tensors = tensors.filter { $0.name.hasPrefix(p) } }
        if let m = match { tensors = tensors.filter { globMatches(m, $0.name) } }
        return KeyListing(record: name, tensors: tensors, coverage: coverage, emaLeftOut: emaLeftOut,
                          optimizerLeftOut: optimizerLeftOut)
    }
}
