import Foundation

/// One (global, use) pair over a whole file, as `ckpt scan` lists it. One global spelled two ways, or used
/// two ways, is two rows.
public struct GlobalReport: Sendable, Equatable {
    /// `module.name` as written in the pickle, or `<computed by STACK_GLOBAL at byte N>`.
    public var name: String
    /// The module as written (empty for a computed row).
    public var module: String
    /// How the pickle uses it.
    public var use: GlobalUse
    /// `getattr` for an attribute the pickle reaches by calling getattr, nil for a name it spells out.
    public var via: String?
    /// How often it is used this way (pushes, for `referenced`) over every pickle of the file.
    public var count: Int
    public var verdict: GlobalVerdict
    /// The pickle it first appears in, and where.
    public var pickle: String
    public var offset: Int
}

/// What `ckpt scan` reports: every global the file's pickles name, with how they use it, classed, and whether
/// `torch.load(weights_only=True)` would load the file as it stands.
public struct ScanReport: Sendable {
    public var file: String
    /// `torch zip`, `torch legacy`, or `pickle stream` (a file that is not a checkpoint ckpt can read).
    public var format: String
    /// Each pickle scanned, in the order torch unpickles them.
    public var pickles: [PickleScan]
    /// (global, use) rows, most dangerous first, then in order of first use.
    public var globals: [GlobalReport]
    /// Why the file cannot be read as a checkpoint, when it cannot (scan still lists what its pickles name).
    public var readError: CheckpointError?
    /// Whether `torch.load(weights_only=True)` loads the file, and if not, the first reason (a note on how it
    /// loads, when it loads a file without unpickling it).
    public var weightsOnlyLoads: Bool
    public var weightsOnlyReason: String?
    /// Which container torch.load reads and the other readings of the bytes (``ContainerAudit``); nil when not
    /// audited (a report built from pickle scans alone).
    public var container: ContainerAudit? = nil

    /// Whether torch could read the file differently from another reader (see ``ContainerAudit``).
    public var isAmbiguous: Bool { container?.isAmbiguous ?? false }

    /// The dangerous rows.
    public var dangerous: [GlobalReport] { globals.filter { $0.verdict.globalClass == .dangerous } }
    /// Whether anything in the file is dangerous to unpickle.
    public var isDangerous: Bool { !dangerous.isEmpty }

    /// Builds the report from the scans of a file's pickles. `containerVerdict` is what torch.load(weights_only=True)
    /// decides before unpickling anything (a TorchScript archive, a format torch.load does not unpickle).
    public init(file: String, format: String, pickles: [PickleScan], readError: CheckpointError?,
                containerVerdict: (loads: Bool, reason: String)? = nil)
    {
        self.file = file
        self.format = format
        self.pickles = pickles
        self.readError = readError
        globals = Self.merge(pickles)
        if let v = containerVerdict {
            weightsOnlyLoads = v.loads
            weightsOnlyReason = v.reason
        } else if let refusal = pickles.lazy.compactMap({ s in s.weightsOnlyRefusal.map { "\(s.label): \($0)" } }).first {
            weightsOnlyLoads = false
            weightsOnlyReason = refusal
        } else if let e = readError {
            weightsOnlyLoads = false
            weightsOnlyReason = "the file cannot be read: \(e.description)"
        } else {
            weightsOnlyLoads = true
            weightsOnlyReason = nil
        }
    }

    /// One row per (global as spelled, use) over all pickles, classified, ordered by class, most dangerous
    /// first, then by first use. Nothing is merged by name: `numpy` + `testing.x` and `numpy.testing` + `x` are
    /// two rows, as are a global referenced in one place and called in another.
    static func merge(_ scans: [PickleScan]) -> [GlobalReport] {
        var out: [GlobalReport] = []
        var index: [String: Int] = [:]
        for s in scans {
            for g in s.globals {
                for u in g.reportedUses {
                    let key = g.key + "\n" + u.rawValue
                    var (count, offset) = u == .referenced ? (g.count, g.offset) : g.uses[u]!
                    if u == .setstate, let c = g.uses[.constructed] { (count, offset) = (max(count, c.count), min(offset, c.offset)) }
                    if let i = index[key] { out[i].count += count; continue }
                    index[key] = out.count
                    out.append(GlobalReport(name: g.fullName, module: g.module, use: u, via: g.via, count: count,
                                            verdict: GlobalPolicy.classify(g, use: u), pickle: s.label, offset: offset))
                }
            }
            for c in s.computed {
                let called = !["STACK_GLOBAL", "EXT1", "EXT2", "EXT4"].contains(c.opcode)
                out.append(GlobalReport(name: "<computed by \(c.opcode) at byte \(c.offset)>", module: "",
                                        use: called ? .called : .referenced, via: nil, count: 1,
                                        verdict: GlobalVerdict(globalClass: .dangerous, reason: c.detail),
                                        pickle: s.label, offset: c.offset))
            }
        }
        return out.enumerated().sorted { a, b in
            let (x, y) = (a.element.verdict.globalClass, b.element.verdict.globalClass)
            return x != y ? x > y : a.offset < b.offset
        }.map(\.element)
    }

    /// Counts of rows by class.
    public func count(_ c: GlobalClass) -> Int { globals.filter { $0.verdict.globalClass == c }.count }

    /// The modules whose code loading the file would run, for the needs-code rows: each module (as pickle looks
    /// it up) with what of it runs (`import`, and `__setstate__` when BUILD gives one of its classes state).
    public var codeThatWouldRun: [(module: String, what: String)] {
        var order: [String] = []
        var what: [String: Set<String>] = [:]
        for g in globals where g.verdict.globalClass == .needsCode {
            let m = GlobalPolicy.pythonName(g.module, g.name).module
            if what[m] == nil { order.append(m) }
            what[m, default: []].insert("import")
            if g.use == .setstate { what[m]!.insert("__setstate__") }
            if g.use == .called { what[m]!.insert("calls") }
        }
        return order.sorted().map { m in
            (m, ["import", "__setstate__", "calls"].filter { what[m]!.contains($0) }.joined(separator: ", "))
        }
    }

    /// One line: what the file is, for the end of the table and for refusals.
    public var verdictLine: String {
        if isAmbiguous, let c = container {
            return c.verdictLine + (isDangerous ? "; and " + dangerousLine : "")
        }
        return isDangerous ? dangerousLine : cleanLine
    }

    private var dangerousLine: String {
        let names = dangerous.prefix(6).map { "\($0.name) (\($0.use.rawValue))" }.joined(separator: ", ")
            + (dangerous.count > 6 ? ", ..." : "")
        return "dangerous: \(dangerous.count) use\(dangerous.count == 1 ? "" : "s") of globals can run code when the file is unpickled (\(names))"
    }

    private var cleanLine: String {
        if count(.needsCode) > 0 {
            let modules = codeThatWouldRun.map(\.module)
            let shown = modules.prefix(8).joined(separator: ", ") + (modules.count > 8 ? ", ..." : "")
            return "no dangerous calls; needs code: \(modules.count) module\(modules.count == 1 ? "" : "s") would run (\(shown))"
        }
        return "no dangerous calls"
    }

    /// The report as JSON.
    public var json: JSONValue {
        .object([
            ("file", .string(file)),
            ("format", .string(format)),
            ("pickles", .array(pickles.map { p in
                .object([("pickle", .string(p.label)), ("protocol", p.protocolVersion.map { .int(Int64($0)) } ?? .null),
                         ("opcodes", .int(Int64(p.opcodes))), ("error", p.error.map { .string($0.description) } ?? .null)])
            })),
            ("globals", .array(globals.map { g in
                var o: [(String, JSONValue)] = [("name", .string(g.name)), ("module", .string(g.module)),
                                                 ("use", .string(g.use.rawValue)), ("count", .int(Int64(g.count))),
                                                 ("class", .string(g.verdict.globalClass.rawValue))]
                if let v = g.via { o.append(("via", .string(v))) }
                if let f = g.verdict.framework { o.append(("framework", .string(f))) }
                if let r = g.verdict.reason { o.append(("reason", .string(r))) }
                o.append(("pickle", .string(g.pickle)))
                o.append(("offset", .int(Int64(g.offset))))
                return .object(o)
            })),
            ("safe", .int(Int64(count(.safe)))),
            ("needs_code", .int(Int64(count(.needsCode)))),
            ("dangerous", .int(Int64(count(.dangerous)))),
            ("code_that_would_run", .array(codeThatWouldRun.map { .object([("module", .string($0.module)), ("runs", .string($0.what))]) })),
            ("weights_only", .object([("loads", .bool(weightsOnlyLoads)),
                                      ("reason", weightsOnlyReason.map { .string($0) } ?? .null)])),
            ("read_error", readError.map { .string($0.description) } ?? .null),
            ("container", container.map { c in
                .object([("torch_reads", .string(c.torchReads)),
                         ("ambiguities", .array(c.ambiguities.map { .string($0) }))])
            } ?? .null),
            ("verdict", .string(isDangerous ? "dangerous" : isAmbiguous ? "ambiguous-container"
                                : count(.needsCode) > 0 ? "needs-code" : "safe")),
        ])
    }

    /// The report as a table for people.
    public var table: String {
        // A distributed folder holds a pickle an item: the first few are named, and every one torch's weights_only
        // loader would refuse or that could not be read; --json lists them all.
        let named = pickles.enumerated().filter { i, p in i < 6 || p.weightsOnlyRefusal != nil || p.error != nil }.map(\.element)
        let pickleText = named.map { p in
            p.label + (p.protocolVersion.map { ", protocol \($0)" } ?? "")
        }.joined(separator: "; ") + (named.count < pickles.count ? "; and \(pickles.count - named.count) more (--json lists them)" : "")
        var out = "\(file): \(format), \(pickles.count) pickle\(pickles.count == 1 ? "" : "s") (\(pickleText))\n\n"
        var rows: [[String]] = [["class", "use", "count", "global", "framework", ""]]
        for g in globals {
            let reason = g.verdict.globalClass == .safe ? "" : g.verdict.reason.map { "(\($0))" } ?? ""
            rows.append([g.verdict.globalClass.rawValue, g.use.rawValue, String(g.count),
                         g.via.map { "\(g.name) (via \($0))" } ?? g.name, g.verdict.framework ?? "", reason])
        }
        out += globals.isEmpty ? "no globals\n" : Figures.table(rows) + "\n"
        let code = codeThatWouldRun
        if !code.isEmpty {
            out += "\ncode that would run: " + code.map { "\($0.module) (\($0.what))" }.joined(separator: ", ") + "\n"
        }
        out += "\nweights_only=True: " + (weightsOnlyLoads ? "loads" + (weightsOnlyReason.map { " (\($0))" } ?? "")
            : "refused, \(weightsOnlyReason ?? "")") + "\n"
        for p in pickles where p.error != nil {
            out += "malformed: \(p.label): \(p.error!.description)\n"
        }
        if let c = container, c.isAmbiguous {
            out += "container: torch.load reads \(c.torchReads)\n"
            for a in c.ambiguities { out += "ambiguous: \(a)\n" }
        }
        out += verdictLine
        return out
    }
}

/// Builds `ckpt scan`'s report (``ScanReport``): scans a file's pickles and classes every global they name. Reads
/// the file as a checkpoint to decide whether `weights_only=True` would load it; when that fails, the pickles are
/// still scanned raw (a pickle that cannot be decoded may still run code) and the failure is kept in
/// ``ScanReport/readError``. Unlike the other builders it takes a path, not an open ``Checkpoint``: a file that cannot
/// be opened as one is still scanned.
public struct ScanBuilder {
    /// The file or folder scanned, as given.
    public let path: String
    public var limits: PickleLimits

    public init(path: String, limits: PickleLimits = PickleLimits()) {
        self.path = path
        self.limits = limits
    }

    /// The report. Throws only when no pickle can be found at all.
    public func build() throws(CheckpointError) -> ScanReport {
        if let report = try distributedReport() { return report }
        // A FIFO, a device or a folder without weights is refused before anything is read; a file that is no
        // checkpoint (text, HTML) is still scanned raw below: a protocol-0 pickle is text.
        let file = try InputPath.resolve(path)
        // What torch.load reads, and whether the bytes allow another reading (ckpt reads what torch reads).
        let audit = ContainerAudit(file: file)
        let readError: CheckpointError
        do {
            let c = try Checkpoint(path: path, limits: limits)
            // The format of a file named directly; a folder's weights file (read `from` it) is judged only when
            // it is a sharded index.
            let direct = c.file == path ? c.containerFormat : nil
            let verdict: (Bool, String)?
            if c.torchScript != nil {
                verdict = (false, Self.torchScriptRefusal)
            } else if direct == .safetensors && file.hasSuffix(".safetensors") {
                verdict = (true, "torch.load hands a path ending in .safetensors to safetensors.torch.load_file, "
                    + "when the safetensors package is installed")
            } else if direct == .safetensors || direct == .onnx || c.containerFormat.isSharded {
                verdict = (false, "torch.load cannot open a \(c.format) file: it unpickles its bytes and fails"
                    + (direct == .safetensors ? " (it reads safetensors only by a path ending in .safetensors)" : ""))
            } else {
                verdict = nil
            }
            var report = ScanReport(file: path, format: c.format, pickles: c.pickleScans, readError: nil,
                                    containerVerdict: verdict)
            report.container = audit
            return report
        } catch {
            readError = error
        }
        guard let (format, scans) = try? ContainerPickles.rawScans(path: file, reading: audit.reading, limits: limits),
              let first = scans.first, first.error == nil || !first.globals.isEmpty || !first.computed.isEmpty
        else {
            // No pickle to judge, but an ambiguous container is still reported (exit 1), not only "cannot read".
            guard audit.isAmbiguous else { throw readError }
            var report = ScanReport(file: path, format: audit.reading.rawValue, pickles: [], readError: readError)
            report.container = audit
            return report
        }
        // torch.load treats any zip with a constants.pkl record as TorchScript, even one ckpt cannot read as such.
        let zip = try? ZipReader(path: file)
        let torchScript = zip?.entry(named: "constants.pkl") != nil
        zip?.close()
        var report = ScanReport(file: path, format: format, pickles: scans, readError: readError,
                                containerVerdict: torchScript ? (false, Self.torchScriptRefusal) : nil)
        report.container = audit
        return report
    }

    /// The report on a distributed checkpoint folder (``DistributedFolder``: DCP, DeepSpeed ZeRO), nil for any other
    /// path. Its pickles are every pickle its own loader unpickles (``Checkpoint/pickleScans``); when the folder cannot
    /// be read (a `.metadata` naming a global outside the DCP allow-list), what its reader can still scan raw
    /// (``DistributedFolder/rawScans(path:limits:)``), with the read error kept.
    func distributedReport() throws(CheckpointError) -> ScanReport? {
        guard Self.isFolder(path) else { return nil }
        // A model or Trainer folder (one with a weights file) is scanned through that file below, unless a
        // distributed reader claims it.
        guard DistributedFolder.looksDistributed(path: path) || (try? InputPath.resolve(path)) == nil else { return nil }
        let note = "torch.load does not read a folder: its own loader reads each pickle listed"
        do {
            let c = try Checkpoint(path: path, limits: limits)
            guard let d = c.distributed else { return nil }
            return ScanReport(file: path, format: c.format, pickles: c.pickleScans, readError: nil,
                              containerVerdict: (false, d.torchLoads ?? note))
        } catch {
            if let raw = DistributedFolder.rawScans(path: path, limits: limits) {
                return ScanReport(file: path, format: raw.format, pickles: raw.scans, readError: error,
                                  containerVerdict: (false, raw.torchLoads ?? note))
            }
            // A folder a distributed reader claimed: its error, not "a folder without weights" (which the
            // path's own resolution below gives any other folder).
            if case .wrongKind = error, !DistributedFolder.looksDistributed(path: path) { return nil }
            throw error
        }
    }

    /// Whether a path is a folder (following links).
    static func isFolder(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// What torch.load(weights_only=True) says of a TorchScript archive (torch/serialization.py).
    static let torchScriptRefusal =
        "torch.load hands a zip with constants.pkl to torch.jit.load: \"Cannot use weights_only=True with TorchScript archives\""
}
