import ArgumentParser
import CkptCore
import Foundation

extension Strip {
    /// `strip` of a Hugging Face Trainer `checkpoint-N/` folder: the weights alone, as a `.pt`, a `.safetensors` or a
    /// folder of what `save_pretrained` writes (see ``Checkpoint/planTrainerStrip(_:target:)``).
    func stripTrainerFolder(_ ckpt: Checkpoint, _ o: StripOptions) throws {
        let target = try reporting(output) { try Checkpoint.trainerStripTarget(output, input: input) }
        let plan = try reporting(input) { try ckpt.planTrainerStrip(o, target: target) }
        for w in plan.report.warnings { warn("\(input): \(w)") }
        var written: Int64? = nil
        if !dryRun {
            let reporter = progress.reporter(label: "strip", total: plan.strip.sourceBytes)
            defer { reporter?.finish() }
            do {
                written = try ckpt.write(plan, progress: reporter.map { r in { r.update($0) } })
            } catch let e as CheckpointError {
                throw Failure(message: "\(input): \(e.description)")  // read faults belong to the input
            } catch {
                try reporting(plan.output) { throw error }
            }
        }
        let summary = StripSummary(input: input, output: plan.output, inputBytes: ckpt.trainerFolder?.totalBytes ?? 0,
                                   outputBytes: written, dryRun: dryRun, report: plan.report)
        emit(json ? summary.json.rendered() : summary.text)
    }
}
