import ArgumentParser
import CkptCore
import Foundation

/// `--max-shard-size SIZE`: the commands that write weights (consolidate, convert, strip).
struct ShardOption: ParsableArguments {
    @Option(name: .customLong("max-shard-size"), help: ArgumentHelp(
        "Write OUT as a folder of safetensors shards of at most SIZE each, and their index, as Hugging Face writes "
            + "them (5GB, 500MB, 2KB: powers of 1000; or bytes).", valueName: "size"))
    var maxShardSize: String?

    /// The limit in bytes (nil without the option); a size huggingface_hub would not read fails as OUT's fault.
    func bytes(output: String) throws -> Int64? {
        guard let maxShardSize else { return nil }
        return try Phase.preparing(output).run { try ShardSize.parse(maxShardSize) }
    }
}

/// `convert` and `consolidate`: the record's weights written to OUT (a `.safetensors` file, a torch file, or with
/// `--max-shard-size` a folder of shards), or with `--dry-run` only planned; then the report, as text or JSON.
struct WeightsOutput {
    var input: String
    var output: String
    var record: String?
    var half = false
    var maxShardSize: Int64?
    var weightsOnly = false
    var dropUnconvertible = false
    var verb = "converted"
    var dryRun = false
    var json = false

    func run(_ ckpt: Checkpoint, progress: ProgressOptions?) throws {
        let output = try Phase.preparing(self.output).run {
            maxShardSize != nil ? try AtomicOutput.folderDestination(for: self.output)
                                : try AtomicOutput.destination(for: self.output, input: input)
        }
        let format = try Phase.preparing(output).run {
            maxShardSize != nil ? OutputFormat.shardedSafetensors : try OutputFormat(path: output)
        }
        var (plan, report) = try Phase.reading(input).run {
            try ckpt.planWeights(record: record, output: output, format: format, half: half, maxShardSize: maxShardSize,
                                 weightsOnly: weightsOnly, dropUnconvertible: dropUnconvertible)
        }
        report.verb = verb
        report.dryRun = dryRun
        if !dryRun {
            let reporter = progress?.reporter(label: verb == "converted" ? "convert" : "consolidate", total: plan.sourceBytes)
            defer { reporter?.finish() }
            try Phase.writing(output, from: input).run {
                try Checkpoint.write(plan, sources: [ckpt], to: output, progress: reporter.map { r in { r.update($0) } })
            }
        } else {
            try Phase.reading(input).run { try Checkpoint.prepare(plan, sources: [ckpt]) }
        }
        for w in report.warnings { warn("\(input): \(w)") }
        emit(json ? report.json.rendered() : (dryRun ? "dry run: nothing written\n" : "") + report.text)
    }
}
