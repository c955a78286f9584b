import ArgumentParser
import CkptCore

struct Scan: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scan",
        abstract: "List every global the file's pickles name, classed safe, needs-code or dangerous.",
        discussion: """
        Nothing is imported or run: globals are read as names from the raw opcode stream.
          safe        allowed by torch.load(weights_only=True), or numpy array reconstruction
          needs-code  a class or function that needs its source to load (models.yolo.DetectionModel)
          dangerous   can run commands or code when unpickled (os.system, builtins.eval, ...),
                      or a STACK_GLOBAL whose names are computed instead of plain strings
        Also says whether torch.load(weights_only=True) would load the file as it stands.
        An ambiguous container (bytes torch.load reads differently from another reader: data before a
        zip, a tar that is also a zip or a pickle, names that differ only in case, duplicate names, two
        end records, local and central names that differ) is reported with what torch.load reads.
        Exit status: 0 nothing dangerous; 1 something dangerous or an ambiguous container;
        2 the file cannot be read.
        """)

    @Argument(help: "The file to scan.") var file: String
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let report = try reporting(file) { try Checkpoint.scan(path: file) }
        if !report.isDangerous, !report.isAmbiguous, let e = report.readError {
            throw Failure(message: "\(file): \(e.description)")
        }
        emit(json ? report.json.rendered() : report.table)
        if report.isDangerous || report.isAmbiguous {
            throw Failure(message: "\(file): \(report.verdictLine)", code: 1)
        }
    }
}
