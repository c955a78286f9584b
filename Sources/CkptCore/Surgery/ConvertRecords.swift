/// The records `ckpt convert` carries beside the weights into a `.safetensors` file's `__metadata__`, and restores from
/// it when converting back to a torch file.
///
/// Which records: every top-level record of the input other than the weights record converted whose value is plain
/// data (None, bool, int, float, str, and lists, tuples, dicts and `OrderedDict`s of those, as `json.dumps` writes
/// them), except the framework's training state (the records `ckpt strip` clears or removes: ``FrameworkConvention``).
/// A record holding a tensor or any other object (a numpy scalar, a `PosixPath`, a `Namespace`), a float NaN or
/// infinity (not JSON), a dict key other than a str or an int, a circular value, or a name already taken in
/// `__metadata__` (`format`, an alias) is not carried and is listed in the report with why.
///
/// How the entries are told apart: safetensors metadata is str -> str. `format` and the alias entries keep their form
/// (`"alias": "kept tensor"`); each carried record is an entry under its record name whose value is the record as
/// compact JSON (`"epoch": "5"`, `"date": "\"2024-05-01\""`, `"opt": "{...}"`); two more entries say which entries
/// those are: `ckpt.records` (a JSON list of the records in their order, the weights record included) and
/// `ckpt.weights` (the weights record's name). A file without `ckpt.records` has no record entries: it converts back
/// to the bare state dict exactly as before.
///
/// JSON is lossy in two ways `json.dumps` is too: a tuple comes back as a list, an int dict key as a str; the report
/// says so for each record it concerns.
public struct CarriedRecords: Sendable {
    /// The weights record's name in the output dict (`model`, `state_dict`).
    public var weights: String
    /// The records carried, in the input's order: name and JSON value.
    public var records: [(name: String, value: JSONValue)]
    /// Where the weights go among them (the weights record's place in the input).
    public var weightsIndex: Int
    /// Records not carried, each with why.
    public var leftOut: [(name: String, why: String)]
    /// Records whose JSON is not exactly the value (tuples as lists, int keys as strings), with what changed.
    public var lossy: [(name: String, what: String)]

    /// The `__metadata__` key listing the record entries (a JSON list of names, the weights record included).
    public static let recordsKey = "ckpt.records"
    /// The `__metadata__` key naming the weights record.
    public static let weightsKey = "ckpt.weights"

    /// The names in output order, the weights record at its place.
    var order: [String] {
        var names = records.map(\.name)
        names.insert(weights, at: min(weightsIndex, names.count))
        return names
    }

    /// The metadata entries for these records, after `taken` (format and aliases). A record whose name is taken is
    /// moved to ``leftOut``. Empty when no record is carried.
    mutating func metadataEntries(after taken: [(key: String, value: String)]) -> [(key: String, value: String)] {
        let used = Set(taken.map(\.key))
        guard !used.contains(Self.recordsKey), !used.contains(Self.weightsKey) else {
            leftOut += records.map { ($0.name, "\(Self.recordsKey) or \(Self.weightsKey) is a tensor alias in __metadata__") }
            records = []
            return []
        }
        var kept: [(name: String, value: JSONValue)] = []
        let before = weightsIndex
        for (i, r) in records.enumerated() {
            if used.contains(r.name) || r.name == Self.recordsKey || r.name == Self.weightsKey {
                leftOut.append((r.name, "its name is taken in __metadata__ (format or a tensor alias)"))
                if i < before { weightsIndex -= 1 }
            } else {
                kept.append(r)
            }
        }
        records = kept
        guard !records.isEmpty else { return [] }
        return records.map { ($0.name, $0.value.compactSerdeText()) }
            + [(Self.recordsKey, JSONValue.array(order.map { .string($0) }).compactSerdeText()), (Self.weightsKey, weights)]
    }

    /// Reads the record entries of a safetensors `__metadata__`. nil when it has none (no `ckpt.records`); throws,
    /// naming the entry, when they are malformed.
    static func read(metadata: [(key: String, value: String)]) throws(CheckpointError) -> CarriedRecords? {
        func entry(_ k: String) -> String? { metadata.first { $0.key == k }?.value }
        guard let list = entry(recordsKey) else { return nil }
        func bad(_ why: String) -> CheckpointError { .invalidOperation("__metadata__ \(recordsKey): \(why)") }
        guard let weights = entry(weightsKey) else { throw bad("\(weightsKey) is missing") }
        guard case .array(let items)? = try? JSONParser.parse(Array(list.utf8)) else { throw bad("not a JSON list") }
        var names: [String] = []
        for case .string(let s) in items { names.append(s) }
        guard names.count == items.count, Set(names).count == names.count else { throw bad("not a list of distinct names") }
        guard let at = names.firstIndex(of: weights) else { throw bad("does not list \(weightsKey) '\(weights)'") }
        var records: [(name: String, value: JSONValue)] = []
        for n in names where n != weights {
            guard let text = entry(n) else { throw bad("lists '\(n)', which has no entry") }
            do { records.append((n, try JSONParser.parse(Array(text.utf8)))) } catch {
                throw .invalidOperation("__metadata__ entry '\(n)' is not JSON: \(error)")
            }
        }
        return CarriedRecords(weights: weights, records: records, weightsIndex: at, leftOut: [], lossy: [])
    }

    /// The torch file's root: a dict of the records, restored as `json.loads` gives them, and `weights` at its place.
    func restore(weights weightsNode: NodeID, into g: inout PickleGraph) -> NodeID {
        var entries = records.map { DictEntry(key: g.add(.string($0.name)), value: PlainJSON.node($0.value, into: &g)) }
        entries.insert(DictEntry(key: g.add(.string(weights)), value: weightsNode), at: min(weightsIndex, entries.count))
        return g.add(.dict(entries))
    }
}

extension Checkpoint {
    /// The records `convert` carries beside the weights record `weights` (see ``CarriedRecords``): from a
    /// safetensors input's `__metadata__` (written by ckpt), else from the top-level records of a torch file. nil when
    /// there are none to carry or leave out (the weights are the whole file).
    func carriedRecords(weights: String?) throws(CheckpointError) -> CarriedRecords? {
        if containerFormat == .safetensors { return try CarriedRecords.read(metadata: metadata) }
        guard let weights, !isStateDict(graph.root), let entries = graph.dictEntries(graph.root) else { return nil }
        guard let at = entries.firstIndex(where: { graph.string($0.key) == weights }) else {
            // Weights inside a record (`--record extra_state.ema`): the output has no place for records beside them.
            return CarriedRecords(weights: weights, records: [], weightsIndex: 0,
                                  leftOut: entries.map { (graph.keyText($0.key) ?? "?", "the weights converted are not a top-level record") },
                                  lossy: [])
        }
        let training = Set(conventions.trainingState)
        var out = CarriedRecords(weights: weights, records: [], weightsIndex: 0, leftOut: [], lossy: [])
        // Values weights_only refuses become plain data first, by strip --state-dict's table (``PlainDataConverter``),
        // so that a record such as Lightning's omegaconf hyper_parameters travels as the dict it converts to.
        var plain = PlainDataConverter(graph, dropUnconvertible: false)
        for (i, e) in entries.enumerated() where i != at {
            guard let name = graph.string(e.key) else {
                out.leftOut.append((graph.keyText(e.key) ?? "?", "its key is not a string"))
                continue
            }
            if training.contains(name) || conventions.keepOnly.map({ !$0.contains(name) }) == true {
                out.leftOut.append((name, "training state in the \(conventions.id) conventions"))
                continue
            }
            let (converted, refused) = (plain.conversions.count, plain.unconvertible.count)
            try? plain.convert(from: e.value, path: name)
            if plain.unconvertible.count > refused {
                let v = plain.unconvertible[refused]
                out.leftOut.append((name, "\(v.path): \(v.from) cannot be made plain data (\(v.to))"))
                continue
            }
            do {
                let (json, lossy) = try PlainJSON.encode(plain.graph, e.value, path: name)
                out.records.append((name, json))
                if i < at { out.weightsIndex = out.records.count }
                let made = plain.conversions[converted...].map {
                    ($0.path == name ? "" : "\($0.path): ") + "\($0.from) -> \($0.to)"
                }
                if !(made + lossy).isEmpty { out.lossy.append((name, (made + lossy).joined(separator: ", "))) }
            } catch {
                out.leftOut.append((name, error.reason))
            }
        }
        return out
    }
}

/// Plain data of a pickle graph as JSON, as `json.dumps` writes it, and back as `json.loads` reads it.
enum PlainJSON {
    /// Why a value is not plain data.
    struct NotPlain: Error { var reason: String }

    /// Deepest nesting written: the JSON parser reading it back allows 64 levels.
    static let maxDepth = 60
    /// Most values (nodes, shared ones counted at each use) in one record's JSON.
    static let maxValues = 1_000_000

    /// The JSON of a plain value, and what JSON changes in it (`tuples become lists`, `int keys become strings`).
    static func encode(_ g: PickleGraph, _ id: NodeID, path: String) throws(NotPlain) -> (JSONValue, [String]) {
        // Reasons name where in the record a value is (`opt.save_dir: ...`), not the record itself again.
        func at(_ p: String) -> String { p == path ? "" : p + ": " }
        var budget = maxValues
        var open = Set<NodeID>()
        var lossy: [String] = []
        func note(_ s: String) { if !lossy.contains(s) { lossy.append(s) } }
        func value(_ id: NodeID, _ path: String, _ depth: Int) throws(NotPlain) -> JSONValue {
            budget -= 1
            guard budget >= 0 else { throw NotPlain(reason: "more than \(maxValues) values") }
            guard depth <= maxDepth else { throw NotPlain(reason: "\(at(path))nested more than \(maxDepth) levels") }
            switch g[id] {
            case .none: return .null
            case .bool(let b): return .bool(b)
            case .int(let v): return .int(v)
            case .bigInt(let b):
                guard b.count <= BigInt.maxDecimalBytes else { throw NotPlain(reason: "\(at(path))an int too large to write") }
                return .bigInt(BigInt.decimal(littleEndian: b))
            case .float(let d):
                guard d.isFinite else { throw NotPlain(reason: "\(at(path))\(d), which JSON cannot hold") }
                return .double(d)
            case .string(let s): return .string(s)
            case .tuple(let items), .list(let items):
                if case .tuple = g[id] { note("tuples become lists") }
                guard open.insert(id).inserted else { throw NotPlain(reason: "\(at(path))a circular reference") }
                defer { open.remove(id) }
                var out: [JSONValue] = []
                for (i, item) in items.enumerated() { out.append(try value(item, "\(path).\(i)", depth + 1)) }
                return .array(out)
            default:
                if (try? g.tensor(id)) != nil { throw NotPlain(reason: "holds tensors" + (at(path).isEmpty ? "" : " (\(path))")) }
                guard let entries = plainDictEntries(g, id) else { throw NotPlain(reason: "\(at(path))\(kind(g, id)) is not plain data") }
                guard open.insert(id).inserted else { throw NotPlain(reason: "\(at(path))a circular reference") }
                defer { open.remove(id) }
                var out: [(String, JSONValue)] = []
                var seen = Set<String>()
                for e in entries {
                    let key: String
                    switch g[e.key] {
                    case .string(let s): key = s
                    case .int(let v): key = String(v); note("int keys become strings")
                    default: throw NotPlain(reason: "\(at(path))a dict key that is \(kind(g, e.key)), not a str or an int")
                    }
                    guard seen.insert(key).inserted else { throw NotPlain(reason: "\(at(path))two keys are one JSON key '\(key)'") }
                    out.append((key, try value(e.value, path + "." + key, depth + 1)))
                }
                return .object(out)
            }
        }
        let json = try value(id, path, 0)
        return (json, lossy)
    }

    /// The entries of a `dict` or an `OrderedDict` with nothing else built onto it; nil for anything else.
    private static func plainDictEntries(_ g: PickleGraph, _ id: NodeID) -> [DictEntry]? {
        switch g[id] {
        case .dict(let entries): return entries
        case .object(let o):
            guard ["collections.OrderedDict", "builtins.dict", "__builtin__.dict"].contains(g.globalName(o.callable) ?? ""),
                  o.state == nil, o.listItems.isEmpty, o.kwargs == nil, g.dictConstructorProblem(id) == nil
            else { return nil }
            return g.dictEntries(id)
        default: return nil
        }
    }

    /// What a value is, for a reason: its class, or its pickle type.
    static func kind(_ g: PickleGraph, _ id: NodeID) -> String {
        switch g[id] {
        case .none: "None"
        case .bool: "a bool"
        case .int, .bigInt: "an int"
        case .float: "a float"
        case .string: "a str"
        case .bytes: "bytes"
        case .bytearray: "a bytearray"
        case .tuple: "a tuple"
        case .list: "a list"
        case .dict: "a dict"
        case .set: "a set"
        case .frozenset: "a frozenset"
        case .global(let m, let n): "a reference to \(m).\(n)"
        case .persistent: "a storage"
        case .object(let o): g.globalName(o.callable) ?? "an object"
        }
    }

    /// The node of a JSON value as `json.loads` gives it: null None, numbers int or float, arrays lists, objects dicts.
    static func node(_ v: JSONValue, into g: inout PickleGraph) -> NodeID {
        switch v {
        case .null: return g.add(.none)
        case .bool(let b): return g.add(.bool(b))
        case .int(let i): return g.add(.int(i))
        case .bigInt(let s): return g.add(BigInt.littleEndianBytes(decimal: s).map { BigInt.node(littleEndian: $0) } ?? .string(s))
        case .double(let d): return g.add(.float(d))
        case .string(let s): return g.add(.string(s))
        case .array(let items):
            var ids: [NodeID] = []
            for item in items { ids.append(node(item, into: &g)) }
            return g.add(.list(ids))
        case .object(let pairs):
            var entries: [DictEntry] = []
            for (k, item) in pairs { entries.append(DictEntry(key: g.add(.string(k)), value: node(item, into: &g))) }
            return g.add(.dict(entries))
        }
    }
}
