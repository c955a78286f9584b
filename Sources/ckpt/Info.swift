import ArgumentParser
import CkptCore

struct Info: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show a checkpoint's container and every top-level record.",
        discussion: """
        The tensors column counts each record's state_dict view (what ckpt keys lists). For each record that \
        holds tensors outside that view, one line on stderr says how many (ckpt keys --record R --all lists them):
          note: 12 tensors are not in the state_dict view of 'model'; see --all
        """)

    @Argument(help: "The checkpoint.") var file: String
    @OptionGroup var frameworkOption: FrameworkOption<Self>
    @OptionGroup var jsonOption: JSONOption<Self>

    func run() throws {
        let report = try Phase.reading(file).run {
            try InfoBuilder(checkpoint: frameworkOption.apply(to: keptUntilExit(Checkpoint(path: file)))).build()
        }
        for n in report.notes { note(n) }
        emit(jsonOption.json ? report.json.rendered() : report.table)
    }
}
