import ArgumentParser
import CkptCore
import Foundation

extension Strip {
    /// `strip` of a Hugging Face Trainer `checkpoint-N/` folder: the weights alone, as a `.pt`, a `.safetensors` or a
    /// folder of what `save_pretrained` writes (see ``Checkpoint/planTrainerStrip(_:target:maxShardSize:)``).
    func stripTrainerFolder(_ ckpt: Checkpoint, _ o: StripOptions, maxShardSize: Int64?) throws {
        let target = try Phase.preparing(output).run {
            let target = try Checkpoint.trainerStripTarget(output, input: input)
            if maxShardSize != nil, target.kind != .folder {
                throw CheckpointError.invalidOperation("--max-shard-size writes a folder of shards: name a folder output "
                    + "(ending in / or without an extension), not a file")
            }
            return target
        }
        var plan = try Phase.reading(input).run { try ckpt.planTrainerStrip(o, target: target, maxShardSize: maxShardSize) }
        for w in plan.report.warnings { warn("\(input): \(w)") }
        var written: Int64? = nil
        let dryRun = rewriteOptions.dryRun
        if !dryRun {
            let reporter = progress.reporter(label: "strip", total: plan.strip.sourceBytes)
            defer { reporter?.finish() }
            written = try Phase.writing(plan.output, from: input).run {
                try ckpt.write(&plan, progress: reporter.map { r in { r.update($0) } })
            }
        }
        var summary = StripSummary(input: input, output: plan.output, inputBytes: ckpt.trainerFolder?.totalBytes ?? 0,
                                   outputBytes: written, dryRun: dryRun, report: plan.report)
        summary.shards = plan.shards
        emit(jsonOption.json ? summary.json.rendered() : summary.text)
    }

    /// `strip --max-shard-size` of a checkpoint file: the stripped weights record's state dict as a folder of
    /// safetensors shards (the weights only, as `strip --state-dict` would hold them; no other record).
    func stripToShards(_ ckpt: Checkpoint, _ o: StripOptions, maxShardSize: Int64) throws {
        let output = try Phase.preparing(self.output).run { try AtomicOutput.folderDestination(for: self.output) }
        let plan = try Phase.reading(input).run { try ckpt.planStrip(o) }
        for w in plan.report.warnings { warn("\(input): \(w)") }
        let dryRun = rewriteOptions.dryRun
        var shards: ConvertReport? = nil
        if !dryRun {
            let reporter = progress.reporter(label: "strip", total: plan.sourceBytes)
            defer { reporter?.finish() }
            shards = try Phase.writing(output, from: input).run {
                try ckpt.writeShardedStrip(plan, to: output, maxShardSize: maxShardSize,
                                           progress: reporter.map { r in { r.update($0) } })
            }
        }
        var summary = StripSummary(input: input, output: output, inputBytes: Int64(ckpt.fileSize),
                                   outputBytes: dryRun ? nil : TrainerFolder.folderBytes(output), dryRun: dryRun,
                                   report: plan.report)
        summary.shards = shards
        emit(jsonOption.json ? summary.json.rendered() : summary.text)
    }
}
