/// The summary `strip` prints: YOLOv5's one line, the changes, or JSON.
public struct StripSummary: Sendable {
    public var input: String
    public var output: String
    public var inputBytes: Int64
    public var outputBytes: Int64?
    public var dryRun: Bool
    public var report: SurgeryReport
    /// `--max-shard-size`: how the weights were written as shards (nil: not sharded, or a dry run).
    public var shards: ConvertReport? = nil

    public init(input: String, output: String, inputBytes: Int64, outputBytes: Int64?, dryRun: Bool,
                report: SurgeryReport) {
        self.input = input
        self.output = output
        self.inputBytes = inputBytes
        self.outputBytes = outputBytes
        self.dryRun = dryRun
        self.report = report
    }

    private var weights: String {
        "\(report.weightsRecord ?? "state dict"): \(Figures.count(report.parameters)) parameters"
            + (report.weightsDType.map { ", \($0.rawValue)" } ?? "")
    }

    /// `stripped best.pt: 15.3 MB -> 3.9 MB (model: 1.87M parameters, float16)` and, under it,
    /// what changed.
    public var text: String {
        var lines: [String] = []
        if dryRun {
            lines.append("would strip \(input) (\(Figures.bytes(inputBytes))) into \(output) (\(weights)); nothing written")
        } else {
            lines.append("stripped \(input): \(Figures.bytes(inputBytes)) -> \(Figures.bytes(outputBytes ?? 0)) (\(weights))")
        }
        if let f = report.framework { lines.append("  conventions: \(f) (ckpt info says why; --framework NAME overrides)") }
        for c in report.recordChanges { lines.append("  \(c.record): \(c.before) -> \(c.after)") }
        if report.convertedStorages > 0 {
            lines.append("  float16: \(report.convertedTensors) tensors in \(report.convertedStorages) storages converted")
        }
        if !report.dropped.isEmpty {
            lines.append("  dropped \(report.dropped.count) keys: \(report.dropped.prefix(8).joined(separator: ", "))"
                         + (report.dropped.count > 8 ? ", ..." : ""))
        }
        if !report.renamed.isEmpty {
            lines.append("  renamed \(report.renamed.count) keys, e.g. \(report.renamed[0].old) -> \(report.renamed[0].new)")
        }
        lines += ValueConversion.lines(report.conversions, dropped: report.droppedValues)
        if let shards {
            lines.append("  weights only: \(shards.tensors) tensors as \(shards.shards.count) safetensors "
                + "\(shards.shards.count == 1 ? "file" : "shards") of at most \(Figures.bytes(shards.maxShardSize ?? 0))"
                + (shards.removedAliases.isEmpty ? "" : " (\(shards.removedAliases.count) shared tensors stored once)"))
            for f in shards.shards { lines.append("    \(f.file): \(f.tensors) \(f.tensors == 1 ? "tensor" : "tensors"), \(Figures.bytes(f.bytes))") }
        }
        return lines.joined(separator: "\n")
    }

    public var json: JSONValue {
        var pairs: [(String, JSONValue)] = [
            ("input", .string(input)), ("output", .string(output)), ("dry_run", .bool(dryRun)),
            ("input_bytes", .int(inputBytes)), ("output_bytes", outputBytes.map { .int($0) } ?? .null),
            ("framework", report.framework.map { .string($0) } ?? .null),
            ("weights_record", report.weightsRecord.map { .string($0) } ?? .null),
            ("parameters", .int(report.parameters)),
            ("dtype", report.weightsDType.map { .string($0.rawValue) } ?? .null),
            ("records", .object(report.recordChanges.map { ($0.record, .object([("before", .string($0.before)), ("after", .string($0.after))])) })),
            ("converted_tensors", .int(Int64(report.convertedTensors))),
            ("dropped", .array(report.dropped.map { .string($0) })),
            ("renamed", .array(report.renamed.map { .array([.string($0.old), .string($0.new)]) })),
            ("conversions", ValueConversion.json(report.conversions)),
            ("dropped_values", ValueConversion.json(report.droppedValues, dropped: true)),
            ("warnings", .array(report.warnings.map { .string($0) })),
        ]
        if let shards {
            let j = shards.json
            for key in ["max_shard_size", "shards", "total_size", "removed_aliases"] {
                if case .object(let all) = j, let v = all.first(where: { $0.0 == key })?.1 { pairs.append((key, v)) }
            }
        }
        return .object(pairs)
    }
}
