import Foundation

/// One global over a whole file, as `ckpt scan` lists it.
public struct GlobalReport: Sendable, Equatable {
    /// `module.name` as written in the pickle, or `<computed by STACK_GLOBAL at byte N>`.
    public var name: String
    /// Uses over every pickle of the file (see ``ScannedGlobal/count``).
    public var count: Int
    public var verdict: GlobalVerdict
    /// The pickle it first appears in, and where.
    public var pickle: String
    public var offset: Int
}

/// What `ckpt scan` reports: every global the file's pickles name, classed, and whether
/// `torch.load(weights_only=True)` would load the file as it stands.
public struct ScanReport: Sendable {
    public var file: String
    /// `torch zip`, `torch legacy`, or `pickle stream` (a file that is not a checkpoint ckpt can read).
    public var format: String
    /// Each pickle scanned, in the order torch unpickles them.
    public var pickles: [PickleScan]
    /// Globals, most dangerous first, then in order of first use.
    public var globals: [GlobalReport]
    /// Why the file cannot be read as a checkpoint, when it cannot (scan still lists what its pickles name).
    public var readError: CheckpointError?
    /// Whether `torch.load(weights_only=True)` loads the file, and if not, the first reason.
    public var weightsOnlyLoads: Bool
    public var weightsOnlyReason: String?
    /// Which container torch.load reads and the other readings of the bytes (``ContainerAudit``); nil when not
    /// audited (a report built from pickle scans alone).
    public var container: ContainerAudit? = nil

    /// Whether torch could read the file differently from another reader (see ``ContainerAudit``).
    public var isAmbiguous: Bool { container?.isAmbiguous ?? false }

    /// The dangerous globals.
    public var dangerous: [GlobalReport] { globals.filter { $0.verdict.globalClass == .dangerous } }
    /// Whether anything in the file is dangerous to unpickle.
    public var isDangerous: Bool { !dangerous.isEmpty }

    /// Builds the report from the scans of a file's pickles.
    public init(file: String, format: String, pickles: [PickleScan], readError: CheckpointError?) {
        self.file = file
        self.format = format
        self.pickles = pickles
        self.readError = readError
        globals = Self.merge(pickles)
        if let refusal = pickles.lazy.compactMap({ s in s.weightsOnlyRefusal.map { "\(s.label): \($0)" } }).first {
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

    /// Merges per-pickle globals by name (as written), classifies them, and orders them by class, most
    /// dangerous first, then by first use.
    static func merge(_ scans: [PickleScan]) -> [GlobalReport] {
        var out: [GlobalReport] = []
        var index: [String: Int] = [:]
        for s in scans {
            for g in s.globals {
                if let i = index[g.fullName] { out[i].count += g.count; continue }
                index[g.fullName] = out.count
                out.append(GlobalReport(name: g.fullName, count: g.count,
                                        verdict: GlobalPolicy.classify(module: g.module, name: g.name),
                                        pickle: s.label, offset: g.offset))
            }
            for c in s.computed {
                out.append(GlobalReport(name: "<computed by \(c.opcode) at byte \(c.offset)>", count: 1,
                                        verdict: GlobalVerdict(globalClass: .dangerous, reason: c.detail),
                                        pickle: s.label, offset: c.offset))
            }
        }
        return out.enumerated().sorted { a, b in
            let (x, y) = (a.element.verdict.globalClass, b.element.verdict.globalClass)
            return x != y ? x > y : a.offset < b.offset
        }.map(\.element)
    }

    /// Counts of globals by class.
    public func count(_ c: GlobalClass) -> Int { globals.filter { $0.verdict.globalClass == c }.count }

    /// One line: what the file is, for the end of the table and for refusals.
    public var verdictLine: String {
        if isAmbiguous, let c = container {
            return c.verdictLine + (isDangerous ? "; and " + dangerousLine : "")
        }
        return isDangerous ? dangerousLine : cleanLine
    }

    private var dangerousLine: String {
        let names = dangerous.prefix(6).map(\.name).joined(separator: ", ") + (dangerous.count > 6 ? ", ..." : "")
        return "dangerous: \(dangerous.count) global\(dangerous.count == 1 ? "" : "s") can run code when the file is unpickled (\(names))"
    }

    private var cleanLine: String {
        if count(.needsCode) > 0 {
            return "no dangerous globals; \(count(.needsCode)) need\(count(.needsCode) == 1 ? "s" : "") their source code to load"
        }
        return "no dangerous globals"
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
                var o: [(String, JSONValue)] = [("name", .string(g.name)), ("count", .int(Int64(g.count))),
                                                 ("class", .string(g.verdict.globalClass.rawValue))]
                if let r = g.verdict.reason { o.append(("reason", .string(r))) }
                o.append(("pickle", .string(g.pickle)))
                o.append(("offset", .int(Int64(g.offset))))
                return .object(o)
            })),
            ("safe", .int(Int64(count(.safe)))),
            ("needs_code", .int(Int64(count(.needsCode)))),
            ("dangerous", .int(Int64(count(.dangerous)))),
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
        let pickleText = pickles.map { p in
            p.label + (p.protocolVersion.map { ", protocol \($0)" } ?? "")
        }.joined(separator: "; ")
        var out = "\(file): \(format), \(pickles.count) pickle\(pickles.count == 1 ? "" : "s") (\(pickleText))\n\n"
        var rows: [[String]] = [["class", "uses", "global", ""]]
        for g in globals {
            rows.append([g.verdict.globalClass.rawValue, String(g.count), g.name, g.verdict.reason.map { "(\($0))" } ?? ""])
        }
        out += globals.isEmpty ? "no globals\n" : Figures.table(rows) + "\n"
        out += "\nweights_only=True: " + (weightsOnlyLoads ? "loads" : "refused, \(weightsOnlyReason ?? "")") + "\n"
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

/// Finding the pickles of a file, the way torch unpickles them.
enum ContainerPickles {
    /// The zip records holding pickles: `data.pkl` first, then any other `.pkl` record (TorchScript's
    /// `constants.pkl`).
    static func records(of zip: ZipReader) -> [ZipEntry] {
        var out: [ZipEntry] = []
        if let d = zip.entry(named: "data.pkl") { out.append(d) }
        for e in zip.entries where e.name.hasSuffix(".pkl") && !out.contains(e) { out.append(e) }
        return out
    }

    /// Scans the pickles of a file without decoding it as a checkpoint: the `.pkl` records of a zip,
    /// or up to five pickles back to back from the start of any other file (the legacy format; a bare
    /// pickle is the first of them, which torch.load unpickles before it can check anything).
    ///
    /// The container is the one torch.load reads (``ContainerAudit/reading``): a zip only when it starts at byte 0,
    /// read as torch's reader reads it (lenient: duplicate names, disagreeing local headers and wrong CRCs do not
    /// stop torch, so they do not stop the scan); a torch 0.1.x tar's pickles (``LegacyTarReader/rawScans``);
    /// else the pickle stream from byte 0, even when a zip follows it.
    static func rawScans(path: String, reading: ContainerAudit.Reading, limits: PickleLimits) throws
        -> (format: String, scans: [PickleScan])
    {
        switch reading {
        case .zip:
            let zip = try ZipReader(path: path, lenient: true)
            defer { zip.close() }
            var scans: [PickleScan] = []
            for e in records(of: zip) {
                let bytes = try zip.readAll(e, limit: Checkpoint.maxPickleBytes, verifyCRC: false)
                scans.append(PickleScanner.scan(bytes, label: e.name, limits: limits))
            }
            return (reading.rawValue, scans)
        case .legacyTar:
            return (reading.rawValue, try LegacyTarReader.rawScans(path: path, limits: limits))
        case .pickleStream:
            return (reading.rawValue, try streamScans(path: path, limits: limits))
        case .shards:
            throw CheckpointError.notACheckpoint("a sharded index holds no pickle of its own")
        }
    }

    /// Up to five pickles from the start of the file, reading a growing prefix until they are complete.
    static func streamScans(path: String, limits: PickleLimits) throws -> [PickleScan] {
        guard let h = FileHandle(forReadingAtPath: path) else { throw CheckpointError.io("cannot open for reading") }
        defer { try? h.close() }
        let size = (try? h.seekToEnd()) ?? 0
        var prefixLength = min(size, 1 << 20)
        while true {
            try h.seek(toOffset: 0)
            let prefix = Array(h.readData(ofLength: Int(prefixLength)))
            let scans = PickleScanner.scanSequence(prefix, count: 5, label: "pickle", limits: limits)
            if case .truncated? = scans.last?.error, prefixLength < size, prefixLength < Checkpoint.maxPickleBytes {
                prefixLength = min(size, prefixLength * 4, Checkpoint.maxPickleBytes)
                continue
            }
            return scans
        }
    }
}

extension Checkpoint {
    /// Scans a file's pickles and classes every global they name. Reads the file as a checkpoint to
    /// decide whether `weights_only=True` would load it; when that fails, the pickles are still scanned
    /// raw (a pickle that cannot be decoded may still run code) and the failure is kept in
    /// ``ScanReport/readError``. Throws only when no pickle can be found at all.
    public static func scan(path: String, limits: PickleLimits = PickleLimits()) throws(CheckpointError) -> ScanReport {
        // A FIFO, a device or a folder without weights is refused before anything is read; a file that is no
        // checkpoint (text, HTML) is still scanned raw below: a protocol-0 pickle is text.
        let file = try InputPath.resolve(path)
        // What torch.load reads, and whether the bytes allow another reading (ckpt reads what torch reads).
        let audit = ContainerAudit(file: file)
        let readError: CheckpointError
        do {
            let c = try Checkpoint(path: path, limits: limits)
            var report = ScanReport(file: path, format: c.format, pickles: c.pickleScans, readError: nil)
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
        var report = ScanReport(file: path, format: format, pickles: scans, readError: readError)
        report.container = audit
        return report
    }

    /// The globals of this checkpoint's pickles that can run code when unpickled (empty for a clean file).
    /// Every rewriting command checks this before writing.
    public func dangerousGlobals() -> [GlobalReport] {
        ScanReport.merge(pickleScans).filter { $0.verdict.globalClass == .dangerous }
    }

    /// Throws ``CheckpointError/dangerousGlobals(_:)`` when the checkpoint names dangerous globals,
    /// unless `allowUnsafe`. Rewriting commands call it before planning.
    ///
    /// In a TorchScript archive the `torch.jit._pickle` functions that TorchScript's own unpickler resolves by name
    /// (``TorchScriptArchive/unpicklerBuiltins``) are not counted: torch.jit.load never calls Python for them.
    /// `scan` still lists them as its policy classes them.
    public func refuseDangerousGlobals(allowUnsafe: Bool) throws(CheckpointError) {
        guard !allowUnsafe else { return }
        var bad = dangerousGlobals()
        if torchScript != nil { bad.removeAll { TorchScriptArchive.unpicklerBuiltins.contains($0.name) } }
        if !bad.isEmpty { throw .dangerousGlobals(bad.map(\.name)) }
    }
}
