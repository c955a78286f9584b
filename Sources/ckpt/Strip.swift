import ArgumentParser
import CkptCore
import Foundation

struct Strip: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strip",
        abstract: "Write a weights-only checkpoint: optimizer, EMA and counters out, epoch -1.",
        discussion: """
        Examples:
          ckpt strip best.pt best-stripped.pt
          ckpt strip best.pt out.pt --use-ema --half
          ckpt strip ddp.pt clean.pt --state-dict --rename module.=
          ckpt strip best.pt nc3.pt --drop model.24.
          ckpt strip last.pt out.pt --use-ema --record model --drop model.24.

        --record R names the weights record of the output: the one record --drop, --rename and --state-dict \
        change and whose parameters the summary counts. It is looked up after the EMA step, which it never \
        turns off: with --use-ema (or when model is None, as Ultralytics saves it) the EMA is the model, so \
        --use-ema --record model drops from the EMA's weights. Default: the first of model, ema, state_dict, \
        model_state_dict, module, net, params that is not None, else the file itself; a dotted name reaches \
        into a dict (--record model.state_dict). A record that is not a weights record (a module object, or \
        a dict holding a state dict or a module), or that strip sets to None (ema, optimizer), is refused; \
        nothing is written.

        --state-dict turns a module object into its state_dict() (tensors outside it, such as YOLOv5's \
        Detect.stride, are left out, and the summary says how many); a dict keeps its structure: a state \
        dict in it stays, modules in it become state dicts, other entries (model_args, hyper_parameters) \
        stay.

        A strip that would leave no tensors in the weights record of a file that holds tensors is refused, \
        unless --drop with --force asked for it.

        On a terminal, work longer than a second shows its progress on stderr (bytes, rate, time left); -q hides it.
        """)

    @Argument(help: "The checkpoint to read (never modified).") var input: String
    @Argument(help: "Where to write (may be the input itself).") var output: String
    @Flag(name: .customLong("use-ema"), help: "Make the EMA the model where there is one.") var useEMA = false
    @Flag(help: "Convert floating tensors to float16 (integer buffers untouched).") var half = false
    @Flag(name: .customLong("state-dict"), help: "Write the weights as name -> tensor dicts (loads with weights_only=True).")
    var stateDict = false
    @Option(help: "Remove keys matching a glob or prefix (repeatable).") var drop: [String] = []
    @Option(help: "Rename a key prefix, OLD=NEW (repeatable; --rename module.= strips DDP's prefix).")
    var rename: [String] = []
    @Option(name: .customLong("rename-regex"), help: "Rename keys by regex, 'PATTERN=REPLACEMENT' ($1 for groups).")
    var renameRegex: [String] = []
    @Option(help: "The weights record --drop, --rename and --state-dict change, after the EMA step (default: model, ...).")
    var record: String?
    @Flag(help: "Allow --drop to remove every tensor.") var force = false
    @Flag(name: .customLong("dry-run"), help: "Say what would change; write nothing.") var dryRun = false
    @Flag(name: .customLong("allow-unsafe"),
          help: "Rewrite a file whose pickle names dangerous globals (they are copied unchanged, as names).")
    var allowUnsafe = false
    @Flag(help: "Print the summary as JSON.") var json = false
    @OptionGroup var progress: ProgressOptions

    func validate() throws {
        for r in rename + renameRegex where !r.contains("=") {
            throw ValidationError("'\(r)' is not OLD=NEW")
        }
    }

    func run() throws {
        var o = StripOptions()
        o.useEMA = useEMA
        o.half = half
        o.stateDict = stateDict
        o.drop = drop
        o.rename = rename.map(splitPair)
        o.renameRegex = renameRegex.map(splitPair).map { ($0.0, $0.1) }
        o.record = record
        o.force = force
        let (ckpt, plan) = try reporting(input) { () throws -> (Checkpoint, SurgeryPlan) in
            let c = keptUntilExit(try Checkpoint.openForRewriting(path: input, allowUnsafe: allowUnsafe))
            return (c, try c.planStrip(o))
        }
        let output = try reporting(self.output) { try AtomicOutput.destination(for: self.output, input: input) }
        try reporting(output) { try OutputFormat.requireTorch(path: output, command: "strip") }
        for w in plan.report.warnings { warn("\(input): \(w)") }
        if !dryRun {
            let reporter = progress.reporter(label: "strip", total: plan.sourceBytes)
            defer { reporter?.finish() }
            do {
                try Checkpoint.write(.torch(plan), sources: [ckpt], to: output, progress: reporter.map { r in { r.update($0) } })
            } catch let e as CheckpointError {
                throw Failure(message: "\(input): \(e.description)")  // read faults belong to the input
            } catch {
                try reporting(output) { throw error }
            }
        }
        let outSize = dryRun ? nil : (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? NSNumber)?.map { $0.int64Value }
        let summary = StripSummary(input: input, output: output, inputBytes: Int64(ckpt.fileSize),
                                   outputBytes: outSize ?? nil, dryRun: dryRun, report: plan.report)
        emit(json ? summary.json.rendered() : summary.text)
    }
}

func splitPair(_ s: String) -> (String, String) {
    let i = s.firstIndex(of: "=")!
    return (String(s[..<i]), String(s[s.index(after: i)...]))
}
