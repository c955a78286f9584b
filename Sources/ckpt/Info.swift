import ArgumentParser
import CkptCore

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show a checkpoint's container and every top-level record.")

    @Argument(help: "The checkpoint.") var file: String
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let report = try reporting(file) { try keptUntilExit(Checkpoint(path: file)).info() }
        emit(json ? report.json.rendered() : report.table)
    }
}
