import Foundation

/// One row of `ckpt layers`: a layer of a YOLO model, or a group of keys sharing a top-level prefix.
public struct LayerRow: Sendable {
    /// The key prefix of the layer's tensors (`model.3.`, `layer1.`).
    public var prefix: String
    /// YOLO models: the layer index, where its input comes from (`-1`, `[-1, 6]`), its repeats, and whether
    /// the model's yaml lists it under `backbone` or `head`; its arguments as the yaml gives them.
    public var index: Int?
    public var from: String?
    public var repeats: Int?
    public var part: String?
    public var arguments: String?
    /// The module class (`models.common.C3`), when the weights are module objects.
    public var module: String?
    /// Parameters (elements of `nn.Parameter`s, each counted once) and tensors in the state_dict under the prefix.
    public var parameters: Int64 = 0
    public var tensors = 0
    /// With `--freeze`: parameters of the layer that would be frozen.
    public var frozen: Int64 = 0
}

/// What to freeze: YOLOv5's `--freeze` layer indices, key prefixes, or all but some key prefixes.
public enum FreezeSpec: Sendable {
    /// YOLOv5 train.py: one value N freezes `model.0.` ... `model.{N-1}.`, several values freeze those layers
    /// (a parameter is frozen when its name contains `model.{i}.`).
    case yoloLayers([Int])
    /// Freeze every parameter named `P` or starting with `P.` (`features` freezes `features.0.weight`).
    case prefixes([String])
    /// Freeze every parameter except those named `P` or starting with `P.` (the head-replacement recipe).
    case trainable([String])

    /// How `ckpt layers --freeze` values are read: all integers are YOLO layer indices, otherwise key prefixes.
    public static func freeze(_ values: [String]) -> FreezeSpec {
        let ints = values.compactMap { Int($0) }
        return ints.count == values.count ? .yoloLayers(ints) : .prefixes(values)
    }

    var mode: FreezeMode {
        switch self {
        case .yoloLayers: .yolo
        case .prefixes: .freeze
        case .trainable: .trainable
        }
    }
}

/// How a freeze is given; the raw value is the `mode` of `ckpt layers --json`.
public enum FreezeMode: String, Sendable {
    /// YOLOv5 layer indices (the patterns are substrings).
    case yolo
    /// Key prefixes to freeze.
    case freeze
    /// Key prefixes to leave trainable.
    case trainable
}

/// What `ckpt layers --freeze`/`--trainable` reports: the parameters frozen and left trainable, in
/// `model.named_parameters()` order. For YOLO indices, YOLOv5 train.py's `freeze = [f'model.{x}.' for x in ...]`.
public struct FreezeReport: Sendable {
    /// How the patterns are read.
    public var mode: FreezeMode
    /// The substrings YOLOv5 tests (`model.0.` ... `model.9.`), or the key prefixes given (with their dot).
    public var patterns: [String]
    /// The parameters frozen and those left trainable, with their element counts, in named_parameters order.
    public var frozen: [(name: String, numel: Int64)] = []
    public var trainable: [(name: String, numel: Int64)] = []
    public var frozenParameters: Int64 { frozen.reduce(0) { $0 + $1.numel } }
    public var trainableParameters: Int64 { trainable.reduce(0) { $0 + $1.numel } }
}

/// How `ckpt layers` reads a record; the raw value is the `style` of its JSON.
public enum LayerStyle: String, Sendable {
    /// Layers read from a YOLO model's module objects.
    case yolo
    /// Other module objects, grouped by key prefix.
    case modules
    /// A plain state dict, grouped by key prefix; parameters told from buffers by name.
    case stateDict = "state_dict"
}

/// The layer table of a checkpoint's weights.
public struct LayerTable: Sendable {
    public var file: String
    public var record: String?
    public var style: LayerStyle
    public var modelClass: String?
    public var rows: [LayerRow] = []
    public var parameters: Int64 = 0
    public var freeze: FreezeReport?

    static func share(_ n: Int64, _ total: Int64) -> String {
        total == 0 ? "0.0%" : String(format: "%.1f%%", Double(n) * 100 / Double(total))
    }

    /// The table for people, and under it the freeze summary and the frozen keys.
    public var table: String {
        var head = "\(file)" + (record.map { " (\($0)" + (modelClass.map { ": \($0)" } ?? "") + ")" } ?? "")
        head += ": \(rows.count) \(style == .yolo ? "layers" : "groups"), \(Figures.count(parameters)) parameters"
        var header: [String]
        if style == .yolo {
            header = ["#", "part", "from", "n", "params", "module", "arguments"]
        } else {
            header = ["prefix", "tensors", "params"] + (style == .modules ? ["module"] : [])
        }
        if freeze != nil { header.insert("frozen", at: header.count - (style == .stateDict ? 0 : 1)) }
        var rows: [[String]] = [header]
        for r in self.rows {
            var row: [String]
            if style == .yolo {
                row = [r.index.map(String.init) ?? "", r.part ?? "", r.from ?? "", r.repeats.map(String.init) ?? "",
                       String(r.parameters), r.module ?? "", r.arguments ?? ""]
            } else {
                row = [String(r.prefix.dropLast()), String(r.tensors), String(r.parameters)]
                    + (style == .modules ? [r.module ?? ""] : [])
            }
            if freeze != nil {
                let f = r.frozen == 0 ? "" : (r.frozen == r.parameters ? "yes" : "partly")
                row.insert(f, at: row.count - (style == .stateDict ? 0 : 1))
            }
            rows.append(row)
        }
        var out = head + "\n\n" + Figures.table(rows)
        if let f = freeze {
            let total = f.frozenParameters + f.trainableParameters
            let what = f.mode == .yolo
                ? "\(f.patterns.first ?? "")\(f.patterns.count > 1 ? " ... \(f.patterns.last!)" : "")"
                : f.patterns.joined(separator: " ")
            out += "\n\n\(f.mode == .trainable ? "trainable" : "freeze") \(what): "
                + "\(f.frozen.count) parameters frozen (\(Figures.count(f.frozenParameters)), \(Self.share(f.frozenParameters, total))), "
                + "\(f.trainable.count) trainable (\(Figures.count(f.trainableParameters)), \(Self.share(f.trainableParameters, total)))"
            if !f.frozen.isEmpty {
                out += "\n\n" + Figures.table([["frozen", "numel"]] + f.frozen.map { [$0.name, String($0.numel)] })
            }
        }
        return out
    }

    public var json: JSONValue {
        var o: [(String, JSONValue)] = [
            ("file", .string(file)), ("record", record.map { .string($0) } ?? .null), ("style", .string(style.rawValue)),
            ("class", modelClass.map { .string($0) } ?? .null), ("parameters", .int(parameters)),
            ("layers", .array(rows.map { r in
                var l: [(String, JSONValue)] = [("prefix", .string(r.prefix))]
                if let i = r.index { l.append(("index", .int(Int64(i)))) }
                if let p = r.part { l.append(("part", .string(p))) }
                if let f = r.from { l.append(("from", .string(f))) }
                if let n = r.repeats { l.append(("n", .int(Int64(n)))) }
                if let m = r.module { l.append(("module", .string(m))) }
                if let a = r.arguments { l.append(("arguments", .string(a))) }
                l += [("parameters", .int(r.parameters)), ("tensors", .int(Int64(r.tensors)))]
                if freeze != nil { l.append(("frozen_parameters", .int(r.frozen))) }
                return .object(l)
            })),
        ]
        if let f = freeze {
            let total = f.frozenParameters + f.trainableParameters
            o.append(("freeze", .object([
                ("mode", .string(f.mode.rawValue)),
                ("patterns", .array(f.patterns.map { .string($0) })),
                ("frozen", .array(f.frozen.map { .string($0.name) })),
                ("trainable", .array(f.trainable.map { .string($0.name) })),
                ("frozen_parameters", .int(f.frozenParameters)), ("trainable_parameters", .int(f.trainableParameters)),
                ("frozen_share", .double(total == 0 ? 0 : Double(f.frozenParameters) / Double(total))),
                ("trainable_share", .double(total == 0 ? 0 : Double(f.trainableParameters) / Double(total))),
            ])))
        }
        return .object(o)
    }
}

/// Buffers of a plain state dict, told by name (a state dict does not say which tensors are parameters).
let bufferNames: Set<String> = ["running_mean", "running_var", "num_batches_tracked", "anchors", "anchor_grid"]

/// Builds `ckpt layers`' table (``LayerTable``) of a record (default: the weights record). For YOLO models (a module
/// whose `model` is a Sequential of layers carrying `i`, `f`, `type`), one row a layer, with its repeats and part from
/// the model's yaml; otherwise one row per key prefix, `depth` module levels below the prefix all keys share
/// (1: `features.`, `classifier.`; 2: `features.0.`, `classifier.6.`). `freeze` says what to freeze (YOLOv5
/// layer indices, key prefixes, or all but key prefixes); a prefix that names no parameter is an error.
public struct LayersBuilder {
    /// The checkpoint read.
    public let checkpoint: Checkpoint
    /// The record whose layers are shown; nil for the framework's weights record.
    public var record: String?
    /// What to freeze, if anything.
    public var freeze: FreezeSpec?
    /// Module levels below the shared prefix that make a group (1 or more).
    public var depth: Int

    public init(checkpoint: Checkpoint, record: String? = nil, freeze: FreezeSpec? = nil, depth: Int = 1) {
        self.checkpoint = checkpoint
        self.record = record
        self.freeze = freeze
        self.depth = depth
    }

    private var graph: PickleGraph { checkpoint.graph }

    /// The table, with the freeze report when `freeze` is given.
    public func build() throws(CheckpointError) -> LayerTable {
        guard depth >= 1 else { throw .invalidOperation("--depth must be 1 or more, not \(depth)") }
        let (name, node) = try checkpoint.weights(record)
        let view = checkpoint.modelWeights(try graph.stateDict(node), recordNamed: record != nil).kept
        let isModule = graph.moduleState(node) != nil
        var table = LayerTable(file: checkpoint.path, record: name, style: isModule ? .modules : .stateDict)
        if isModule { table.modelClass = graph.className(node) }

        // Parameters, each once, in named_parameters order. A TorchScript module's tensors are not wrapped as
        // parameters: its classes declare which are. A module object shares a tied parameter as one object; a
        // state dict holds it under each name as views of one storage (same offset, shape and stride): the first
        // name counts, as named_parameters() yields it once.
        var seen = Set<NodeID>()
        var seenViews = Set<String>()
        var params: [(name: String, numel: Int64)] = []
        let scriptParameters = graph.scriptClasses.isEmpty ? nil : graph.scriptParameterTensors()
        for t in view {
            let isParam = scriptParameters.map { $0.contains(t.tensor.tensorNode) }
                ?? (isModule ? t.tensor.isParameter : !bufferNames.contains(String(t.name.split(separator: ".").last ?? "")))
            guard isParam, seen.insert(t.tensor.tensorNode).inserted else { continue }
            if !isModule {
                let v = "\(t.tensor.storage.key)|\(t.tensor.storageOffset)|\(t.tensor.shape)|\(t.tensor.stride)"
                guard seenViews.insert(v).inserted else { continue }
            }
            params.append((t.name, t.tensor.numel ?? 0))
        }
        table.parameters = params.reduce(0) { $0 + $1.numel }

        if isModule, depth == 1, let rows = yoloLayers(node) {
            table.style = .yolo
            table.rows = rows
        } else {
            table.rows = groups(view.map(\.name), depth: depth).map { LayerRow(prefix: $0) }
            if isModule {
                for (i, r) in table.rows.enumerated() {
                    table.rows[i].module = moduleClass(node, path: String(r.prefix.dropLast()))
                }
            }
        }
        for (i, r) in table.rows.enumerated() {
            table.rows[i].tensors = view.filter { Self.isUnder($0.name, r.prefix) }.count
            table.rows[i].parameters = params.filter { Self.isUnder($0.name, r.prefix) }.reduce(0) { $0 + $1.numel }
        }
        if let freeze {
            var f: FreezeReport
            let isFrozen: (String) -> Bool
            switch freeze {
            case .yoloLayers(let values):
                let indices = values.count == 1 ? Array(0..<max(values[0], 0)) : values
                f = FreezeReport(mode: freeze.mode, patterns: indices.map { "model.\($0)." })
                let patterns = f.patterns
                isFrozen = { name in patterns.contains { name.contains($0) } }
            case .prefixes(let given), .trainable(let given):
                let patterns = given.map { $0.hasSuffix(".") ? $0 : $0 + "." }
                let under = { (name: String) in patterns.contains { Self.isUnder(name, $0) } }
                for (p, g) in zip(patterns, given) where !params.contains(where: { Self.isUnder($0.name, p) }) {
                    throw .invalidOperation("no parameter is named \(p.dropLast()) or starts with \(p) (--\(freeze.mode.rawValue) \(g))")
                }
                f = FreezeReport(mode: freeze.mode, patterns: patterns)
                if case .trainable = freeze { isFrozen = { !under($0) } } else { isFrozen = under }
            }
            for p in params {
                if isFrozen(p.name) { f.frozen.append(p) } else { f.trainable.append(p) }
            }
            for (i, r) in table.rows.enumerated() {
                table.rows[i].frozen = f.frozen.filter { Self.isUnder($0.name, r.prefix) }.reduce(0) { $0 + $1.numel }
            }
            table.freeze = f
        }
        return table
    }

    /// Whether a key belongs to a group or prefix `p.`: it is `p` itself (a top-level parameter such as timm's
    /// `cls_token`) or starts with `p.`.
    static func isUnder(_ name: String, _ prefix: String) -> Bool {
        name.hasPrefix(prefix) || name.count == prefix.count - 1 && prefix.hasPrefix(name)
    }

    /// Key prefixes that split the keys: the first component, or more while every key shares them
    /// (`model.0.`, `model.1.` for a YOLO state dict; `module.conv1.` for a DataParallel one); `depth` 2 and more
    /// go that many module levels down, never into a tensor's own name (`classifier.6.`, `fc.`).
    func groups(_ names: [String], depth levels: Int = 1) -> [String] {
        let parts = names.map { $0.split(separator: ".", omittingEmptySubsequences: false).map(String.init) }
        var depth = 1
        while let first = parts.first, parts.allSatisfy({ $0.count > depth + 1 && $0[0..<depth] == first[0..<depth] }) {
            depth += 1
        }
        var out: [String] = []
        var seen = Set<String>()
        for p in parts {
            let g = p.prefix(max(min(depth + levels - 1, p.count - 1), depth)).joined(separator: ".") + "."
            if seen.insert(g).inserted { out.append(g) }
        }
        return out
    }

    /// The class of the submodule at a dotted path of a module object.
    func moduleClass(_ node: NodeID, path: String) -> String? {
        var n = node
        for part in path.split(separator: ".") {
            // A TorchScript module holds its submodules as attributes.
            guard let s = graph.moduleState(n), let mods = graph.scriptClass(n) != nil ? s : graph.lookup(s, "_modules"),
                  let next = graph.lookup(mods, String(part)) else { return nil }
            n = next
        }
        return graph.className(n)
    }

    /// The layers of a YOLO model read from its module objects, or nil when it is not one.
    func yoloLayers(_ node: NodeID) -> [LayerRow]? {
        guard let state = graph.moduleState(node), let mods = graph.lookup(state, "_modules"),
              let seq = graph.lookup(mods, "model"), let seqState = graph.moduleState(seq),
              let layers = graph.lookup(seqState, "_modules"), let entries = graph.dictEntries(layers), !entries.isEmpty
        else { return nil }
        // The yaml: backbone + head entries [from, number, module, args], and the depth multiple.
        let yaml = graph.lookup(state, "yaml")
        let backbone = yaml.flatMap { graph.lookup($0, "backbone") }.flatMap { graph.sequence($0) } ?? []
        let head = yaml.flatMap { graph.lookup($0, "head") }.flatMap { graph.sequence($0) } ?? []
        let specs = backbone + head
        var depth = 1.0
        if let y = yaml {
            if let d = graph.lookup(y, "depth_multiple").flatMap({ number($0) }) { depth = d }
            if let scales = graph.lookup(y, "scales"), let entries = graph.dictEntries(scales), !entries.isEmpty {
                let chosen = graph.lookup(y, "scale").flatMap { graph.string($0) }
                let e = entries.first { graph.keyText($0.key) == chosen } ?? entries[0]
                if let v = graph.sequence(e.value)?.first.flatMap({ number($0) }) { depth = v }
            }
        }
        var rows: [LayerRow] = []
        for (pos, e) in entries.enumerated() {
            guard let key = graph.keyText(e.key), let s = graph.moduleState(e.value),
                  let i = graph.lookup(s, "i").flatMap({ graph.int($0) }), let f = graph.lookup(s, "f")
            else { return nil }
            var r = LayerRow(prefix: "model.\(key).")
            r.index = Int(i)
            r.from = render(f)
            r.module = graph.lookup(s, "type").flatMap { graph.string($0) } ?? graph.className(e.value)
            if pos < specs.count, let spec = graph.sequence(specs[pos]), spec.count == 4 {
                if let n = number(spec[1]) {
                    r.repeats = n > 1 ? max(Int((n * depth).rounded(.toNearestOrEven)), 1) : Int(n)
                }
                r.arguments = render(spec[3])
                r.part = pos < backbone.count ? "backbone" : "head"
            }
            rows.append(r)
        }
        return rows
    }

    private func number(_ id: NodeID) -> Double? {
        switch graph[id] {
        case .int(let v): return Double(v)
        case .float(let d): return d
        default: return nil
        }
    }

    /// A small value as the yaml writes it: `-1`, `[-1, 6]`, `[None, 2, nearest]`.
    func render(_ id: NodeID, depth: Int = 0) -> String {
        guard depth < 8 else { return "..." }
        switch graph[id] {
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let v): return String(v)
        case .float(let d): return "\(d)"
        case .string(let s): return s
        case .tuple(let items), .list(let items):
            return "[" + items.map { render($0, depth: depth + 1) }.joined(separator: ", ") + "]"
        default: return "..."
        }
    }
}
