import ArgumentParser
import CkptCore

struct Keys: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "List the state_dict view of a record: name, dtype, shape.",
        discussion: """
        When the record holds tensors its state_dict view does not show (plain tensor attributes of a module, \
        non-persistent buffers, tensors inside objects that are neither modules nor dicts), one line on stderr \
        says how many:
          note: 12 tensors are not in the state_dict view of 'model'; see --all

        --all lists every tensor the record holds, each once, by its path in the object graph (dict keys, list \
        indices and attribute names joined by dots; _parameters, _buffers and _modules left out, as in \
        state_dict names); --prefix, --match and --json apply to it.
        """)

    @Argument(help: "The checkpoint.") var file: String
    @OptionGroup var recordOption: RecordOption<Self>
    @Option(help: "Only keys starting with this prefix.") var prefix: String?
    @Option(help: "Only keys matching this glob (* and ?).") var match: String?
    @Flag(help: "Every tensor the record holds, by its path in the object graph (also those outside the state_dict view).")
    var all = false
    @OptionGroup var frameworkOption: FrameworkOption<Self>
    @OptionGroup var jsonOption: JSONOption<Self>

    static let record = "Record to list (default: model, else ema, else state_dict, else the file itself)."

    func run() throws {
        let (ckpt, listing) = try Phase.reading(file).run {
            let ckpt = try frameworkOption.apply(to: keptUntilExit(Checkpoint(path: file)))
            let listing = KeysBuilder(checkpoint: ckpt, record: recordOption.record, prefix: prefix, match: match, all: all)
            return (ckpt, try listing.build())
        }
        if let n = listing.note(file: file) { note(n) }
        emit(jsonOption.json ? listing.json.rendered() : listing.table)
        if !all, let c = ckpt.torchScript?.constantsNote { note("note: \(c); see --all") }
    }
}
