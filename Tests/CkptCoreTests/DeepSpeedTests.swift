import Foundation
import Testing
@testable import CkptCore

/// The DeepSpeed ZeRO reader's own arithmetic and file handling (Formats/DeepSpeed.swift): file order against
/// zero_to_fp32's `natural_keys` run by Python, `latest` stripped as Python strips it, the partition arithmetic's
/// invariants. The tensors themselves are checked against DeepSpeed's zero_to_fp32 in Tests/interop (test_zero.py,
/// test_distributed.py).
@Suite struct DeepSpeedTests {
    /// zero_to_fp32's `natural_keys` (deepspeed/utils/zero_to_fp32.py, 0.19.8), run by Python on names a folder of many
    /// ranks holds, and on digit runs Python's `\d` and `int` read (leading zeros, other scripts' digits).
    @Test func fileOrderIsNaturalKeysOrder() throws {
        var names: [String] = []
        for r in [0, 1, 2, 3, 9, 10, 11, 19, 20, 100, 101] {
            names.append("bf16_zero_pp_rank_\(r)_mp_rank_00_optim_states.pt")
            names.append("zero_pp_rank_\(r)_mp_rank_01_model_states.pt")
        }
        names += ["a", "a0", "a9", "a10", "a010b", "a11", "x_model_states.pt", "_model_states.pt", "\u{0661}\u{0662}x",
                  "13x", "2x", "B1", "b1", "é2", "e10"]
        names.reverse()
        let code = """
            import json, re, sys
            def atoi(text):
                return int(text) if text.isdigit() else text
            def natural_keys(text):
                return [atoi(c) for c in re.split(r'(\\d+)', text)]
            print(json.dumps(sorted(json.loads(sys.argv[1]), key=natural_keys)))
            """
        let arg = String(decoding: try JSONSerialization.data(withJSONObject: names), as: UTF8.self)
        let want = try JSONSerialization.jsonObject(with: try Oracle.run(code, [arg])) as! [String]
        #expect(names.sorted(by: DeepSpeedReader.naturalLess) == want)
    }

    @Test func latestIsStrippedAsPythonStrips() throws {
        let texts = ["global_step2", "global_step2\n", " \t global_step2 \r\n", "\u{1C}\u{1F}step\u{85}\u{A0}", "\u{2003}tag\u{3000}",
                     "a b", "\u{200B}zero-width\u{200B}", ""]
        let code = "import json, sys\nprint(json.dumps([t.strip() for t in json.loads(sys.argv[1])]))"
        let arg = String(decoding: try JSONSerialization.data(withJSONObject: texts), as: UTF8.self)
        let want = try JSONSerialization.jsonObject(with: try Oracle.run(code, [arg])) as! [String]
        #expect(texts.map(DeepSpeedReader.pythonStrip) == want)
    }

    /// Every range of a concatenation maps to pieces that, read in order, are exactly its elements.
    @Test func piecesCoverTheRangeInOrder() {
        for sizes: [Int64] in [[5], [3, 0, 4], [1, 1, 1], [0], [7, 2], [44, 41]] {
            let total = sizes.reduce(0, +)
            var owner: [(Int, Int64)] = []  // element -> (part, offset in part)
            for (p, s) in sizes.enumerated() { for i in 0..<s { owner.append((p, i)) } }
            for start in 0...total {
                for count in 0...(total - start) {
                    guard let ps = DeepSpeedReader.pieces(start, count, in: sizes) else {
                        Issue.record("no pieces for \(start)+\(count) of \(sizes)")
                        continue
                    }
                    var got: [(Int, Int64)] = []
                    for p in ps {
                        #expect(p.count > 0)
                        for i in 0..<p.count { got.append((p.part, p.offset + i)) }
                    }
                    let want = Array(owner[Int(start)..<Int(start + count)])
                    #expect(got.map(\.0) == want.map(\.0) && got.map(\.1) == want.map(\.1), "\(sizes) \(start)+\(count)")
                }
                #expect(DeepSpeedReader.pieces(start, total - start + 1, in: sizes) == nil)
            }
        }
    }

    @Test func zero2OffsetsSkipPaddingsAndCheckTheEnd() throws {
        let numels: [Int64] = [55, 25, 5]
        let paddings: [Int64] = [1, 0, 3]
        let used = numels.reduce(0, +) + paddings.reduce(0, +)
        // Offsets are the running sums of numel + padding.
        let offsets = try DeepSpeedReader.zero2Offsets(numels: numels, paddings: paddings, available: used, worldSize: 2)
        #expect(offsets == [0, numels[0] + paddings[0], numels[0] + paddings[0] + numels[1] + paddings[1]])
        // With alignment paddings listed, the partitions (cut by their group padding when saved) hold exactly the
        // parameters and paddings: one element more is refused. Without them (zero_to_fp32's own tolerance),
        // zero2_align: anything up to the next multiple of 2·ws beyond the consumed offset passes, one alignment more
        // does not; a parameter past the partitions is refused.
        #expect(throws: DeepSpeedReader.LayoutError.self) {
            try DeepSpeedReader.zero2Offsets(numels: numels, paddings: paddings, available: used + 1, worldSize: 2)
        }
        let align: Int64 = 4
        let bare = numels.reduce(0, +)
        let top = (bare + align - 1) / align * align
        for available in [bare, top] {
            #expect(throws: Never.self) { try DeepSpeedReader.zero2Offsets(numels: numels, paddings: nil, available: available, worldSize: 2) }
        }
        #expect(throws: DeepSpeedReader.LayoutError.self) {
            try DeepSpeedReader.zero2Offsets(numels: numels, paddings: nil, available: top + 1, worldSize: 2)
        }
        #expect(throws: DeepSpeedReader.LayoutError.self) {
            try DeepSpeedReader.zero2Offsets(numels: numels, paddings: nil, available: numels.reduce(0, +) - 1, worldSize: 2)
        }
    }

    @Test func zero3OffsetsStepByTheRankShare() throws {
        for ws in [1, 2, 3, 4, 7] {
            let numels: [Int64] = [55, 25, 5, 1, 0, 12]
            let shares = numels.map { DeepSpeedReader.partitioned($0, ws) }
            for (n, s) in zip(numels, shares) { #expect(s * Int64(ws) >= n && (s - 1) * Int64(ws) < n || n == 0 && s == 0) }
            let total = shares.reduce(0, +)
            let offsets = try DeepSpeedReader.zero3Offsets(numels: numels, worldSize: ws, rankElements: total)
            var running: Int64 = 0
            for (o, s) in zip(offsets, shares) { #expect(o == running); running += s }
            #expect(throws: DeepSpeedReader.LayoutError.self) {
                try DeepSpeedReader.zero3Offsets(numels: numels, worldSize: ws, rankElements: total + 1)
            }
        }
    }

    @Test func missingRankFilesAreSpelledLikeThePresentOnes() {
        let names = ["bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt"]
        #expect(DeepSpeedReader.missingRankFiles(names, worldSize: 4)
                == ["bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_3_mp_rank_00_optim_states.pt"])
        #expect(DeepSpeedReader.missingRankFiles(["odd_optim_states.pt"], worldSize: 2).isEmpty)
    }

    /// The committed fixtures (scripts/make-deepspeed-fixtures.py, DeepSpeed's own save_checkpoint): every file's
    /// pickle is there for scan, DeepSpeed's classes are data (nothing dangerous: convert does not refuse), and the
    /// folder holding `latest` and its tag folder read alike.
    @Test(arguments: ["zero1", "zero2", "zero3", "zero3-fp32-ws4"])
    func fixtureFoldersOpen(_ name: String) throws {
        let folder = Oracle.fixture("distributed/\(name)")
        let c = try Checkpoint(path: folder)
        let tag = DeepSpeedReader.pythonStrip(try String(contentsOfFile: folder + "/latest", encoding: .utf8))
        let files = try FileManager.default.contentsOfDirectory(atPath: folder + "/" + tag).filter { $0.hasSuffix("_states.pt") }
        let layout = try #require(c.distributed)
        #expect(Set(layout.files) == Set(files.map { "\(tag)/\($0)" }))
        #expect(layout.format.hasPrefix("DeepSpeed ZeRO stage "))
        let labels = c.pickleScans.map(\.label)
        for f in files { #expect(labels.contains { $0.hasPrefix("\(tag)/\(f): ") }, "\(f)") }
        #expect(c.dangerousGlobals().isEmpty)
        let direct = try Checkpoint(path: folder + "/" + tag)
        let a = try c.graph.stateDict(c.graph.root).map { "\($0.name) \($0.tensor.dtype) \($0.tensor.shape)" }
        let b = try direct.graph.stateDict(direct.graph.root).map { "\($0.name) \($0.tensor.dtype) \($0.tensor.shape)" }
        #expect(a == b && !a.isEmpty)
        // Tied parameters are one tensor node (torch.save pickles DeepSpeed's one tensor object once).
        let entries = try #require(c.graph.dictEntries(c.graph.root))
        let node = { (n: String) in entries.first { c.graph.string($0.key) == n }?.value }
        #expect(node("head.weight") != nil && node("head.weight") == node("emb.weight"))
    }
}
