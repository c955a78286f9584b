import ArgumentParser
import CkptCore

// Options several commands share, as `@OptionGroup`s: each means the same in every command that has it, and a
// command has only those that mean something for it (scan has no --record; only the commands that write have
// --dry-run and --allow-unsafe). What an option acts on differs (a summary or a report; the record to list, to
// convert or to compare), so each command words their help through ``OptionTexts``.

/// The help of the shared options, worded for one command (the defaults fit most).
protocol OptionTexts {
    static var json: String { get }
    static var record: String { get }
    static var dryRun: String { get }
    static var allowUnsafe: String { get }
    static var framework: String { get }
}

extension OptionTexts {
    static var json: String { "Print JSON." }
    static var record: String { "Record to read (default: model, else ema, else state_dict, else the file itself)." }
    static var dryRun: String { "Say what would be written; write nothing." }
    static var allowUnsafe: String { "Rewrite a file whose pickle names dangerous globals (see ckpt scan)." }
    static var framework: String {
        "Follow this training framework's conventions, not the detected ones (yolov5, ultralytics, lightning, timm, ...)."
    }
}

/// `--json`: every command.
struct JSONOption<Texts: OptionTexts>: ParsableArguments {
    @Flag(help: ArgumentHelp(Texts.json)) var json = false
}

/// `--record R`: the commands that read one record of a file.
struct RecordOption<Texts: OptionTexts>: ParsableArguments {
    @Option(help: ArgumentHelp(Texts.record)) var record: String?
}

/// `--dry-run` and `--allow-unsafe`: the commands that write a file.
struct RewriteOptions<Texts: OptionTexts>: ParsableArguments {
    @Flag(name: .customLong("dry-run"), help: ArgumentHelp(Texts.dryRun)) var dryRun = false
    @Flag(name: .customLong("allow-unsafe"), help: ArgumentHelp(Texts.allowUnsafe)) var allowUnsafe = false

    /// Opens `path` to be rewritten: refused when it names dangerous globals or is an ambiguous container, unless
    /// `--allow-unsafe`.
    func open(_ path: String) throws(CheckpointError) -> Checkpoint {
        try Checkpoint.openForRewriting(path: path, allowUnsafe: allowUnsafe)
    }
}

/// `--framework NAME`: the commands that follow a framework's conventions (all but scan).
struct FrameworkOption<Texts: OptionTexts>: ParsableArguments {
    @Option(help: ArgumentHelp(Texts.framework, valueName: "name")) var framework: String?

    /// `checkpoint`, told to follow the named framework's conventions when one is named (an unknown name throws).
    @discardableResult
    func apply(to checkpoint: Checkpoint) throws(CheckpointError) -> Checkpoint {
        if let framework { try checkpoint.useFramework(framework) }
        return checkpoint
    }
}

/// `OLD=NEW`, split at the first `=`; either side may be empty (`--rename module.=` strips DDP's prefix,
/// `--map =module.` adds it). A value without `=` is refused when the arguments are parsed.
struct RenamePair: ExpressibleByArgument {
    var old: String
    var new: String

    init?(argument: String) {
        guard let i = argument.firstIndex(of: "=") else { return nil }
        old = String(argument[..<i])
        new = String(argument[argument.index(after: i)...])
    }
}
