import ArgumentParser
import CkptCore
import Foundation

extension Strip {
    /// `strip` of a Hugging Face Trainer `checkpoint-N/` folder: the weights alone, as a `.pt`, a `.safetensors` or a
    /// folder of what `save_pretrained` writes (see ``Checkpoint/planTrainerStrip(_:target:)``).
    func stripTrainerFolder(_ ckpt: Checkpoint, _ o: StripOptions) throws {
        let target = try Phase.preparing(output).run { try Checkpoint.trainerStripTarget(output, input: input) }
        let plan = try Phase.reading(input).run { try ckpt.planTrainerStrip(o, target: target) }
        for w in plan.report.warnings { warn("\(input): \(w)") }
        var written: Int64? = nil
        let dryRun = rewriteOptions.dryRun
        if !dryRun {
            let reporter = progress.reporter(label: "strip", total: plan.strip.sourceBytes)
            defer { reporter?.finish() }
            written = try Phase.writing(plan.output, from: input).run {
                try ckpt.write(plan, progress: reporter.map { r in { r.update($0) } })
            }
        }
        let summary = StripSummary(input: input, output: plan.output, inputBytes: ckpt.trainerFolder?.totalBytes ?? 0,
                                   outputBytes: written, dryRun: dryRun, report: plan.report)
        emit(jsonOption.json ? summary.json.rendered() : summary.text)
    }
}
