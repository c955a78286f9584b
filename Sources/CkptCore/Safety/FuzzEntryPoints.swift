import Foundation

/// Every reader run over untrusted input, results discarded: the bodies of the libFuzzer targets in `fuzz/`
/// and of the regression tests that replay their crashers, kept here so that both run exactly the same code.
/// Errors are the expected outcome for most inputs; a crash, a hang or a sanitizer report is a bug.
public enum FuzzEntryPoints {
    /// Limits small enough that a fuzzer's inputs cannot make legitimately huge allocations.
    public static var limits: PickleLimits {
        var l = PickleLimits()
        l.maxStringLength = 1 << 20
        l.maxNodes = 1 << 20
        l.maxMemo = 1 << 16
        return l
    }

    /// The pickle layer on arbitrary bytes: scan, decode, the torch view, and re-encoding what decodes
    /// (whose output must decode again).
    public static func pickle(_ input: [UInt8]) {
        let limits = limits
        let scan = PickleScanner.scan(input, label: "fuzz", limits: limits)
        let sequence = PickleScanner.scanSequence(input, count: 5, label: "fuzz", limits: limits)
        // the use classification and report over whatever names and uses the fuzzer makes up
        let report = ScanReport(file: "fuzz", format: "pickle stream", pickles: [scan] + sequence, readError: nil)
        _ = report.table
        _ = report.json.rendered()
        guard let graph = try? PickleDecoder.decode(input, limits: limits) else { return }
        _ = try? graph.stateDict(graph.root, limits: limits)
        _ = try? graph.allTensors(from: graph.root)
        for id in graph.reachable(from: graph.root).prefix(10_000) {
            _ = try? graph.tensor(id)
            _ = graph.numpyValue(id)
            _ = graph.scalarJSON(id)
            _ = graph.stringSet(id)
        }
        if let encoded = try? PickleEncoder.encode(graph) {
            precondition((try? PickleDecoder.decode(encoded, limits: limits)) != nil,
                         "the encoder wrote a pickle its own decoder refuses")
        }
    }

    /// The checkpoint reader on an arbitrary file: scan, open (zip or legacy), describe, plan a strip and
    /// stream the storages it would copy.
    public static func checkpoint(path: String) {
        if let report = try? ScanBuilder(path: path, limits: limits).build() {
            _ = report.table
            _ = report.json.rendered()
        }
        guard let c = try? Checkpoint(path: path, limits: limits) else { return }
        _ = try? InfoBuilder(checkpoint: c).build()
        _ = try? KeysBuilder(checkpoint: c).build()
        _ = c.dangerousGlobals()
        for r in c.records.prefix(100) { _ = try? c.record(named: r.name) }
        _ = try? WeightsOnlyCheckBuilder(path: path, limits: limits).build()
        // The framework's conventions with the EMA asked for, the model's description and plain data (--state-dict).
        var sd = StripOptions()
        sd.useEMA = true
        sd.stateDict = true
        sd.dropUnconvertible = true
        if let plan = try? c.planStrip(sd) { _ = try? PickleEncoder.encode(plan.graph) }
        var o = StripOptions()
        o.half = true
        guard let plan = try? c.planStrip(o) else { return }
        _ = try? PickleEncoder.encode(plan.graph)
        for s in plan.storages.prefix(64) {
            _ = try? c.streamStorage(s.sourceKey, chunkSize: 4096) { _ in }
        }
    }

    /// The same bytes as a torch.distributed.checkpoint folder's `.metadata` (a folder made beside `path` holding
    /// only it): the metadata's interpretation, nesting and coverage checks on arbitrary pickles, then what info,
    /// keys and scan make of the folder (its data files are missing, which must be refused, not crash).
    public static func dcpMetadata(path: String) {
        let folder = path + ".dcp"
        let fm = FileManager.default
        try? fm.removeItem(atPath: folder)
        guard (try? fm.createDirectory(atPath: folder, withIntermediateDirectories: false)) != nil,
              (try? fm.copyItem(atPath: path, toPath: folder + "/.metadata")) != nil else { return }
        defer { try? fm.removeItem(atPath: folder) }
        if let report = try? ScanBuilder(path: folder, limits: limits).build() { _ = report.table }
        guard let c = try? Checkpoint(path: folder, limits: limits) else { return }
        _ = try? InfoBuilder(checkpoint: c).build()
        _ = try? KeysBuilder(checkpoint: c).build()
    }
}
