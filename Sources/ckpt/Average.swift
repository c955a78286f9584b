import ArgumentParser
import CkptCore
import Foundation

struct Average: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "average",
        abstract: "Average the weights of several checkpoints (the last N of a run, a model soup) into one, in flat memory.",
        discussion: """
        Examples:
          ckpt average epoch8.pt epoch9.pt epoch10.pt avg.pt
          ckpt average last-3.pt last-2.pt last.pt avg.pt --use-ema
          ckpt average a.safetensors b.pt avg.pt --weights 1,3 --state-dict

        Each input's weights record is chosen as strip chooses it: the model, or with --use-ema the EMA where there \
        is one; --record names it. Every input must have the same tensor names, shapes and dtypes there (and the same \
        storage layout: which tensors share a storage, at which offsets); otherwise nothing is written and the first \
        tensor that differs is named.

        Each floating-point tensor of OUT is sum_i(w_i * x_i) / sum_i(w_i), computed in float64 (the sum from the \
        first input to the last) and converted to the inputs' dtype as torch's .to(dtype) converts float64 (to \
        float16 and bfloat16 through float32): bit for bit what torch computes with float64 tensors. Integer and \
        bool tensors (num_batches_tracked, index buffers) are the last input's. --weights W1,W2,... gives one \
        positive finite weight per input (default: equal).

        The rest of OUT is what `ckpt strip LAST OUT` (with --use-ema, --state-dict, --record) writes for the last \
        input: training state out, epoch -1, the same records; shared storages stay shared. A record averaged_from \
        lists each input's file name, sha256 and weight (for a file that is a state dict, an attribute of it: \
        sd.averaged_from).

        Storages stream from every input at once, a block at a time: memory stays flat whatever the size or number \
        of the inputs. On a terminal, work longer than a second shows its progress on stderr; -q hides it.
        """)

    @Argument(help: ArgumentHelp("The checkpoints to average (two or more, never modified), then where to write.",
                                 valueName: "IN1 IN2 [IN3 ...] OUT"))
    var paths: [String]
    @Option(help: ArgumentHelp("One positive finite weight per input (default: equal).", valueName: "W1,W2,..."))
    var weights: String?
    @Flag(name: .customLong("use-ema"), help: "Average the EMA weights where there is one (as strip --use-ema).")
    var useEMA = false
    @Flag(name: .customLong("state-dict"), help: "Write the weights as name -> tensor dicts (loads with weights_only=True).")
    var stateDict = false
    @OptionGroup var recordOption: RecordOption<Self>
    @OptionGroup var frameworkOption: FrameworkOption<Self>
    @OptionGroup var rewriteOptions: RewriteOptions<Self>
    @OptionGroup var jsonOption: JSONOption<Self>
    @OptionGroup var progress: ProgressOptions

    static let record = "The weights record of every input (default: as strip chooses it: model, ...)."
    static let dryRun = "Say what would be written; write nothing."
    static let json = "Print the summary as JSON."

    func validate() throws {
        guard paths.count >= 3 else {
            throw ValidationError("give two or more checkpoints to average, then the output")
        }
    }

    func run() throws {
        let inputs = Array(paths.dropLast())
        let output = paths[paths.count - 1]
        let parsed = try weights.map { text in
            try text.split(separator: ",", omittingEmptySubsequences: false).map { part in
                let t = part.trimmingCharacters(in: .whitespaces)
                guard let v = Double(t) else { throw Failure(message: "--weights: '\(t)' is not a number") }
                return v
            }
        }
        let w: [Double]
        do { w = try Checkpoint.averageWeights(parsed, inputs: inputs.count) } catch {
            throw Failure(message: error.description.replacingOccurrences(of: "invalid operation: ", with: ""))
        }
        let last = inputs[inputs.count - 1]
        var ckpts: [Checkpoint] = []
        for path in inputs {
            let c = try Phase.reading(path).run { try frameworkOption.apply(to: keptUntilExit(rewriteOptions.open(path))) }
            if c.trainerFolder != nil {
                throw Failure(message: "\(path): a Trainer folder: name its weights file (or its model folder) instead")
            }
            ckpts.append(c)
        }
        let dest = try Phase.preparing(output).run { try AtomicOutput.destination(for: output, input: last) }
        try Phase.preparing(dest).run { try OutputFormat.requireTorch(path: dest, command: "average") }
        var options = AverageOptions()
        options.useEMA = useEMA
        options.stateDict = stateDict
        options.record = recordOption.record
        // Each file input is hashed on a second thread while the storages are averaged (started once the plan holds:
        // a refusal costs no read); the writer puts the digests into averaged_from at the end, in place of
        // same-length placeholders (SurgeryPlan.lateStrings).
        let hashed: [String?] = ckpts.map { c in
            var isFolder: ObjCBool = false
            return FileManager.default.fileExists(atPath: c.file, isDirectory: &isFolder) && isFolder.boolValue ? nil : c.file
        }
        let digests = BackgroundDigests(paths: hashed)
        let placeholder = String(repeating: "0", count: 64)
        let sources = inputs.indices.map { i in
            AverageInput(path: inputs[i], file: Self.name(inputs[i]), sha256: hashed[i] == nil ? nil : placeholder, weight: w[i])
        }
        let (plan, planned) = try Phase.reading(last).run {
            try Checkpoint.planAverage(ckpts, sources, options: options, digests: { try digests.wait() })
        }
        var report = planned
        digests.start()
        for warning in plan.report.warnings { warn("\(last): \(warning)") }
        let dryRun = rewriteOptions.dryRun
        if !dryRun {
            let reporter = progress.reporter(label: "average", total: plan.sourceBytes)
            defer { reporter?.finish() }
            try Phase.writing(dest, from: last).run {
                try Checkpoint.write(.torch(plan), sources: ckpts, to: dest, progress: reporter.map { r in { r.update($0) } })
            }
        }
        let done = try Phase.reading(last).run { try digests.wait() }  // in the output already; with --dry-run, now
        for i in report.inputs.indices { report.inputs[i].sha256 = done[i] }
        let outSize = dryRun ? nil : (try? FileManager.default.attributesOfItem(atPath: dest)[.size] as? NSNumber)?.map { $0.int64Value }
        let summary = AverageSummary(output: dest, outputBytes: outSize ?? nil, dryRun: dryRun, report: report)
        emit(jsonOption.json ? summary.json.rendered() : summary.text)
    }

    /// The name `averaged_from` records: the path's last component (a folder's name for a folder).
    static func name(_ path: String) -> String {
        let trimmed = path.hasSuffix("/") ? String(path.dropLast()) : path
        return (trimmed as NSString).lastPathComponent
    }
}
