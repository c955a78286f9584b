/// The summary `average` prints: what was averaged, what came from the last input, or JSON.
public struct AverageSummary: Sendable {
    public var output: String
    public var outputBytes: Int64?
    public var dryRun: Bool
    public var report: AverageReport

    public init(output: String, outputBytes: Int64?, dryRun: Bool, report: AverageReport) {
        self.output = output
        self.outputBytes = outputBytes
        self.dryRun = dryRun
        self.report = report
    }

    private var weights: String {
        let r = report.strip
        return "\(r.weightsRecord ?? "state dict"): \(Figures.count(r.parameters)) parameters"
            + (r.weightsDType.map { ", \($0.rawValue)" } ?? "")
    }

    /// `averaged 3 checkpoints into avg.pt: 15.3 MB (model: 1.87M parameters, float32)` and, under it, the inputs,
    /// what was averaged and what is the last input's.
    public var text: String {
        let n = report.inputs.count
        let lastFile = report.inputs.last?.file ?? ""
        var lines: [String] = []
        if dryRun {
            lines.append("would average \(n) checkpoints into \(output) (\(weights)); nothing written")
        } else {
            lines.append("averaged \(n) checkpoints into \(output): \(Figures.bytes(outputBytes ?? 0)) (\(weights))")
        }
        lines.append("  inputs: " + report.inputs.map { "\($0.file) (weight \(averageWeightText($0.weight)))" }
            .joined(separator: ", "))
        lines.append("  averaged: \(report.averagedTensors) floating tensors in \(report.averagedStorages) storages, "
            + "sum_i(w_i * x_i) / sum_i(w_i) in float64, then each tensor's dtype")
        if !report.copiedTensors.isEmpty {
            let c = report.copiedTensors
            lines.append("  from \(lastFile) (the last input): \(c.count) integer and bool tensors ("
                + c.prefix(3).joined(separator: ", ") + (c.count > 3 ? ", ..." : "") + ")")
        }
        if report.outsideTensors > 0 {
            lines.append("  from \(lastFile) (the last input): \(report.outsideTensors) tensors outside the weights' "
                + "state dict")
        }
        lines.append("  \(averagedFromRecord): file, sha256 and weight of each input"
            + (report.inputs.contains { $0.sha256 == nil } ? " (no sha256 for a distributed checkpoint folder)" : ""))
        if let f = report.strip.framework { lines.append("  conventions: \(f) (ckpt info says why; --framework NAME overrides)") }
        for c in report.strip.recordChanges { lines.append("  \(c.record): \(c.before) -> \(c.after)") }
        lines += ValueConversion.lines(report.strip.conversions, dropped: report.strip.droppedValues)
        return lines.joined(separator: "\n")
    }

    public var json: JSONValue {
        let r = report.strip
        return .object([
            ("output", .string(output)), ("dry_run", .bool(dryRun)),
            ("output_bytes", outputBytes.map { .int($0) } ?? .null),
            ("inputs", .array(report.inputs.map { i in
                .object([("path", .string(i.path)), ("file", .string(i.file)), ("sha256", i.sha256.map { .string($0) } ?? .null),
                         ("weight", .double(i.weight))])
            })),
            ("framework", r.framework.map { .string($0) } ?? .null),
            ("weights_record", r.weightsRecord.map { .string($0) } ?? .null),
            ("parameters", .int(r.parameters)),
            ("dtype", r.weightsDType.map { .string($0.rawValue) } ?? .null),
            ("averaged_tensors", .int(Int64(report.averagedTensors))),
            ("averaged_storages", .int(Int64(report.averagedStorages))),
            ("copied_from_last", .array(report.copiedTensors.map { .string($0) })),
            ("outside_tensors", .int(Int64(report.outsideTensors))),
            ("record", .string(averagedFromRecord)),
            ("records", .object(r.recordChanges.map { ($0.record, .object([("before", .string($0.before)), ("after", .string($0.after))])) })),
            ("conversions", ValueConversion.json(r.conversions)),
            ("warnings", .array(r.warnings.map { .string($0) })),
        ])
    }
}
