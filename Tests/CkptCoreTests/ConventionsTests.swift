import Foundation
import Testing
@testable import CkptCore

/// The framework convention table (issue 13): its invariants as data, detection on the fixtures whose writers
/// fixtures/README.md names, and the surgery steps each entry drives. The interop tests compare strip's output with
/// torch and the frameworks' own loaders; these pin the table itself.
@Suite struct ConventionsTests {
    @Test func everyEntryIsNamedOnceAndCitesItsSources() {
        let ids = FrameworkConvention.all.map(\.id)
        #expect(Set(ids).count == ids.count)
        for c in FrameworkConvention.all {
            #expect(FrameworkConvention.named(c.id)?.id == c.id)
            #expect(FrameworkConvention.named(c.id.uppercased())?.id == c.id)
            #expect(!c.sources.isEmpty, "\(c.id) cites no upstream file")
            // A record is never both training state and read by the framework's loader.
            #expect(Set(c.trainingState).isDisjoint(with: c.loaderReads), "\(c.id)")
            if let keep = c.keepOnly { #expect(Set(keep).isDisjoint(with: c.trainingState), "\(c.id)") }
        }
        #expect(FrameworkConvention.named("no-such") == nil)
    }

    /// The fixtures' writers, as fixtures/README.md describes them; files of no framework fall back to the generic table.
    @Test(arguments: [("yolov5s-train", "yolov5"), ("yolov5s-nc3-init", "yolov5"), ("ultralytics-train", "ultralytics"),
                      ("mmlab-style", "mmengine"), ("resnet-nested", nil), ("resnet-sd", nil), ("dtypes", nil)]
          as [(String, String?)])
    func detectsTheFixturesWriter(name: String, framework: String?) throws {
        let c = try Checkpoint(path: Oracle.fixture("\(name).pt"))
        #expect(c.framework?.convention.id == framework, "\(name): \(c.framework?.evidence ?? [])")
        if let f = c.framework { #expect(f.evidence.count >= 2 && !f.named) }
    }

    @Test func namingAFrameworkOverridesDetection() throws {
        let c = try Checkpoint(path: Oracle.fixture("resnet-nested.pt"))
        #expect(c.framework == nil)
        try c.useFramework("torchvision")
        #expect(c.framework?.convention.id == "torchvision" && c.framework?.named == true)
        #expect(throws: CheckpointError.self) { try c.useFramework("tensorflow") }
    }

    /// --drop-record removes any record, --keep-record keeps training state, and a record no entry names that looks
    /// like training state is kept with a warning naming the option that removes it.
    @Test func dropAndKeepRecordsAndTheUnknownTrainingStateNote() throws {
        let c = try Checkpoint(path: Oracle.fixture("yolov5s-train.pt"))
        var o = StripOptions()
        o.dropRecords = ["git"]
        o.keepRecords = ["optimizer"]
        let plan = try c.planStrip(o)
        let g = plan.graph
        let names = Set(g.recordsOf(g.root).map(\.name))
        #expect(!names.contains("git") && names.contains("optimizer"))
        #expect(g.lookup(g.root, "optimizer").map { g[$0] != .none } == true)
        #expect(g.lookup(g.root, "updates").map { g[$0] == .none } == true)  // YOLOv5 sets training state to None

        let step = ClearTrainingState(convention: .generic, dropRecords: [], keepRecords: [],
                                      hasRecords: true)
        let model = try #require(g.lookup(g.root, "model")), date = try #require(g.lookup(g.root, "date"))
        #expect(step.looksLikeTrainingState("foo_optimizer_state", date, g) != nil)
        #expect(step.looksLikeTrainingState("model_state_dict", model, g) == nil)
        #expect(step.looksLikeTrainingState("date", date, g) == nil)
        #expect(step.looksLikeTrainingState("solver", try #require(g.lookup(g.root, "optimizer")), g) != nil)
        #expect(step.looksLikeTrainingState("solver", g.root, g) != nil)  // an optimizer state one level down
    }

    /// mmengine's publish keeps meta and state_dict alone (removed, not None); the generic table sets None.
    @Test func clearingFollowsTheEntry() throws {
        let c = try Checkpoint(path: Oracle.fixture("mmlab-style.pt"))
        let g = try c.planStrip(StripOptions()).graph
        #expect(g.recordsOf(g.root).map(\.name) == c.records.map(\.name).filter { ["meta", "state_dict"].contains($0) })
        try c.useFramework("generic")
        let generic = try c.planStrip(StripOptions()).graph
        #expect(generic.recordsOf(generic.root).count == c.records.count)
    }
}

extension ConventionsTests {
    /// The README's frameworks table lists every entry, in order, with how it clears and every record it clears.
    @Test func readmeTableIsTheTable() throws {
        let readme = try String(contentsOfFile: Oracle.repoRoot.appendingPathComponent("README.md").path, encoding: .utf8)
        let marker = "<!-- frameworks table:"
        let lines = readme.components(separatedBy: "\n")
        let start = try #require(lines.firstIndex { $0.hasPrefix(marker) })
        let rows = lines[(start + 3)...].prefix { $0.hasPrefix("|") }.map { line in
            line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        }
        #expect(rows.map { $0[1].split(separator: "`")[0] }.map(String.init) == FrameworkConvention.all.map(\.id))
        for (row, entry) in zip(rows, FrameworkConvention.all) where !entry.trainingState.isEmpty {
            let cleared = row[4]
            let words = Set(cleared.split { !($0.isLetter || $0.isNumber || $0 == "_" || $0 == ".") }.map(String.init))
            let lightningRow = rows.first { $0[1] == "`lightning`" }?[4] ?? ""
            let lightningWords = Set(lightningRow.split { !($0.isLetter || $0.isNumber || $0 == "_" || $0 == ".") }.map(String.init))
            for name in entry.trainingState {
                #expect(words.contains(name) || (cleared.contains("as `lightning`") && lightningWords.contains(name)),
                        "README row \(entry.id) does not name \(name)")
            }
            #expect(cleared.hasPrefix(entry.clearing == .setNone ? "set to None" : "removed"), "\(entry.id)")
        }
    }
}
