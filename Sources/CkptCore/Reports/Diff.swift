import Foundation

/// Options of `ckpt diff`.
public struct DiffOptions: Sendable {
    /// Compare only this record (in a file without records, its top level).
    public var record: String?
    /// Compare tensor values too (streamed, in float64).
    public var values = false
    /// Tolerances as `torch.allclose`: |a - b| <= atol + rtol * |b|.
    public var atol: Double = 0
    public var rtol: Double = 0
    /// Prefix renames applied to B's tensor names before pairing (``renamedForComparison(_:map:)``), so an
    /// export's or a wrapper's names line up with A's.
    public var map: [(old: String, new: String)] = []
    public init() {}
}

/// A top-level record that differs.
public struct RecordDifference: Sendable {
    public enum Change: String, Sendable { case added, removed, changed }
    public var name: String
    public var change: Change
    /// The value in A and in B, described (`5`, `None`, `DetectionModel`, `optimizer state`).
    public var a: String?
    public var b: String?
    /// Where inside the record the values differ (`opt.epochs: 300 -> 100`), the first few.
    public var details: [(path: String, a: String, b: String)] = []
    /// More differences exist than `details` holds.
    public var moreDetails = false
}

/// A tensor that differs: only on one side, or with another dtype, shape or values.
public struct TensorDifference: Sendable {
    /// The record both tensors are in (nil for a file without records).
    public var record: String?
    public var name: String
    public var a: (dtype: DType, shape: [Int64])?
    public var b: (dtype: DType, shape: [Int64])?
    /// What differs; the raw value is the text of the table's and the JSON's `changes`.
    public enum Change: String, Sendable {
        case onlyInA = "only in A"
        case onlyInB = "only in B"
        case dtype, shape, values
    }
    public var changes: [Change]
    /// With --values: elements compared, how many differ beyond the tolerance, the largest |a - b|
    /// (infinite when a NaN or an infinity meets another value; nil when compared as bytes).
    public var elements: Int64?
    public var differing: Int64?
    public var maxAbsDiff: Double?
    /// Why values were not compared (`float8_e4m3fn vs float32`).
    public var valuesNote: String?
}

/// One pair of tensor-bearing records compared key by key.
public struct ComparedRecord: Sendable {
    public var record: String?
    public var tensorsA: Int
    public var tensorsB: Int
    /// Names in both.
    public var common: Int
}

/// What `ckpt diff` found.
public struct CheckpointDiff: Sendable {
    public var a: String
    public var b: String
    public var options: DiffOptions
    public var records: [RecordDifference] = []
    public var tensors: [TensorDifference] = []
    public var compared: [ComparedRecord] = []
    /// Tensors whose values were compared, and the largest |a - b| among them (equal ones included).
    public var valuesCompared = 0
    public var largestAbsDiff: Double = 0
    public var notes: [String] = []
    /// One line for stderr per record (of A or B) whose state_dict view leaves tensors out (see ``ViewCoverage``):
    /// their dtypes and shapes are compared with the record's structure and, with --values, their values by path
    /// (``PickleGraph/allTensors(from:limits:)``'s names).
    public var viewNotes: [String] = []

    /// No record and no tensor differs.
    public var isEqual: Bool { records.isEmpty && tensors.isEmpty }
}

/// Formats a difference like `0.000488` or `1.2e-07`.
func figure(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d > 0 ? "inf" : "-inf" }
    return String(format: "%.4g", d)
}

extension CheckpointDiff {
    private var showRecordColumn: Bool { compared.count > 1 }

    /// The report for people: records, tensors, then a summary line.
    public var table: String {
        var out = ["A: \(a)", "B: \(b)"]
        if !records.isEmpty {
            var rows: [[String]] = [["record", "change", "A", "B"]]
            for r in records {
                rows.append([r.name, r.change.rawValue, r.a ?? "", r.b ?? ""])
                for d in r.details { rows.append(["  " + d.path, "", d.a, d.b]) }
                if r.moreDetails { rows.append(["  ...", "", "", ""]) }
            }
            out.append("")
            out.append(Figures.table(rows))
        }
        if !tensors.isEmpty {
            var header = ["tensor", "change", "A", "B"]
            if options.values { header.append("values") }
            if showRecordColumn { header.insert("record", at: 0) }
            var rows = [header]
            for t in tensors {
                var row = [t.name, t.changes.map(\.rawValue).joined(separator: ", "),
                           t.a.map { "\($0.dtype.rawValue) \(shapeText($0.shape))" } ?? "",
                           t.b.map { "\($0.dtype.rawValue) \(shapeText($0.shape))" } ?? ""]
                if options.values { row.append(valuesText(t)) }
                if showRecordColumn { row.insert(t.record ?? "", at: 0) }
                rows.append(row)
            }
            out.append("")
            out.append(Figures.table(rows))
        }
        out.append("")
        out += notes.map { "note: \($0)" }
        out.append(summary)
        return out.joined(separator: "\n")
    }

    private func valuesText(_ t: TensorDifference) -> String {
        if let n = t.valuesNote { return "not compared: \(n)" }
        guard let d = t.differing, let e = t.elements else { return "" }
        let m = t.maxAbsDiff.map { ", max |a-b| \(figure($0))" } ?? ""
        return d == 0 ? "equal\(toleranceText)\(m)" : "\(d) of \(e) differ\(m)"
    }

    private var toleranceText: String {
        options.atol == 0 && options.rtol == 0 ? "" : " within atol=\(figure(options.atol)) rtol=\(figure(options.rtol))"
    }

    /// `files differ: 4 records, 2 tensors` or `no differences: ...`.
    public var summary: String {
        let n = compared.reduce(0) { $0 + $1.common }
        func plural(_ n: Int, _ word: String) -> String { "\(n) \(word)\(n == 1 ? "" : "s")" }
        var what = "\(plural(n, "common tensor")) in \(plural(compared.count, "record"))"
        if options.values {
            what += "; values of \(valuesCompared) compared "
                + (toleranceText.isEmpty ? "exactly" : toleranceText.trimmingCharacters(in: .whitespaces))
            if valuesCompared > 0 { what += ", largest |a-b| \(figure(largestAbsDiff))" }
        } else {
            what += "; values not compared: add --values"
        }
        if isEqual { return "no differences\(options.values ? "" : " in names, dtypes and shapes") (\(what))" }
        var parts: [String] = []
        if !records.isEmpty { parts.append(plural(records.count, "record")) }
        if !tensors.isEmpty { parts.append(plural(tensors.count, "tensor")) }
        return "files differ: \(parts.joined(separator: ", ")) (\(what))"
    }

    public var json: JSONValue {
        func side(_ s: (dtype: DType, shape: [Int64])?) -> JSONValue {
            guard let s else { return .null }
            return .object([("dtype", .string(s.dtype.rawValue)), ("shape", .array(s.shape.map { .int($0) }))])
        }
        return .object([
            ("a", .string(a)), ("b", .string(b)), ("equal", .bool(isEqual)),
            ("values", .bool(options.values)), ("atol", .double(options.atol)), ("rtol", .double(options.rtol)),
            ("records", .array(records.map { r in
                .object([("name", .string(r.name)), ("change", .string(r.change.rawValue)),
                         ("a", r.a.map { .string($0) } ?? .null), ("b", r.b.map { .string($0) } ?? .null),
                         ("details", .array(r.details.map {
                             .object([("path", .string($0.path)), ("a", .string($0.a)), ("b", .string($0.b))])
                         })), ("more_details", .bool(r.moreDetails))])
            })),
            ("compared", .array(compared.map {
                .object([("record", $0.record.map { .string($0) } ?? .null), ("tensors_a", .int(Int64($0.tensorsA))),
                         ("tensors_b", .int(Int64($0.tensorsB))), ("common", .int(Int64($0.common)))])
            })),
            ("tensors", .array(tensors.map { t in
                var o: [(String, JSONValue)] = [("record", t.record.map { .string($0) } ?? .null), ("name", .string(t.name)),
                         ("changes", .array(t.changes.map { .string($0.rawValue) })), ("a", side(t.a)), ("b", side(t.b))]
                if let e = t.elements { o.append(("elements", .int(e))) }
                if let d = t.differing { o.append(("differing", .int(d))) }
                if t.elements != nil { o.append(("max_abs_diff", t.maxAbsDiff.map { .double($0) } ?? .null)) }
                if let n = t.valuesNote { o.append(("values_note", .string(n))) }
                return .object(o)
            })),
            ("values_compared", .int(Int64(valuesCompared))), ("largest_abs_diff", .double(largestAbsDiff)),
            ("notes", .array(notes.map { .string($0) })),
        ])
    }
}

/// Builds `ckpt diff`'s report (``CheckpointDiff``) of two checkpoints: top-level records (added, removed, changed;
/// the tensors inside them are left to the tensor comparison), then the state_dict view of every tensor-bearing record
/// both hold (tensors only in A or B, other dtype or shape), and with `options.values` every common tensor's values,
/// streamed in chunks and compared in float64 across dtypes. Reads only the pickles and, for values, storages in
/// bounded chunks.
public struct DiffBuilder {
    /// The two checkpoints compared, A and B.
    public let a: Checkpoint
    public let b: Checkpoint
    public var options: DiffOptions

    public init(a: Checkpoint, b: Checkpoint, options: DiffOptions = DiffOptions()) {
        self.a = a
        self.b = b
        self.options = options
    }

    /// The report. A ``FileError`` says which of the two files failed.
    public func build() throws(FileError) -> CheckpointDiff {
        var report = CheckpointDiff(a: a.path, b: b.path, options: options)
        // Which records to compare and which tensor-bearing pairs to compare key by key.
        var recordNames: [String] = []
        var pairs: [(String?, NodeID, NodeID)] = []
        let recsA = a.records, recsB = b.records
        if let r = options.record {
            let na = try a.attributing { () throws(CheckpointError) in try a.recordOrTop(r) }
            let nb = try b.attributing { () throws(CheckpointError) in try b.recordOrTop(r) }
            if !recsA.isEmpty && !recsB.isEmpty { recordNames = [r] }
            pairs = [(r, na, nb)]
        } else if !recsA.isEmpty && !recsB.isEmpty {
            recordNames = recsA.map(\.name) + recsB.map(\.name).filter { n in !recsA.contains { $0.name == n } }
            for ra in recsA {
                guard let rb = recsB.first(where: { $0.name == ra.name }),
                      a.graph[ra.node] != .none, b.graph[rb.node] != .none else { continue }
                let ta = try a.attributing { () throws(CheckpointError) in try a.graph.stateDict(ra.node) }
                let tb = try b.attributing { () throws(CheckpointError) in try b.graph.stateDict(rb.node) }
                if !ta.isEmpty || !tb.isEmpty { pairs.append((ra.name, ra.node, rb.node)) }
            }
        } else {
            let da = a.defaultRecord(), db = b.defaultRecord()
            if da.name != db.name {
                report.notes.append("comparing \(da.name.map { "record \($0)" } ?? "the top level") of A with "
                                    + "\(db.name.map { "record \($0)" } ?? "the top level") of B")
            }
            pairs = [(da.name == db.name ? da.name : nil, da.node, db.node)]
        }

        // Values of one pair of tensors, counted in the report's totals; "values" is a change when any differ.
        func compareTallied(_ x: TensorRef, _ y: TensorRef, name: String, into d: inout TensorDifference) throws(FileError) {
            try Self.compareValues(a, x, b, y, name: name, options, into: &d)
            if d.valuesNote == nil {
                report.valuesCompared += 1
                if let m = d.maxAbsDiff, !(m <= report.largestAbsDiff) { report.largestAbsDiff = m }
            }
            if let n = d.differing, n > 0 { d.changes.append(.values) }
        }

        // Tensors, pair by pair.
        var viewNodesA = Set<NodeID>(), viewNodesB = Set<NodeID>()
        var mapHits = [Int](repeating: 0, count: options.map.count)
        for (name, na, nb) in pairs {
            var ta = try a.attributing { () throws(CheckpointError) in try a.graph.stateDict(na) }
            var tb = try b.attributing { () throws(CheckpointError) in try b.graph.stateDict(nb) }
            for (i, t) in ta.enumerated() where t.name.isEmpty { ta[i].name = name ?? "" }  // a bare tensor record
            for (i, t) in tb.enumerated() where t.name.isEmpty { tb[i].name = name ?? "" }
            viewNodesA.formUnion(ta.map(\.tensor.tensorNode))
            viewNodesB.formUnion(tb.map(\.tensor.tensorNode))
            if !options.map.isEmpty {
                let renamed = try b.attributing { () throws(CheckpointError) in try renamedForComparison(tb, map: options.map) }
                tb = renamed.tensors
                for (i, h) in renamed.hits.enumerated() { mapHits[i] += h }
            }
            var inB: [String: TensorRef] = [:]
            for t in tb where inB[t.name] == nil { inB[t.name] = t.tensor }
            let namesA = Set(ta.map(\.name))
            report.compared.append(ComparedRecord(record: name, tensorsA: ta.count, tensorsB: tb.count,
                                                  common: namesA.filter { inB[$0] != nil }.count))
            for t in ta {
                let x = t.tensor
                guard let y = inB[t.name] else {
                    report.tensors.append(TensorDifference(record: name, name: t.name, a: (x.dtype, x.shape), b: nil,
                                                           changes: [.onlyInA]))
                    continue
                }
                var d = TensorDifference(record: name, name: t.name, a: (x.dtype, x.shape), b: (y.dtype, y.shape), changes: [])
                if x.dtype != y.dtype { d.changes.append(.dtype) }
                if x.shape != y.shape { d.changes.append(.shape) }
                if options.values && x.shape == y.shape { try compareTallied(x, y, name: t.name, into: &d) }
                if !d.changes.isEmpty { report.tensors.append(d) }
            }
            for t in tb where !namesA.contains(t.name) {
                report.tensors.append(TensorDifference(record: name, name: t.name, a: nil, b: (t.tensor.dtype, t.tensor.shape),
                                                       changes: [.onlyInB]))
            }
        }

        for (i, m) in options.map.enumerated() where mapHits[i] == 0 {
            report.notes.append("--map \(m.old)=\(m.new) renames no tensor of B")
        }

        // What the views leave out, said per file and record.
        func viewNote(_ c: Checkpoint, _ node: NodeID, _ name: String?) throws(FileError) {
            guard c.graph[node] != .none else { return }
            let cov = try c.attributing { () throws(CheckpointError) -> ViewCoverage in
                c.graph.coverage(of: node, record: name, shown: try c.graph.stateDictTensors(node))
            }
            guard !cov.isComplete else { return }
            report.viewNotes.append("note: \(c.path): \(cov.missing.count) tensors are not in the state_dict view of "
                + "'\(name ?? c.path)'" + (options.values ? " (their values are compared by path)" : "") + "; see keys --all")
        }
        var sides: [(String?, NodeID?, NodeID?)] = pairs.map { ($0.0, $0.1, $0.2) }
        if !recordNames.isEmpty {
            sides = recordNames.map { name in
                (name, recsA.first(where: { $0.name == name })?.node ?? (try? a.record(named: name)),
                 recsB.first(where: { $0.name == name })?.node ?? (try? b.record(named: name)))
            }
        }
        for (name, na, nb) in sides {
            if let na { try viewNote(a, na, name) }
            if let nb { try viewNote(b, nb, name) }
        }
        // With --values, the values of tensors outside the views, paired by their path in the record (their dtypes
        // and shapes are the structure comparison's, below).
        if options.values {
            func outside(_ c: Checkpoint, _ node: NodeID) throws(FileError) -> [NamedTensor] {
                try c.attributing { () throws(CheckpointError) -> [NamedTensor] in
                    let shown = Set(try c.graph.stateDictTensors(node).map(\.tensorNode))
                    return try c.graph.allTensors(from: node).filter { !shown.contains($0.tensor.tensorNode) }
                }
            }
            for case let (name, na?, nb?) in sides where a.graph[na] != .none && b.graph[nb] != .none {
                let oa = try outside(a, na), ob = try outside(b, nb)
                var inB: [String: TensorRef] = [:]
                for t in ob where inB[t.name] == nil { inB[t.name] = t.tensor }
                for t in oa {
                    guard let y = inB[t.name], y.shape == t.tensor.shape else { continue }
                    let x = t.tensor
                    var d = TensorDifference(record: name, name: t.name, a: (x.dtype, x.shape), b: (y.dtype, y.shape),
                                             changes: [])
                    try compareTallied(x, y, name: t.name, into: &d)
                    if !d.changes.isEmpty { report.tensors.append(d) }
                }
            }
        }

        // Records: the structure around the tensors.
        var walker = StructureDiff(ga: a.graph, gb: b.graph, skipA: viewNodesA, skipB: viewNodesB)
        for name in recordNames {
            let na = recsA.first { $0.name == name }?.node ?? (options.record != nil ? try? a.record(named: name) : nil)
            let nb = recsB.first { $0.name == name }?.node ?? (options.record != nil ? try? b.record(named: name) : nil)
            switch (na, nb) {
            case (let x?, nil):
                report.records.append(RecordDifference(name: name, change: .removed, a: walker.describe(a.graph, x), b: nil))
            case (nil, let y?):
                report.records.append(RecordDifference(name: name, change: .added, a: nil, b: walker.describe(b.graph, y)))
            case (let x?, let y?):
                walker.found = []
                walker.more = false
                walker.compare(x, y, path: name, depth: 0)
                guard !walker.found.isEmpty else { continue }
                var r = RecordDifference(name: name, change: .changed, a: walker.describe(a.graph, x), b: walker.describe(b.graph, y))
                if !(walker.found.count == 1 && walker.found[0].path == name) {
                    r.details = walker.found
                    r.moreDetails = walker.more
                }
                report.records.append(r)
            default:
                break
            }
        }
        return report
    }

    /// Streams both tensors' elements (any strides) in chunks and compares them in float64.
    static func compareValues(_ a: Checkpoint, _ x: TensorRef, _ b: Checkpoint, _ y: TensorRef, name: String,
                              _ options: DiffOptions, into d: inout TensorDifference) throws(FileError)
    {
        let ca = x.dtype.realComponents, cb = y.dtype.realComponents
        let asBytes = ca == nil || cb == nil
        if asBytes && x.dtype != y.dtype {
            d.valuesNote = "\(x.dtype.rawValue) vs \(y.dtype.rawValue)"
            return
        }
        if ca != cb && !asBytes {
            d.valuesNote = "\(x.dtype.rawValue) vs \(y.dtype.rawValue) (complex and real)"
            return
        }
        func reader(_ c: Checkpoint, _ t: TensorRef) throws(FileError) -> TensorElementReader {
            try c.attributing { () throws(CheckpointError) -> TensorElementReader in
                do throws(TensorCheckError) { try t.check(name: name, recordBytes: c.storageRecordBytes(t.storage.key)) } catch { throw .tensor(error) }
                return try TensorElementReader(c, storageKey: t.storage.key, itemSize: t.dtype.itemSize, view: StorageView(t))
            }
        }
        let ra = try reader(a, x), rb = try reader(b, y)
        let chunk = 1 << 16
        let bufA = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk * x.dtype.itemSize, alignment: 64)
        let bufB = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk * y.dtype.itemSize, alignment: 64)
        defer { bufA.deallocate(); bufB.deallocate() }
        var da: [Double] = [], db: [Double] = []
        da.reserveCapacity(chunk * 2)
        db.reserveCapacity(chunk * 2)
        var elements: Int64 = 0, differing: Int64 = 0
        var maxAbs: Double = 0
        let k = ca ?? 1
        while true {
            let na = try a.attributing { () throws(CheckpointError) in try ra.read(into: bufA) }
            let nb = try b.attributing { () throws(CheckpointError) in try rb.read(into: bufB) }
            let n = na / x.dtype.itemSize
            guard n > 0, n == nb / y.dtype.itemSize else { break }
            elements += Int64(n)
            let pa = UnsafeRawBufferPointer(rebasing: bufA[0..<na]), pb = UnsafeRawBufferPointer(rebasing: bufB[0..<nb])
            if x.dtype == y.dtype && memcmp(pa.baseAddress!, pb.baseAddress!, na) == 0 { continue }
            if asBytes {
                let size = x.dtype.itemSize
                for i in 0..<n where memcmp(pa.baseAddress! + i * size, pb.baseAddress! + i * size, size) != 0 {
                    differing += 1
                }
                continue
            }
            da.removeAll(keepingCapacity: true)
            db.removeAll(keepingCapacity: true)
            x.dtype.appendDoubles(pa, to: &da)
            y.dtype.appendDoubles(pb, to: &db)
            for i in 0..<n {
                let (same, diff) = k == 1
                    ? close(da[i], db[i], options)
                    : closeComplex(da[2 * i], da[2 * i + 1], db[2 * i], db[2 * i + 1], options)
                if !same { differing += 1 }
                if !(diff <= maxAbs) { maxAbs = diff }
            }
        }
        d.elements = elements
        d.differing = differing
        d.maxAbsDiff = asBytes ? nil : maxAbs
    }

    /// torch.allclose's rule for one pair, NaN equal to NaN; returns whether they are close and |a - b|
    /// (infinite when a non-finite value meets another value).
    static func close(_ x: Double, _ y: Double, _ o: DiffOptions) -> (Bool, Double) {
        if x == y || (x.isNaN && y.isNaN) { return (true, 0) }
        guard x.isFinite && y.isFinite else { return (false, .infinity) }
        let d = abs(x - y)
        return (d <= o.atol + o.rtol * abs(y), d)
    }

    static func closeComplex(_ xr: Double, _ xi: Double, _ yr: Double, _ yi: Double, _ o: DiffOptions) -> (Bool, Double) {
        if (xr == yr && xi == yi) || ((xr.isNaN || xi.isNaN) && (yr.isNaN || yi.isNaN)) { return (true, 0) }
        guard xr.isFinite && xi.isFinite && yr.isFinite && yi.isFinite else { return (false, .infinity) }
        let d = (xr - yr).magnitude.hypot((xi - yi).magnitude)
        return (d <= o.atol + o.rtol * yr.magnitude.hypot(yi.magnitude), d)
    }
}

extension Double {
    fileprivate func hypot(_ y: Double) -> Double { Foundation.hypot(self, y) }
}

/// Walks two values side by side and lists where they differ, with tensors of the state_dict views left
/// out (the tensor comparison covers them) and other tensors compared by dtype and shape.
struct StructureDiff {
    let ga: PickleGraph
    let gb: PickleGraph
    let skipA: Set<NodeID>
    let skipB: Set<NodeID>
    var found: [(path: String, a: String, b: String)] = []
    var more = false
    var visited = Set<[Int]>()
    static let limit = 20
    static let maxDepth = 200

    init(ga: PickleGraph, gb: PickleGraph, skipA: Set<NodeID>, skipB: Set<NodeID>) {
        self.ga = ga
        self.gb = gb
        self.skipA = skipA
        self.skipB = skipB
    }

    mutating func add(_ path: String, _ a: String, _ b: String) {
        if found.count < Self.limit { found.append((path, a, b)) } else { more = true }
    }

    /// A value in a few words: `5`, `None`, `DetectionModel`, `optimizer state`, `dict of 7`, `float16 [3]`.
    func describe(_ g: PickleGraph, _ id: NodeID) -> String {
        if let t = (try? g.tensor(id)) ?? nil { return "\(t.dtype.rawValue) \(shapeText(t.shape))" }
        if let (shape, values) = g.numpyValue(id) {
            return values.count == 1 ? figure(values[0]) : "array \(shapeText(shape.map(Int64.init)))"
        }
        switch g[id] {
        case .none: return "None"
        case .bool(let v): return v ? "True" : "False"
        case .int(let v): return String(v)
        case .bigInt(let b): return BigInt.decimal(littleEndian: b)
        case .float(let d): return "\(d)"
        case .string(let s): return s.count > 40 ? String(s.prefix(37)) + "..." : s
        case .bytes(let b), .bytearray(let b): return "\(b.count) bytes"
        case .tuple(let items): return "tuple of \(items.count)"
        case .list(let items): return "list of \(items.count)"
        case .set(let items), .frozenset(let items): return "set of \(items.count)"
        case .global(let m, let n): return "\(m).\(n)"
        default: break
        }
        if g.moduleState(id) != nil, let c = g.className(id) { return c.split(separator: ".").last.map(String.init) ?? c }
        if g.isOptimizerState(id) { return "optimizer state" }
        if let entries = g.dictEntries(id) {
            if !entries.isEmpty, entries.allSatisfy({ ((try? g.tensor($0.value)) ?? nil) != nil }) {
                return "state dict (\(entries.count) tensors)"
            }
            return "dict of \(entries.count)"
        }
        if let c = g.className(id) { return c.split(separator: ".").last.map(String.init) ?? c }
        return "value"
    }

    mutating func compare(_ a: NodeID, _ b: NodeID, path: String, depth: Int) {
        guard depth < Self.maxDepth, !more else { return }
        guard visited.insert([a.index, b.index]).inserted else { return }
        let ta = (try? ga.tensor(a)) ?? nil, tb = (try? gb.tensor(b)) ?? nil
        if ta != nil || tb != nil {
            guard let x = ta, let y = tb else { return add(path, describe(ga, a), describe(gb, b)) }
            if skipA.contains(x.tensorNode) && skipB.contains(y.tensorNode) { return }
            if x.dtype != y.dtype || x.shape != y.shape { add(path, describe(ga, a), describe(gb, b)) }
            return
        }
        let va = ga.numpyValue(a), vb = gb.numpyValue(b)
        if va != nil || vb != nil {
            guard let x = va, let y = vb, x.shape == y.shape, x.values.count == y.values.count,
                  zip(x.values, y.values).allSatisfy({ $0 == $1 || ($0.isNaN && $1.isNaN) })
            else { return add(path, describe(ga, a), describe(gb, b)) }
            return
        }
        func join(_ k: String) -> String { path.isEmpty ? k : path + "." + k }
        switch (ga[a], gb[b]) {
        case (.float(let x), .float(let y)):
            if !(x == y || (x.isNaN && y.isNaN)) || x.sign != y.sign { add(path, describe(ga, a), describe(gb, b)) }
        case (.tuple(let x), .tuple(let y)), (.list(let x), .list(let y)), (.set(let x), .set(let y)),
             (.frozenset(let x), .frozenset(let y)):
            guard x.count == y.count else { return add(path, describe(ga, a), describe(gb, b)) }
            for (i, (p, q)) in zip(x, y).enumerated() { compare(p, q, path: join(String(i)), depth: depth + 1) }
        case (.dict, .dict):
            compareEntries(ga.dictEntries(a) ?? [], gb.dictEntries(b) ?? [], path: path, depth: depth)
        case (.persistent(let p), .persistent(let q)):
            compare(p, q, path: path, depth: depth + 1)
        case (.object(let x), .object(let y)):
            guard ga.globalName(x.callable) == gb.globalName(y.callable), x.construction == y.construction else {
                return add(path, describe(ga, a), describe(gb, b))
            }
            // A dict type's entries may be its constructor's argument (Python 2) or SETITEMS: compare the entries.
            if let ea = ga.dictEntries(a), let eb = gb.dictEntries(b) {
                compareEntries(ea, eb, path: path, depth: depth)
                if let p = x.state, let q = y.state { compare(p, q, path: path, depth: depth + 1) }
                else if (x.state == nil) != (y.state == nil) { add(path, describe(ga, a), describe(gb, b)) }
                return
            }
            compare(x.args, y.args, path: path, depth: depth + 1)
            if let p = x.kwargs, let q = y.kwargs { compare(p, q, path: path, depth: depth + 1) }
            if x.listItems.count != y.listItems.count {
                add(path, "\(x.listItems.count) items", "\(y.listItems.count) items")
            } else {
                for (i, (p, q)) in zip(x.listItems, y.listItems).enumerated() {
                    compare(p, q, path: join(String(i)), depth: depth + 1)
                }
            }
            compareEntries(x.dictItems, y.dictItems, path: path, depth: depth)
            switch (x.state, y.state) {
            case (nil, nil): break
            case (let p?, let q?):
                if let ea = ga.dictEntries(p), let eb = gb.dictEntries(q) {
                    compareEntries(ea, eb, path: path, depth: depth, skippingModuleLevels: true)
                } else {
                    compare(p, q, path: path, depth: depth + 1)
                }
            default: add(path, describe(ga, a), describe(gb, b))
            }
        default:
            if ga[a] != gb[b] { add(path, describe(ga, a), describe(gb, b)) }
        }
    }

    /// Compares dict entries by key (text keys; others by position). Module bookkeeping levels
    /// (`_modules`, `_parameters`, `_buffers`) add nothing to paths, as in state_dict names.
    mutating func compareEntries(_ ea: [DictEntry], _ eb: [DictEntry], path: String, depth: Int,
                                 skippingModuleLevels: Bool = false)
    {
        func key(_ g: PickleGraph, _ e: DictEntry, _ i: Int) -> String { g.keyText(e.key) ?? "#\(i)" }
        let keysB = Dictionary(eb.enumerated().map { (key(gb, $1, $0), $1.value) }, uniquingKeysWith: { x, _ in x })
        var seen = Set<String>()
        for (i, e) in ea.enumerated() {
            let k = key(ga, e, i)
            seen.insert(k)
            let sub = skippingModuleLevels && ["_modules", "_parameters", "_buffers"].contains(k)
                ? path : (path.isEmpty ? k : path + "." + k)
            guard let other = keysB[k] else { add(sub, describe(ga, e.value), "absent"); continue }
            compare(e.value, other, path: sub, depth: depth + 1)
        }
        for (i, e) in eb.enumerated() where !seen.contains(key(gb, e, i)) {
            let k = key(gb, e, i)
            add(path.isEmpty ? k : path + "." + k, "absent", describe(gb, e.value))
        }
    }
}
