import ArgumentParser
import CkptCore

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "List the state_dict view of a record: name, dtype, shape.")

    @Argument(help: "The checkpoint.") var file: String
    @Option(help: "Record to list (default: model, else ema, else state_dict, else the file itself).")
    var record: String?
    @Option(help: "Only keys starting with this prefix.") var prefix: String?
    @Option(help: "Only keys matching this glob (* and ?).") var match: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let ckpt = try reporting(file) { try keptUntilExit(Checkpoint(path: file)) }
        let listing = try reporting(file) { try ckpt.keys(record: record, prefix: prefix, match: match) }
        emit(json ? listing.json.rendered() : listing.table)
        if let note = ckpt.torchScript?.constantsNote { warn("\(file): note: \(note)") }
    }
}
