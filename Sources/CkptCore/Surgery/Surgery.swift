/// Options of `ckpt strip`: which training state goes and what else changes.
public struct StripOptions: Sendable {
    /// The EMA becomes the model where there is one.
    public var useEMA = false
    /// Floating tensors become float16.
    public var half = false
    /// The model record becomes an ordered name -> tensor dict that loads with `weights_only=True`.
    public var stateDict = false
    /// Globs or prefixes of keys to remove.
    public var drop: [String] = []
    /// Prefix renames, applied in order.
    public var rename: [(old: String, new: String)] = []
    /// Regex renames (`PATTERN=REPLACEMENT`, `$1` or `\1` for groups), applied after prefix renames.
    public var renameRegex: [(pattern: String, replacement: String)] = []
    /// The record whose keys --drop and --rename apply to (default: the model record).
    public var record: String?
    /// Allow dropping every tensor.
    public var force = false
    /// `--drop-record NAME`: top-level records removed whatever the framework's conventions say.
    public var dropRecords: [String] = []
    /// `--keep-record NAME`: top-level records kept whatever the framework's conventions say.
    public var keepRecords: [String] = []
    /// `--drop-unconvertible`: with `stateDict`, values the plain-data table (``PlainData``) cannot convert are dropped
    /// (and listed) instead of failing the command.
    public var dropUnconvertible = false
    public init() {}
}

/// What a surgery changed, for the summary line, `--dry-run` and `--json`.
public struct SurgeryReport: Sendable {
    /// `record: before -> after` for each top-level record changed.
    public var recordChanges: [(record: String, before: String, after: String)] = []
    public var dropped: [String] = []
    public var renamed: [(old: String, new: String)] = []
    /// Storages converted to float16 and how many tensors use them.
    public var convertedStorages = 0
    public var convertedTensors = 0
    public var warnings: [String] = []
    /// The record the weights are in, and their parameter count and dtype.
    public var weightsRecord: String?
    public var parameters: Int64 = 0
    public var weightsDType: DType?
    /// The framework whose conventions the surgery followed (``FrameworkConvention/id``), when one was detected or named.
    public var framework: String?
    /// Values made plain data so that the output loads with `weights_only=True` (``PlainData``): path, from, to.
    public var conversions: [ValueConversion] = []
    /// Values dropped because they cannot be converted (`--drop-unconvertible`): path, class, why.
    public var droppedValues: [ValueConversion] = []
}

/// A pure rewrite of a checkpoint's graph: what to write, and how each storage's bytes are made.
public struct SurgeryPlan {
    public var graph: PickleGraph
    /// For each output storage key (renumbered in order of first use), the source key and the
    /// dtype conversion to apply while copying.
    public var storages: [OutputStorage]
    public var report: SurgeryReport
    /// Run by the writer over the encoded data.pkl after it is made and before the output is renamed into place; a
    /// throw removes the temporary file, so nothing is written. `strip --state-dict` and `convert` set it to the
    /// weights_only replay (``WeightsOnlyGuarantee/verifier(for:context:)``).
    public var verifyPickle: (@Sendable ([UInt8]) throws -> Void)? = nil
    /// Strings of the graph known only once the storages are written (``LateStrings``), or nil.
    public var lateStrings: LateStrings? = nil
}

/// Strings of an output's pickle whose values come while its storages are written: `ckpt average`'s input digests,
/// hashed on a second thread while it averages. The graph holds placeholders of the same UTF-8 length at `nodes`;
/// the torch writer writes data.pkl with them, and after the storages asks `values` (which may wait for them), puts
/// them in, and rewrites data.pkl in place (the same length, so nothing after it moves). A value of another length,
/// or a throw, fails the write.
public struct LateStrings: Sendable {
    public var nodes: [NodeID]
    public var values: @Sendable () throws -> [String]

    public init(nodes: [NodeID], values: @escaping @Sendable () throws -> [String]) {
        self.nodes = nodes
        self.values = values
    }

    /// The graph with the values in place of the placeholders.
    func fill(_ graph: PickleGraph) throws -> PickleGraph {
        let values = try values()
        guard values.count == nodes.count else {
            throw CheckpointError.invalidOperation("\(values.count) late values for \(nodes.count) placeholders")
        }
        var g = graph
        for (node, value) in zip(nodes, values) {
            guard case .string(let placeholder) = g[node], placeholder.utf8.count == value.utf8.count else {
                throw CheckpointError.invalidOperation("a late value of data.pkl does not fit its placeholder")
            }
            g[node] = .string(value)
        }
        return g
    }
}

/// One storage of the output: where its bytes come from and how they change.
public struct OutputStorage: Sendable, Equatable {
    /// Which of the writer's sources holds the bytes (0 for single-source surgery).
    public var source: Int = 0
    public var key: String
    public var sourceKey: String
    public var sourceDType: DType
    public var dtype: DType
    public var numel: Int64
    public var byteCount: Int64 { numel * Int64(dtype.itemSize) }
    /// When set, the output holds only these elements of the source storage (in `sourceDType` units), compacted
    /// in row-major order: a slice of a larger storage or a non-contiguous view. When nil, the whole record.
    public var view: StorageView? = nil
    /// Bytes the surgery made rather than read from a source (a numpy array's data made a tensor by ``PlainData``):
    /// written as they are.
    public var literal: [UInt8]? = nil
    /// `average`: the bytes are the weighted average of these storages of several sources, computed while streaming
    /// (``StorageAverage``); `source` and `sourceKey` then name the last input's storage.
    public var average: StorageAverage? = nil
    /// Bytes read from the source (the viewed elements for a view; differs from ``byteCount`` when the dtype changes;
    /// for an average, the bytes of every input).
    public var sourceByteCount: Int64 { numel * Int64(sourceDType.itemSize) * Int64(average?.parts.count ?? 1) }
}

/// How `ckpt average` makes one floating storage: element by element, `sum_i(w_i * x_i) / sum_i(w_i)` in float64
/// (the sum from the first input to the last: `((w_1*x_1 + w_2*x_2) + w_3*x_3) ...`), then converted to the
/// storage's dtype as torch's `.to(dtype)` converts float64 (to float16 and bfloat16 through float32).
public struct StorageAverage: Sendable, Equatable {
    /// One storage of one source (the writer's `sources` index and the storage key there), whole, contiguous.
    public struct Part: Sendable, Equatable {
        public var source: Int
        public var key: String
        public init(source: Int, key: String) { self.source = source; self.key = key }
    }
    /// The storages averaged, in input order; each holds the output's `numel` elements of its dtype.
    public var parts: [Part]
    /// One positive finite weight per part.
    public var weights: [Double]
    public init(parts: [Part], weights: [Double]) { self.parts = parts; self.weights = weights }
}

extension SurgeryPlan {
    /// Bytes the writer reads from the sources: the total a progress report counts up to.
    public var sourceBytes: Int64 { storages.reduce(0) { $0 + $1.sourceByteCount } }
}


extension Checkpoint {
    /// Throws for a TorchScript archive: a rewrite writes data.pkl and its storages only, and the module's code,
    /// constants and bytecode would not match what is left (torch.jit.load would fail or run other weights),
    /// so every rewriting command refuses it; `convert` writes its state dict instead.
    func refuseTorchScriptRewrite(_ command: String) throws(CheckpointError) {
        guard torchScript != nil else { return }
        throw .invalidOperation("a TorchScript archive: \(command) would change its code's contract "
            + "(its code/, constants and bytecode records are not rewritten); use `ckpt convert` for its weights")
    }

    /// The storages a surgery of this checkpoint may use.
    var catalogue: StorageCatalogue {
        StorageCatalogue(recordBytes: { [source] in source.storageBytes($0) },
                         elements: { [self] t, name throws(CheckpointError) in try self.elementBytes(t, name: name) })
    }

    /// A tensor's elements in row-major order (the bytes `tensor.contiguous()` holds), after the tensor is checked
    /// against its storage. For small tensors: the bytes are held in memory.
    func elementBytes(_ t: TensorRef, name: String) throws(CheckpointError) -> [UInt8] {
        do throws(TensorCheckError) { try t.check(name: name, recordBytes: storageRecordBytes(t.storage.key)) } catch {
            throw .tensor(error)
        }
        let reader = try TensorElementReader(self, storageKey: t.storage.key, itemSize: t.dtype.itemSize, view: StorageView(t))
        let total = Int(reader.total) * t.dtype.itemSize
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 64)
        defer { buffer.deallocate() }
        var filled = 0
        while filled < total {
            let n = try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<total]))
            guard n > 0 else { break }
            filled += n
        }
        return Array(UnsafeRawBufferPointer(rebasing: buffer[0..<filled]))
    }

    /// Plans `strip`: the steps the options and the framework's conventions (``framework``) ask for, in order, then
    /// the ``CheckStage``. Does no I/O beyond what was already read.
    ///
    /// 1. The EMA becomes the weights (``PromoteEMA``: asked for, or because the model is None as Ultralytics saves it).
    /// 2. Training state out (``ClearTrainingState``), `--drop-record`/`--keep-record`, counters reset.
    /// 3. The weights record, as it is after 1 and 2 (``SelectWeights``): `--record` names it (it never turns the EMA
    ///    step off); --drop, --state-dict and --rename change it and the summary counts its parameters.
    /// 4. The framework's publish rewrites (Ultralytics' `args`/`criterion`/`train_args`, timm's prefixes and bare
    ///    state dict), `--drop`, `--state-dict` (the module's description to a `model_config` record,
    ///    ``DescribeModel``, then the state dict), `--rename`, `--half`, then with `--state-dict` every value that
    ///    weights_only refuses made plain data (``PlainData``).
    /// 5. With `--state-dict`, the output's promise to load with `weights_only=True` (``WeightsOnlyGuarantee``): checked
    ///    on the graph here, and on the encoded pickle by the writer before the rename.
    public func planStrip(_ options: StripOptions) throws(CheckpointError) -> SurgeryPlan {
        try refuseTorchScriptRewrite("strip")
        let c = conventions
        let emaNames: [String]
        if case .record(let n, _, _) = c.ema { emaNames = n } else { emaNames = [] }
        var steps: [any SurgeryStep] = [
            PromoteEMA(ema: c.ema, weightsRecords: c.weightsRecords, asked: options.useEMA,
                      hasRecords: !records.isEmpty),
            ClearTrainingState(convention: c, dropRecords: options.dropRecords, keepRecords: options.keepRecords,
                               hasRecords: !records.isEmpty),
            SelectWeights(record: options.record, weightsRecords: c.weightsRecords, emaNames: emaNames,
                          recordNames: records.map(\.name)),
        ]
        for p in c.publish {
            switch p {
            case .ultralyticsModel(let keys): steps.append(UltralyticsPublish(defaultConfigKeys: keys))
            case .stripKeyPrefixes(let prefixes): steps.append(RenameKeys(prefixes: prefixes.map { ($0, "") }, quiet: true))
            case .bareWeights where options.keepRecords.isEmpty && options.record == nil: steps.append(BareWeights())
            case .bareWeights: break
            }
        }
        if !options.drop.isEmpty { steps.append(DropKeys(patterns: options.drop, force: options.force)) }
        if options.stateDict { steps += [DescribeModel(), ToStateDict()] }
        if !options.rename.isEmpty || !options.renameRegex.isEmpty {
            steps.append(RenameKeys(prefixes: options.rename, regexes: options.renameRegex))
        }
        if options.half { steps.append(HalfPrecision()) }
        if options.stateDict { steps.append(PlainData(dropUnconvertible: options.dropUnconvertible)) }

        var state = SurgeryState(graph: graph)
        if let f = framework { state.report.framework = f.convention.id }
        let catalogue = catalogue
        for step in steps { state = try step.apply(state, catalogue) }
        var plan = try CheckStage(checkpoint: self).finish(state, dropForced: options.force && !options.drop.isEmpty)
        if options.stateDict {
            // The promise of --state-dict: checked on the graph now, and by the writer on the bytes before the rename.
            try WeightsOnlyGuarantee.check(plan.graph, context: "--state-dict")
            plan.verifyPickle = WeightsOnlyGuarantee.verifier(for: plan.graph, context: "--state-dict")
        }
        return plan
    }
}
