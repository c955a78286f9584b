import ArgumentParser
import CkptCore
import Foundation

struct Scan: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "scan",
        abstract: "List every global the file's pickles name, with how they use it, classed safe, needs-code or dangerous.",
        discussion: """
        Nothing is imported or run: the opcode stream is followed as the unpickler would, and each global is
        listed once per use: called (REDUCE, INST, OBJ, NEWOBJ with arguments), constructed (NEWOBJ with none),
        setstate (BUILD on a constructed object runs its class's __setstate__), or referenced only.
          safe        an allow-listed call (torch's weights_only list, numpy reconstruction, TorchScript
                      builders, plain data types), or a reference to one
          needs-code  a class of a model's or framework's own code (models.yolo.DetectionModel): that code
                      runs when the file loads; the report names the modules and labels known frameworks
          dangerous   any other call (os.system, codecs.open, pathlib.Path.write_text, ...), a call of a
                      computed callable, a BUILD running a standard-library or torch __setstate__, or a
                      global whose name is computed
        Also says whether torch.load(weights_only=True) would load the file as it stands.
        An ambiguous container (bytes torch.load reads differently from another reader: data before a
        zip, a tar that is also a zip or a pickle, names that differ only in case, duplicate names, two
        end records, local and central names that differ) is reported with what torch.load reads.
        Exit status: 0 nothing dangerous; 1 something dangerous or an ambiguous container (or, with --strict,
        anything needs-code);
        2 the file cannot be read.

        --weights-only (for CI): only whether torch.load(weights_only=True) would load the file. Exit 0 if it
        would, 1 if not: the first refusal, the refused value's path in the file when it can be found there, and
        the conversion ckpt strip --state-dict applies to it (or that none can). 2 when the file cannot be read.
        """)

    @Argument(help: "The file to scan.") var file: String
    @OptionGroup var jsonOption: JSONOption<Self>
    @Flag(help: "Exit 1 when the file needs any code beyond the allow-lists (a needs-code row) too.") var strict = false
    @Flag(name: .customLong("weights-only"),
          help: "Only say whether torch.load(weights_only=True) loads the file: exit 0 if it does, 1 if not.")
    var weightsOnly = false

    func validate() throws {
        if weightsOnly && strict { throw ValidationError("--strict and --weights-only cannot be combined") }
    }

    func run() throws {
        if weightsOnly {
            guard !isFolder(file) else {
                throw Failure(message: "\(file): --weights-only checks a file (torch.load reads files), not a folder")
            }
            let check = try Phase.reading(file).run { try WeightsOnlyCheckBuilder(path: file).build() }
            emit(jsonOption.json ? check.json.rendered() : check.text)
            if !check.loads {
                throw Failure(message: "\(file): torch.load(weights_only=True) would refuse it: \(check.reason ?? "")", code: 1)
            }
            return
        }
        // A Trainer checkpoint folder is read through its weights, but resuming from it unpickles its other files too
        // (optimizer.pt, rng_state.pth, training_args.bin, ...): each is scanned, and a folder inside it is named as
        // not scanned, so that no verdict covers what was not read.
        let folder = isFolder(file) ? (try? Checkpoint(path: file))?.trainerFolder : nil
        guard let folder else { return try scanOne(file) }
        let base = folder.folder.hasSuffix("/") ? folder.folder : folder.folder + "/"
        var failure: Failure?
        let others = (folder.trainingState + folder.other).map(\.name)
        for (i, f) in ([file] + others.filter { !$0.hasSuffix("/") && TrainerFolder.mayHoldPickles($0) }.map { base + $0 }).enumerated() {
            if i > 0 { emit("") }
            if !jsonOption.json { emit("== \(f)") }
            do { try scanOne(f) } catch let e as Failure {
                FileHandle.standardError.write(Data("ckpt: \(e.message)\n".utf8))
                if failure == nil || e.code == 1 && failure!.code != 1 { failure = e }
            }
        }
        for sub in others where sub.hasSuffix("/") { note("note: \(base + sub) (a folder of training state) was not scanned") }
        if let failure { throw Failure(message: "\(file): a file in the folder: \(failure.message)", code: failure.code) }
    }

    private func isFolder(_ path: String) -> Bool {
        var d: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &d) && d.boolValue
    }

    private func scanOne(_ file: String) throws {
        let report = try Phase.reading(file).run { try ScanBuilder(path: file).build() }
        if !report.isDangerous, !report.isAmbiguous, let e = report.readError {
            // What torch.load(weights_only=True) decides before unpickling (a TorchScript zip) still holds.
            let prediction = report.weightsOnlyReason.flatMap { r in
                r.hasPrefix("the file cannot be read") ? nil : "; weights_only=True: refused, \(r)"
            } ?? ""
            throw Failure(message: "\(file): \(e.description)\(prediction)")
        }
        emit(jsonOption.json ? report.json.rendered() : report.table)
        if report.isDangerous || report.isAmbiguous {
            throw Failure(message: "\(file): \(report.verdictLine)", code: 1)
        }
        if strict && report.count(.needsCode) > 0 {
            throw Failure(message: "\(file): --strict: \(report.verdictLine)", code: 1)
        }
    }
}
