import ArgumentParser
import CkptCore
import Foundation

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Write a record's state dict in another format: .safetensors, or a weights-only torch file.",
        discussion: """
        The input may be a torch file (zip or legacy), .safetensors, a sharded checkpoint's index
        (pytorch_model.bin.index.json, model.safetensors.index.json) or an .onnx model. The output format
        follows OUT's extension: .safetensors, else a torch zip file that loads with weights_only=True.
        To safetensors, views are compacted and tensors sharing a storage are stored once, as Hugging Face's
        convert.py does (the aliases are listed in __metadata__ with "format": "pt").

        Examples:
          ckpt convert best.pt best.safetensors
          ckpt convert last.pt ema.safetensors --record ema
          ckpt convert model.safetensors model.pt
          ckpt convert pytorch_model.bin.index.json model.safetensors
        """)

    @Argument(help: "The checkpoint to read (never modified).") var input: String
    @Argument(help: "Where to write; the extension picks the format.") var output: String
    @Option(help: "Record to convert (default: model, else ema, else state_dict, else the file itself).")
    var record: String?
    @Flag(name: .customLong("dry-run"), help: "Say what would be written; write nothing.") var dryRun = false
    @Flag(help: "Print the summary as JSON.") var json = false
    @Flag(name: .customLong("allow-unsafe"),
          help: "Rewrite a file whose pickle names dangerous globals (see ckpt scan).")
    var allowUnsafe = false

    func run() throws {
        let ckpt = try reporting(input) { try Checkpoint.openForRewriting(path: input, allowUnsafe: allowUnsafe) }
        let output = try reporting(self.output) { try AtomicOutput.destination(for: self.output, input: input) }
        let format = try reporting(output) { try OutputFormat(path: output) }
        let (plan, report): (OutputPlan, ConvertReport)
        switch format {
        case .safetensors:
            let p = try reporting(input) { try ckpt.planSafetensors(record: record, output: output) }
            (plan, report) = (.safetensors(p), p.report)
        case .torch:
            let (p, r) = try reporting(input) { try ckpt.planTorchStateDict(record: record, output: output) }
            (plan, report) = (.torch(p), r)
        }
        if !dryRun { try writing(output) { try Checkpoint.write(plan, sources: [ckpt], to: output) } }
        for w in report.warnings { warn("\(input): \(w)") }
        emit(json ? report.json.rendered() : (dryRun ? "dry run: nothing written\n" : "") + report.text)
    }

    /// Runs a write: read faults belong to the input, the rest to the output.
    private func writing(_ output: String, _ body: () throws -> Void) throws {
        do {
            try body()
        } catch let e as CheckpointError {
            throw Failure(message: "\(input): \(e.description)")
        } catch {
            try reporting(output) { throw error }
        }
    }
}
