import ArgumentParser
import CkptCore
import Foundation

struct Strip: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "strip",
        abstract: "Write a weights-only checkpoint: the training state out, as the framework's own strip script does.",
        discussion: """
        Examples:
          ckpt strip best.pt best-stripped.pt
          ckpt strip best.pt out.pt --use-ema --half
          ckpt strip ddp.pt clean.pt --state-dict --rename module.=
          ckpt strip best.pt nc3.pt --drop model.24.
          ckpt strip last.pt out.pt --use-ema --record model --drop model.24.
          ckpt strip checkpoint-500/ model/          (a Trainer folder: config and weights, no training state)
          ckpt strip last.pt model/ --use-ema --max-shard-size 2GB

        What goes follows the conventions of the framework that wrote the file (ckpt info names it): YOLOv5 and \
        Ultralytics set optimizer, ema, updates (...) to None and epoch to -1 as their strip_optimizer does; \
        Lightning loses optimizer_states, lr_schedulers, loops, callbacks and precision state; mmengine keeps \
        meta and state_dict (publish_model.py); timm writes the bare state dict (clean_checkpoint.py); \
        torchvision's reference scripts, detectron2, fairseq and latent diffusion lose their optimizer, \
        scheduler, scaler and EMA records. A file of no known framework loses optimizer, ema, updates, scaler, \
        optimizer_state_dict, scheduler, lr_scheduler, amp and message_hub (set to None) and epoch becomes -1. \
        A record that looks like training state but no convention names is kept, with a warning.

        --record R names the weights record of the output: the one record --drop, --rename and --state-dict \
        change and whose parameters the summary counts. It is looked up after the EMA step, which it never \
        turns off: with --use-ema (or when model is None, as Ultralytics saves it) the EMA is the model, so \
        --use-ema --record model drops from the EMA's weights. Default: the framework's weights record (for \
        files of no known framework, the first of model, ema, state_dict, model_state_dict, module, net, params) \
        that is not None, else the file itself; a dotted name reaches into a dict (--record model.state_dict). \
        A record that is not a weights record (a module object, or \
        a dict holding a state dict or a module), or that strip sets to None (ema, optimizer), is refused; \
        nothing is written.

        --state-dict turns a module object into its state_dict() (tensors outside it, such as YOLOv5's \
        Detect.stride, are left out, and the summary says how many); a dict keeps its structure: a state \
        dict in it stays, modules in it become state dicts, other entries (model_args, hyper_parameters) \
        stay. The output loads with torch.load(weights_only=True): every value it would refuse becomes plain \
        data (paths: str; argparse, SimpleNamespace and omegaconf configs: dicts and lists; numpy values: \
        numbers and lists; enums: their value; datetimes: ISO strings; other objects: a dict of their \
        attributes with __class__; class references: their name), each conversion listed in the summary. \
        A value that cannot be converted fails the command, naming its path, unless --drop-unconvertible. \
        The written pickle is replayed through torch's weights_only rules before the output is renamed \
        into place: if it would be refused, nothing is written.

        A strip that would leave no tensors in the weights record of a file that holds tensors is refused, \
        unless --drop with --force asked for it.

        --framework NAME follows that training framework's conventions (which records are training state, where \
        the EMA is) instead of the detected ones. --drop-record NAME removes a top-level record and \
        --keep-record NAME keeps one as it is, whatever the conventions say; a name cannot be in both.

        --max-shard-size SIZE writes the stripped weights alone as a folder of safetensors shards and their \
        index, as Hugging Face writes them (see ckpt help consolidate): the weights record's state dict after \
        every other option (--use-ema, --drop, --rename, --half), what strip --state-dict would hold as that \
        record; the other records are not written (a sharded folder holds weights only). OUT must not exist or \
        be an empty folder. For a Trainer folder, OUT is the model folder and its weights are written as shards.

        On a terminal, work longer than a second shows its progress on stderr (bytes, rate, time left); -q hides it.
        """)

    @Argument(help: "The checkpoint to read (never modified).") var input: String
    @Argument(help: "Where to write (may be the input itself).") var output: String
    @Flag(name: .customLong("use-ema"), help: "Make the EMA the model where there is one.") var useEMA = false
    @Flag(help: "Convert floating tensors to float16 (integer buffers untouched).") var half = false
    @Flag(name: .customLong("state-dict"), help: "Write the weights as name -> tensor dicts (loads with weights_only=True).")
    var stateDict = false
    @Option(help: "Remove keys matching a glob or prefix (repeatable).") var drop: [String] = []
    @Option(help: ArgumentHelp("Rename a key prefix, OLD=NEW (repeatable; --rename module.= strips DDP's prefix).",
                               valueName: "OLD=NEW"))
    var rename: [RenamePair] = []
    @Option(name: .customLong("rename-regex"),
            help: ArgumentHelp("Rename keys by regex, 'PATTERN=REPLACEMENT' ($1 for groups).", valueName: "PATTERN=REPLACEMENT"))
    var renameRegex: [RenamePair] = []
    @Option(name: .customLong("drop-record"), help: ArgumentHelp(
        "Remove this top-level record whatever the framework's conventions say (repeatable).", valueName: "name"))
    var dropRecords: [String] = []
    @Option(name: .customLong("keep-record"), help: ArgumentHelp(
        "Keep this top-level record as it is whatever the framework's conventions say (repeatable).", valueName: "name"))
    var keepRecords: [String] = []
    @OptionGroup var recordOption: RecordOption<Self>
    @Flag(help: "Allow --drop to remove every tensor.") var force = false
    @Flag(name: .customLong("drop-unconvertible"),
          help: "With --state-dict, drop values that cannot become plain data (listed) instead of failing.")
    var dropUnconvertible = false
    @OptionGroup var frameworkOption: FrameworkOption<Self>
    @OptionGroup var rewriteOptions: RewriteOptions<Self>
    @OptionGroup var jsonOption: JSONOption<Self>
    @OptionGroup var shardOption: ShardOption
    @OptionGroup var progress: ProgressOptions

    static let record =
        "The weights record --drop, --rename and --state-dict change, after the EMA step (default: model, ...)."
    static let dryRun = "Say what would change; write nothing."
    static let allowUnsafe =
        "Rewrite a file whose pickle names dangerous globals (they are copied unchanged, as names)."
    static let json = "Print the summary as JSON."

    func validate() throws {
        if let both = dropRecords.first(where: keepRecords.contains) {
            throw ValidationError("--drop-record and --keep-record both name '\(both)'")
        }
        if dropUnconvertible && !stateDict {
            throw ValidationError("--drop-unconvertible applies to --state-dict, which makes values plain data")
        }
    }

    func run() throws {
        var o = StripOptions()
        o.useEMA = useEMA
        o.half = half
        o.stateDict = stateDict
        o.drop = drop
        o.rename = rename.map { ($0.old, $0.new) }
        o.renameRegex = renameRegex.map { ($0.old, $0.new) }
        o.record = recordOption.record
        o.force = force
        o.dropRecords = dropRecords
        o.keepRecords = keepRecords
        o.dropUnconvertible = dropUnconvertible
        let dryRun = rewriteOptions.dryRun
        let ckpt = try Phase.reading(input).run {
            try frameworkOption.apply(to: keptUntilExit(rewriteOptions.open(input)))
        }
        let maxShardSize = try shardOption.bytes(output: output)
        if ckpt.trainerFolder != nil { return try stripTrainerFolder(ckpt, o, maxShardSize: maxShardSize) }  // StripTrainer.swift
        if let maxShardSize { return try stripToShards(ckpt, o, maxShardSize: maxShardSize) }
        let plan = try Phase.reading(input).run { try ckpt.planStrip(o) }
        let output = try Phase.preparing(self.output).run { try AtomicOutput.destination(for: self.output, input: input) }
        try Phase.preparing(output).run { try OutputFormat.requireTorch(path: output, command: "strip") }
        if !dryRun {
            let reporter = progress.reporter(label: "strip", total: plan.sourceBytes)
            defer { reporter?.finish() }
            try Phase.writing(output, from: input).run {
                try Checkpoint.write(.torch(plan), sources: [ckpt], to: output, progress: reporter.map { r in { r.update($0) } })
            }
        } else {
            try Phase.reading(input).run { try Checkpoint.prepare(.torch(plan), sources: [ckpt]) }
        }
        // After the write: a refusal is one line, not the warnings of a plan that was not written.
        for w in plan.report.warnings { warn("\(input): \(w)") }
        let outSize = dryRun ? nil : (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? NSNumber)?.map { $0.int64Value }
        let summary = StripSummary(input: input, output: output, inputBytes: Int64(ckpt.fileSize),
                                   outputBytes: outSize ?? nil, dryRun: dryRun, report: plan.report)
        emit(jsonOption.json ? summary.json.rendered() : summary.text)
    }
}
