import Foundation

/// Options of `ckpt average`: which record of each input holds the weights, and the weights of the inputs.
public struct AverageOptions: Sendable {
    /// The EMA is the weights where there is one (as `strip --use-ema`).
    public var useEMA = false
    /// The output's weights record as a state dict (as `strip --state-dict`).
    public var stateDict = false
    /// The weights record (as `strip --record`).
    public var record: String?
    public init() {}
}

/// One input of `ckpt average`, as the `averaged_from` record lists it.
public struct AverageInput: Sendable {
    /// The path as given.
    public var path: String
    /// The file name recorded (the path's last component).
    public var file: String
    /// The lowercase hex SHA-256 of the file read (for a model folder or a sharded index, the file ckpt opened); nil
    /// for a distributed checkpoint folder (DCP, DeepSpeed), which is many files.
    public var sha256: String?
    public var weight: Double
    public init(path: String, file: String, sha256: String?, weight: Double) {
        self.path = path
        self.file = file
        self.sha256 = sha256
        self.weight = weight
    }
}

/// What `ckpt average` did, for its summary.
public struct AverageReport: Sendable {
    /// The last input's strip (record changes, weights record, parameters, warnings).
    public var strip: SurgeryReport
    public var inputs: [AverageInput]
    /// Floating tensors of the weights record averaged, and the storages they are in.
    public var averagedTensors = 0
    public var averagedStorages = 0
    /// Integer and bool tensors of the weights record, copied from the last input.
    public var copiedTensors: [String] = []
    /// Tensors outside the weights record's state dict (other records, plain tensor attributes), copied from the last
    /// input with their storages.
    public var outsideTensors = 0
}

/// A weight as the summary shows it: `2` for 2.0, `0.25`, `nan`, `inf`.
func averageWeightText(_ w: Double) -> String {
    w.isFinite && w == w.rounded() && abs(w) < 1e15 ? String(Int64(w)) : String(w)
}

/// Name of the record that lists the inputs of an average.
public let averagedFromRecord = "averaged_from"

extension Checkpoint {
    /// Checks `--weights`: one positive finite number per input; nil means equal weights (1 each).
    public static func averageWeights(_ given: [Double]?, inputs: Int) throws(CheckpointError) -> [Double] {
        guard let given else { return [Double](repeating: 1, count: inputs) }
        guard given.count == inputs else {
            throw .invalidOperation("--weights: \(given.count) weights for \(inputs) inputs; give one per input")
        }
        if let bad = given.first(where: { !($0.isFinite && $0 > 0) }) {
            throw .invalidOperation("--weights: \(averageWeightText(bad)) is not a positive finite number")
        }
        guard given.reduce(0.0, +).isFinite else { throw .invalidOperation("--weights: their sum is not finite") }
        return given
    }

    /// Plans `ckpt average`: the plan `strip` makes for the last input (training state out, epoch -1, the same record
    /// layout), in which each floating storage of the weights record becomes the weighted average of the
    /// corresponding storages of every input (``StorageAverage``), and a record `averaged_from` lists the inputs.
    ///
    /// Tensors correspond by name in each input's weights record (chosen as `strip` chooses it); every input must have
    /// the same names, shapes and dtypes there, and the same storage layout (which tensors share a storage, at which
    /// offsets and strides), else a ``FileError`` names the first input and tensor that differ. Integer and bool
    /// tensors, and every tensor outside the weights record's state dict, are the last input's.
    ///
    /// The writer's sources are `inputs` in order: storage parts name them by index.
    ///
    /// With `digests`, the inputs' `sha256` are placeholders (64 characters; nil for a folder) that the torch writer
    /// replaces, after the storages, by what `digests` returns, one per input (``SurgeryPlan/lateStrings``): the
    /// inputs are hashed while they are averaged.
    public static func planAverage(_ inputs: [Checkpoint], _ sources: [AverageInput], options: AverageOptions,
                                   digests: (@Sendable () throws -> [String?])? = nil)
        throws -> (plan: SurgeryPlan, report: AverageReport)
    {
        precondition(inputs.count == sources.count && inputs.count >= 2)
        var so = StripOptions()
        so.useEMA = options.useEMA
        so.stateDict = options.stateDict
        so.record = options.record
        let lastIndex = inputs.count - 1
        let last = inputs[lastIndex]
        var plans: [SurgeryPlan] = []
        var tensors: [[NamedTensor]] = []
        for c in inputs {
            do {
                let p = try c.planStrip(so)
                plans.append(p)
                tensors.append(try p.graph.stateDict(p.weightsNode))
            } catch {
                throw FileError(path: c.path, error: error)
            }
        }
        let lastPlan = plans[lastIndex]
        let lastTensors = tensors[lastIndex]
        let lastName = last.path
        let record = lastPlan.report.weightsRecord.map { "'\($0)'" } ?? "the state dict"
        func fail(_ c: Checkpoint, _ why: String) -> FileError {
            FileError(path: c.path, error: .invalidOperation(why + "; nothing written"))
        }
        func shape(_ t: TensorRef) -> String { "[" + t.shape.map(String.init).joined(separator: ", ") + "]" }

        let byName = tensors.map { Dictionary($0.map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a }) }
        // Names, shapes and dtypes: every input against the last, in input order, tensors in the last's order.
        for i in 0..<lastIndex {
            let c = inputs[i]
            let mine = byName[i]
            let theirs = Set(lastTensors.map(\.name))
            for t in lastTensors {
                guard let m = mine[t.name] else {
                    throw fail(c, "no tensor '\(t.name)' in its weights (\(record)), which \(lastName) has")
                }
                if m.shape != t.tensor.shape {
                    throw fail(c, "tensor '\(t.name)' has shape \(shape(m)), in \(lastName) \(shape(t.tensor))")
                }
                if m.dtype != t.tensor.dtype {
                    throw fail(c, "tensor '\(t.name)' is \(m.dtype.rawValue), in \(lastName) \(t.tensor.dtype.rawValue)")
                }
            }
            if let extra = tensors[i].first(where: { !theirs.contains($0.name) }) {
                throw fail(c, "tensor '\(extra.name)' is not in the weights (\(record)) of \(lastName)")
            }
        }

        // Storages: each floating storage of the last input's weights maps to one storage of every input, laid out
        // the same way.
        let planned = plans.map { p in Dictionary(p.storages.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a }) }
        let outStorage = planned[lastIndex]
        var report = AverageReport(strip: lastPlan.report, inputs: sources)
        var parts: [String: [String]] = [:]  // last's output key -> per input the source key
        var firstUser: [String: String] = [:]  // last's output key -> first tensor name using it
        var owner: [[String: String]] = Array(repeating: [:], count: inputs.count)  // per input: its key -> last's key
        var averagedNames = Set<String>()
        for t in lastTensors {
            let lt = t.tensor
            guard lt.dtype.isFloatingPoint else { report.copiedTensors.append(t.name); continue }
            guard StorageAverager.averaged.contains(lt.dtype) else {
                throw fail(last, "tensor '\(t.name)' is \(lt.dtype.rawValue): ckpt averages float16, bfloat16, float32 "
                    + "and float64 tensors")
            }
            let key = lt.storage.key
            guard let os = outStorage[key], lt.storage.dtype == lt.dtype, os.sourceDType == lt.dtype,
                  os.literal == nil, os.view == nil
            else {
                throw fail(last, "tensor '\(t.name)' is \(lt.dtype.rawValue) in a storage of another type "
                    + "(\(lt.storage.storageClass)); it cannot be averaged element by element")
            }
            if firstUser[key] == nil { firstUser[key] = t.name }
            var row: [String] = []
            for i in 0..<inputs.count {
                let c = inputs[i]
                guard let m = i == lastIndex ? lt : byName[i][t.name],
                      let ms = planned[i][m.storage.key]
                else { throw fail(c, "tensor '\(t.name)' has no storage in the plan") }
                guard m.storage.dtype == m.dtype, ms.sourceDType == m.dtype, ms.literal == nil, ms.view == nil else {
                    throw fail(c, "tensor '\(t.name)' is \(m.dtype.rawValue) in a storage of another type "
                        + "(\(m.storage.storageClass)); it cannot be averaged element by element")
                }
                if let other = owner[i][m.storage.key], other != key {
                    throw fail(c, "tensor '\(t.name)' shares its storage with '\(firstUser[other] ?? other)' here but "
                        + "not in \(lastName); ckpt does not guess how to average storages shared differently")
                }
                owner[i][m.storage.key] = key
                if let known = parts[key], known[i] != ms.sourceKey {
                    throw fail(c, "tensor '\(t.name)' does not share its storage with '\(firstUser[key] ?? key)' here, "
                        + "as it does in \(lastName); ckpt does not guess how to average storages shared differently")
                }
                row.append(ms.sourceKey)
                if ms.numel != os.numel {
                    throw fail(c, "tensor '\(t.name)' is in a storage of \(ms.numel) elements, in \(lastName) of "
                        + "\(os.numel); averaging storages needs them laid out alike")
                }
                let sameView = m.storageOffset == lt.storageOffset
                    && zip(zip(m.shape, m.stride), lt.stride).allSatisfy { $0.0.0 <= 1 || $0.0.1 == $0.1 }
                if !sameView && (m.numel ?? 0) > 0 {
                    throw fail(c, "tensor '\(t.name)' is a view at offset \(m.storageOffset) with strides "
                        + "\(m.stride) of its storage, in \(lastName) at offset \(lt.storageOffset) with strides "
                        + "\(lt.stride); averaging storages needs them laid out alike")
                }
            }
            parts[key] = row
            averagedNames.insert(t.name)
        }
        report.averagedTensors = averagedNames.count
        report.averagedStorages = parts.count
        let inWeights = Set(lastTensors.map { $0.tensor.node })
        report.outsideTensors = try lastPlan.graph.allTensors(from: lastPlan.graph.root)
            .filter { !inWeights.contains($0.tensor.node) }.count

        var plan = lastPlan
        let weights = sources.map(\.weight)
        plan.storages = plan.storages.map { s in
            var s = s
            s.source = lastIndex
            if let row = parts[s.key] {
                s.average = StorageAverage(parts: row.enumerated().map { .init(source: $0.offset, key: $0.element) },
                                           weights: weights)
            }
            return s
        }
        do {
            let nodes = try plan.addAveragedFrom(sources, weightsRecord: lastPlan.report.weightsRecord)
            if let digests {
                let held = nodes.indices.filter { nodes[$0] != nil }
                plan.lateStrings = LateStrings(nodes: held.map { nodes[$0]! }) {
                    let all = try digests()
                    return held.map { all.indices.contains($0) ? all[$0] ?? "" : "" }
                }
            }
            if options.stateDict {
                try WeightsOnlyGuarantee.check(plan.graph, context: "--state-dict")
                plan.verifyPickle = WeightsOnlyGuarantee.verifier(for: plan.graph, context: "--state-dict")
            }
        } catch {
            throw FileError(path: last.path, error: error)
        }
        return (plan, report)
    }
}

extension SurgeryPlan {
    /// The weights node of the planned graph: the weights record, else the whole file.
    var weightsNode: NodeID {
        guard let w = report.weightsRecord else { return graph.root }
        let top = graph.dictEntries(graph.root)?.first { graph.keyText($0.key) == w }?.value
        return top ?? (try? graph.nodeAtPath(w)) ?? graph.root
    }

    /// Adds the `averaged_from` record: a list of `{'file': name, 'sha256': hex, 'weight': w}` dicts, one per input.
    /// A file of records gets it as a top-level record (replacing one of that name); a file that is the state dict
    /// itself as an attribute of its `OrderedDict` (`sd.averaged_from`, as `_metadata` is kept: `load_state_dict`
    /// ignores it and `weights_only=True` loads it).
    /// Returns the nodes of the digests, one per input, nil where it is None.
    @discardableResult
    mutating func addAveragedFrom(_ inputs: [AverageInput], weightsRecord: String?) throws(CheckpointError) -> [NodeID?] {
        var g = graph
        var digests: [NodeID?] = []
        let list = g.add(.list(inputs.map { i in
            let digest = g.add(i.sha256.map { .string($0) } ?? .none)
            digests.append(i.sha256 == nil ? nil : digest)
            return g.add(.dict([
                DictEntry(key: g.add(.string("file")), value: g.add(.string(i.file))),
                DictEntry(key: g.add(.string("sha256")), value: digest),
                DictEntry(key: g.add(.string("weight")), value: g.add(.float(i.weight))),
            ]))
        }))
        let key = g.add(.string(averagedFromRecord))
        let root = g.root
        g.settleDictItems(root)
        if weightsRecord != nil, g.dictEntries(root) != nil {
            switch g[root] {
            case .dict(var entries):
                entries.removeAll { g.keyText($0.key) == averagedFromRecord }
                entries.append(DictEntry(key: key, value: list))
                g[root] = .dict(entries)
            case .object(var o):
                o.dictItems.removeAll { g.keyText($0.key) == averagedFromRecord }
                o.dictItems.append(DictEntry(key: key, value: list))
                g[root] = .object(o)
            default:
                throw .invalidOperation("the output's top level is no dict to hold \(averagedFromRecord)")
            }
        } else {
            // The file is the weights: an attribute of the OrderedDict (a plain dict becomes one, as torch's
            // state_dict() returns).
            var o: PickleObject
            switch g[root] {
            case .dict(let entries):
                o = PickleObject(construction: .reduce, callable: g.add(.global(module: "collections", name: "OrderedDict")),
                                 args: g.add(.tuple([])), dictItems: entries)
            case .object(let obj):
                o = obj
            default:
                throw .invalidOperation("the output's top level is no dict or object to hold \(averagedFromRecord)")
            }
            if let st = o.state, case .dict(var entries) = g[st] {
                entries.removeAll { g.keyText($0.key) == averagedFromRecord }
                entries.append(DictEntry(key: key, value: list))
                g[st] = .dict(entries)
            } else if o.state == nil || g[o.state!] == .none {
                o.state = g.add(.dict([DictEntry(key: key, value: list)]))
            } else {
                throw .invalidOperation("the output's top level keeps a state ckpt cannot add \(averagedFromRecord) to")
            }
            g[root] = .object(o)
        }
        graph = g
        return digests
    }
}
