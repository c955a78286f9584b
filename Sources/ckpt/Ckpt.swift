import ArgumentParser
import CkptCore
import Foundation

@main
struct Ckpt: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ckpt",
        abstract: "Inspect and rewrite PyTorch checkpoints without executing them.",
        discussion: """
        Exit status: 0 success; 1 differences found (diff) or dangerous globals (scan finds them; rewriting
        commands refuse such files unless --allow-unsafe); 2 bad input or misuse.
        """,
        version: "0.1.0",
        subcommands: [Info.self, Keys.self, Scan.self, Strip.self, Diff.self, Transfer.self, Layers.self, Convert.self,
                      Consolidate.self, Average.self]
    )

    static func main() {
        // libzip converts each record's DOS time with mktime(); with TZ unset, glibc stats /etc/localtime on every
        // call (two per record: 3,800 system calls for a YOLOv5x checkpoint). ":/etc/localtime" is what an unset TZ
        // means, so nothing else changes; glibc then reads the file once.
        if getenv("TZ") == nil { setenv("TZ", ":/etc/localtime", 0) }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let e as Failure {
            FileHandle.standardError.write(Data("ckpt: \(e.message)\n".utf8))
            Foundation.exit(e.code)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            let message = fullMessage(for: error)
            FileHandle.standardError.write(Data("ckpt: \(message.split(separator: "\n").first.map(String.init) ?? message)\n".utf8))
            if message.contains("\n") { FileHandle.standardError.write(Data("\(usageString())\n".utf8)) }
            Foundation.exit(2)
        }
    }
}

/// Objects left for the process exit to reclaim: freeing a decoded checkpoint (tens of thousands of graph nodes)
/// takes longer than listing its keys, and the process ends right after the command anyway.
nonisolated(unsafe) private var keptUntilExit: [AnyObject] = []

/// Returns `object`, kept alive until the process exits (see `keptUntilExit`).
func keptUntilExit<T: AnyObject>(_ object: T) -> T {
    keptUntilExit.append(object)
    return object
}

/// Writes a line to stdout.
func emit(_ s: String) {
    FileHandle.standardOutput.write(Data((s + "\n").utf8))
}

/// Writes a line to stderr.
func warn(_ s: String) {
    FileHandle.standardError.write(Data(("ckpt: " + s + "\n").utf8))
}

/// Writes a note (`note: ...`, said about a file that was read) to stderr as it is: stdout stays the report.
func note(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}
