import Foundation
import Testing
@testable import CkptCore

/// What a state_dict view covers of the tensors a value holds (issue 11, point 1), and what `strip --record` means
/// (point 4). The interop tests compare both with torch; these pin the library's own invariants.
@Suite struct CoverageTests {
    static let fixtures = ["yolov5s-train", "ultralytics-train", "resnet-sd", "resnet-nested", "mmlab-style", "dtypes",
                           "sd-proto2", "sd-legacy", "quantized", "yolov5s-nc3-init"]

    /// For every record: built = the tensors `keys --all` lists; shown + missing = built; nothing missing is shown.
    @Test(arguments: fixtures)
    func coverageIsTheAllTensorsWalkMinusTheView(name: String) throws {
        let ckpt = try Checkpoint(path: Oracle.fixture("\(name).pt"))
        let targets: [(String?, NodeID)] = ckpt.records.isEmpty ? [(nil, ckpt.graph.root)] : ckpt.records.map { ($0.name, $0.node) }
        for (record, node) in targets {
            let view = try ckpt.graph.stateDict(node)
            let all = try ckpt.graph.allTensors(from: node)
            let c = ckpt.graph.coverage(of: node, record: record, shown: view.map(\.tensor))
            #expect(c.built == all.count, "\(name) \(record ?? "")")
            #expect(Set(all.map(\.tensor.tensorNode)).count == all.count, "each tensor once")
            #expect(c.shown + c.missing.count == c.built)
            #expect(Set(c.missing).isDisjoint(with: view.map(\.tensor.tensorNode)))
            let listing = try KeysBuilder(checkpoint: ckpt, record: record, all: true).build()
            #expect(listing.tensors.count == c.built && listing.coverage.isComplete)
        }
    }

    @Test func noteHasOneForm() {
        let c = ViewCoverage(record: "model", built: 20, shown: 8, missing: (0..<12).map(NodeID.init))
        #expect(c.note(file: "a.pt") == "note: 12 tensors are not in the state_dict view of 'model'; see --all")
        let top = ViewCoverage(record: nil, built: 1, shown: 0, missing: [NodeID(3)])
        #expect(top.note(file: "a.pt") == "note: 1 tensors are not in the state_dict view of 'a.pt'; see --all")
        #expect(ViewCoverage(record: nil, built: 2, shown: 2, missing: []).note(file: "a.pt") == nil)
    }

    @Test func yolov5PlainTensorAttributesAreOutsideTheView() throws {
        let ckpt = try Checkpoint(path: Oracle.fixture("yolov5s-train.pt"))
        let listing = try KeysBuilder(checkpoint: ckpt).build()
        #expect(listing.record == "model" && listing.coverage.missing.count > 0)
        let all = try KeysBuilder(checkpoint: ckpt, all: true).build().tensors.map(\.name)
        #expect(all.contains("model.24.stride") && all.contains("stride") && all.contains("model.24.grid.0"))
        let info = try InfoBuilder(checkpoint: ckpt).build()
        #expect(info.notes.count == 2)  // model and ema
    }

    /// --record never turns off the EMA step; it names a weights record of the output.
    @Test func recordNeverTurnsOffTheEMA() throws {
        let ckpt = try Checkpoint(path: Oracle.fixture("yolov5s-train.pt"))
        var o = StripOptions()
        o.useEMA = true
        o.record = "model"
        let plan = try ckpt.planStrip(o)
        #expect(plan.report.recordChanges.contains { $0.record == "model" && $0.after.hasPrefix("ema") })
        #expect(plan.report.weightsRecord == "model")
        for bad in ["ema", "opt", "optimizer", "epoch", "git"] {
            o.record = bad
            #expect(throws: CheckpointError.self, "\(bad)") { try ckpt.planStrip(o) }
        }
    }

    @Test func ultralyticsRecordModelIsTheEMA() throws {
        let ckpt = try Checkpoint(path: Oracle.fixture("ultralytics-train.pt"))
        var o = StripOptions()
        o.record = "model"
        let plan = try ckpt.planStrip(o)
        let ema = try ckpt.graph.stateDict(try ckpt.record(named: "ema"))
        #expect(plan.report.parameters == ema.filter(\.tensor.isParameter).reduce(0) { $0 + ($1.tensor.numel ?? 0) })
        #expect(plan.report.parameters > 0)
    }
}
