import ArgumentParser
import CkptCore
import Foundation

/// `-q, --quiet` for commands that move storage bytes.
struct ProgressOptions: ParsableArguments {
    @Flag(name: [.customShort("q"), .long], help: "Print no progress line on stderr (there is none when stderr is not a terminal).")
    var quiet = false

    /// A reporter writing to stderr, or nil when `--quiet` is given or stderr is not a terminal. It stays silent
    /// for work shorter than a second; `CKPT_PROGRESS_DELAY` (seconds) changes that, for tests.
    func reporter(label: String, total: Int64) -> ProgressReporter? {
        guard !quiet, isatty(STDERR_FILENO) == 1 else { return nil }
        let delay = ProcessInfo.processInfo.environment["CKPT_PROGRESS_DELAY"].flatMap(Double.init) ?? 1
        return ProgressReporter(label: label, total: total, delay: delay) { text in
            FileHandle.standardError.write(Data(text.utf8))
        }
    }
}
