import Foundation
import Testing
@testable import CkptCore

/// Replays every input the fuzzers ever crashed on (fuzz/crashers/<kind>/, kept by scripts/fuzz) through the
/// same code the fuzz targets run (``FuzzEntryPoints``). Reaching the end of each without a crash is the test.
@Suite struct FuzzRegressionTests {
    static func inputs(_ kind: String) -> [String] {
        let dir = Oracle.repoRoot.appendingPathComponent("fuzz/crashers/\(kind)").path
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { !$0.hasPrefix(".") && $0 != "README.md" }.sorted().map { "\(dir)/\($0)" }
    }

    @Test func thereAreCrashersToReplay() {
        #expect(!Self.inputs("checkpoint").isEmpty)
    }

    @Test(arguments: inputs("pickle"))
    func pickleCrasher(_ path: String) throws {
        FuzzEntryPoints.pickle(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
    }

    @Test(arguments: inputs("checkpoint"))
    func checkpointCrasher(_ path: String) throws {
        FuzzEntryPoints.checkpoint(path: path)
        FuzzEntryPoints.dcpMetadata(path: path)
        // And the reader refuses it cleanly: these inputs are damaged files.
        #expect(throws: CheckpointError.self) { try Checkpoint(path: path) }
    }

    /// The seed corpora go through the same code (they must not crash either, and most must open).
    @Test func seedCorporaRun() throws {
        let root = Oracle.repoRoot.appendingPathComponent("fuzz/corpus")
        for kind in ["pickle", "checkpoint"] {
            let dir = root.appendingPathComponent(kind).path
            for name in try FileManager.default.contentsOfDirectory(atPath: dir).sorted() {
                let path = "\(dir)/\(name)"
                if kind == "pickle" {
                    FuzzEntryPoints.pickle(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
                } else {
                    FuzzEntryPoints.checkpoint(path: path)
                    FuzzEntryPoints.dcpMetadata(path: path)
                }
            }
        }
    }
}
