import ArgumentParser
import CkptCore
import Foundation

struct Convert: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Write a record's state dict in another format: .safetensors, or a weights-only torch file.",
        discussion: """
        The input may be a torch file (zip or legacy), .safetensors, a sharded checkpoint's index
        (pytorch_model.bin.index.json, model.safetensors.index.json) or an .onnx model. The output format
        follows OUT's extension: .safetensors, else a torch zip file that loads with weights_only=True
        (non-tensor values made plain data as strip --state-dict makes them, and the written pickle replayed
        through torch's weights_only rules before the rename: if it would be refused, nothing is written).
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
    @OptionGroup var recordOption: RecordOption<Self>
    @OptionGroup var frameworkOption: FrameworkOption<Self>
    @OptionGroup var rewriteOptions: RewriteOptions<Self>
    @OptionGroup var jsonOption: JSONOption<Self>
    @Flag(name: .customLong("drop-unconvertible"),
          help: "To a torch file, drop values that cannot become plain data (listed) instead of failing.")
    var dropUnconvertible = false

    static let record = "Record to convert (default: model, else ema, else state_dict, else the file itself)."
    static let json = "Print the summary as JSON."

    func run() throws {
        let record = recordOption.record, dryRun = rewriteOptions.dryRun
        let ckpt = try Phase.reading(input).run { try frameworkOption.apply(to: rewriteOptions.open(input)) }
        let output = try Phase.preparing(self.output).run { try AtomicOutput.destination(for: self.output, input: input) }
        let format = try Phase.preparing(output).run { try OutputFormat(path: output) }
        let (plan, report): (OutputPlan, ConvertReport)
        switch format {
        case .safetensors:
            let p = try Phase.reading(input).run { try ckpt.planSafetensors(record: record, output: output) }
            (plan, report) = (.safetensors(p), p.report)
        case .torch:
            let (p, r) = try Phase.reading(input).run { try ckpt.planTorchStateDict(record: record, output: output, dropUnconvertible: dropUnconvertible)
            }
            (plan, report) = (.torch(p), r)
        }
        if !dryRun { try Phase.writing(output, from: input).run { try Checkpoint.write(plan, sources: [ckpt], to: output) } }
        for w in report.warnings { warn("\(input): \(w)") }
        emit(jsonOption.json ? report.json.rendered() : (dryRun ? "dry run: nothing written\n" : "") + report.text)
    }
}
