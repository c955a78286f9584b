import Foundation
import Testing
@testable import CkptCore

/// The plain-data step of `strip --state-dict` (``PlainData``) and the weights_only guarantee of the writer
/// (``WeightsOnlyGuarantee``). Python is the oracle of every converted value (str(path), isoformat(), tolist()); the
/// interop tests (Tests/interop/test_weights_only_output.py) load the outputs with real torch.
@Suite struct PlainDataTests {
    /// Decodes a protocol-2 pickle Python writes of `expr` (a dict), converts it, and returns the graph and report.
    static func converted(_ expr: String, drop: Bool = false) throws -> (PickleGraph, PlainDataConverter) {
        let code = """
            import base64, pickle, sys, pathlib, datetime, argparse, types, collections
            import numpy as np
            sys.stdout.write(base64.b64encode(pickle.dumps(\(expr), protocol=2)).decode())
            """
        let bytes = Array(Data(base64Encoded: try Oracle.run(code))!)
        let g = try PickleDecoder.decode(bytes)
        var c = PlainDataConverter(g, dropUnconvertible: drop)
        try c.convert(from: g.root)
        return (c.graph, c)
    }

    /// Python's answer: `expr` (a dict) as JSON; `data` is given to it as `data`, parsed from JSON.
    static func python(_ expr: String, data: Any = []) throws -> [String: Any] {
        let code = """
            import json, sys, pathlib, datetime, argparse, types, collections
            import numpy as np
            data = json.loads(sys.argv[1])
            json.dump(\(expr), sys.stdout)
            """
        let arg = String(decoding: try JSONSerialization.data(withJSONObject: data), as: UTF8.self)
        return try JSONSerialization.jsonObject(with: Oracle.run(code, [arg])) as! [String: Any]
    }

    static func value(_ g: PickleGraph, _ key: String) -> NodeID? { g.lookup(g.root, key) }

    @Test func pathsAreStrOfThePath() throws {
        // Each case: the class and the arguments it is called with (3.13 pickles the raw arguments, <= 3.12 the parts).
        // Not here: a drive that differs only in case (`C:\\a`, `c:b`), which the oracle's Python 3.11 pathlib and the
        // ntpath.join of 3.12+ (which 3.13 pickles follow) join differently.
        let cases: [(String, [String])] = [
            ("PurePosixPath", ["/", "a", "b"]), ("PurePosixPath", ["/a//b/./c/..", "d/", "e"]),
            ("PurePosixPath", ["a", "/b", "c"]), ("PurePosixPath", []), ("PurePosixPath", ["./", "."]),
            ("PurePosixPath", ["//x/y"]), ("PurePosixPath", ["///x"]), ("PurePosixPath", ["//", "x"]),
            ("PureWindowsPath", ["c:\\", "x", "y"]), ("PureWindowsPath", ["C:/Users", "me/x", "..\\y"]),
            ("PureWindowsPath", ["C:\\a", "D:b"]), ("PureWindowsPath", ["C:\\a", "\\b"]),
            ("PureWindowsPath", ["\\\\srv\\share", "x"]), ("PureWindowsPath", ["\\\\srv\\share\\", "x"]),
            ("PureWindowsPath", ["//srv/share"]), ("PureWindowsPath", ["d:notes.txt"]), ("PureWindowsPath", ["a", "b"]),
            ("PureWindowsPath", ["\\x"]), ("PureWindowsPath", []),
        ]
        let want = try Self.python("{str(i): str(getattr(pathlib, c[0])(*c[1:])) for i, c in enumerate(data)}",
                                   data: cases.map { [$0.0] + $0.1 })
        for (i, c) in cases.enumerated() {
            #expect(PlainDecoders.pathString(c.1, windows: c.0.contains("Windows")) == want[String(i)] as? String, "\(c)")
        }
    }

    @Test func datetimesAreIsoformat() throws {
        let values = """
            {"a": datetime.datetime(2024, 5, 1, 12, 34, 56, 789012), "b": datetime.date(1, 1, 1),
             "c": datetime.time(0, 0), "d": datetime.time(23, 59, 59, 1, tzinfo=datetime.timezone.utc),
             "e": datetime.datetime(9999, 12, 31, 0, 0, 0, 5,
                                    tzinfo=datetime.timezone(-datetime.timedelta(hours=23, minutes=59, seconds=59, microseconds=9))),
             "f": datetime.datetime(2021, 11, 7, 1, 30, fold=1),
             "g": datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(minutes=-30), "x"))}
            """
        let (g, c) = try Self.converted(values)
        let want = try Self.python("{k: v.isoformat() for k, v in (\(values)).items()}")
        for (k, v) in want {
            #expect(g.string(try #require(Self.value(g, k))) == v as? String, "\(k)")
        }
        #expect(c.conversions.count == want.count && c.unconvertible.isEmpty)
    }

    @Test func numpyValuesAreToList() throws {
        let values = """
            {"f": np.float32(0.1), "i": np.int8(-3), "u": np.uint64(2**64 - 1), "b": np.bool_(False),
             "a": np.arange(6, dtype="<u2").reshape(3, 2), "fo": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
             "be": np.array([1.5, -2.0], dtype=">f8"), "z": np.array(7), "s": np.array(["ab", "c"])}
            """
        let (g, c) = try Self.converted(values)
        let bytes = try PickleEncoder.encode(g)
        let check = """
            import base64, pickle, sys
            import numpy as np
            got = pickle.loads(base64.b64decode(sys.argv[1]))
            want = {k: v.tolist() for k, v in (\(values)).items()}
            for k in want:
                assert type(got[k]) is type(want[k]) and got[k] == want[k], (k, got[k], want[k])
                if isinstance(want[k], list):
                    assert repr(got[k]) == repr(want[k]), (k, got[k], want[k])
            print("ok")
            """
        #expect(String(decoding: try Oracle.run(check, [Data(bytes).base64EncodedString()]), as: UTF8.self) == "ok\n")
        #expect(WeightsOnlyGuarantee.refusedGlobals(g).isEmpty)
        #expect(c.conversions.count == 9)
    }

    /// A class named both as a value (Lightning's hparams_type) and as the class of an object: the value becomes its
    /// name, and the object is still read as that class.
    @Test func aClassSharedByAValueAndAnObjectIsReadBeforeItIsConverted() throws {
        var g = PickleGraph()
        let cls = g.add(.global(module: "argparse", name: "Namespace"))
        let state = g.add(.dict([DictEntry(key: g.add(.string("lr")), value: g.add(.float(0.1)))]))
        let ns = g.add(.object(PickleObject(construction: .newObj, callable: cls, args: g.add(.tuple([])), state: state)))
        g.root = g.add(.dict([DictEntry(key: g.add(.string("type")), value: cls),
                              DictEntry(key: g.add(.string("hparams")), value: ns)]))
        var c = PlainDataConverter(g, dropUnconvertible: false)
        try c.convert(from: g.root)
        try c.finish(context: "test")
        let out = c.graph
        #expect(out.string(Self.value(out, "type")!) == "argparse.Namespace")
        #expect(out.dictEntries(Self.value(out, "hparams")!)?.count == 1)
        #expect(c.conversions.map(\.path) == ["type", "hparams"])
        #expect(WeightsOnlyGuarantee.refusedGlobals(out).isEmpty)
    }

    /// What no rule converts fails naming its path and class; --drop-unconvertible removes a dict entry, makes a list
    /// item None, and lists both.
    @Test func unconvertibleFailsOrIsDropped() throws {
        let values = """
            {"ok": pathlib.PosixPath("/x"), "bad": datetime.timedelta(days=1), "items": [1, range(3)]}
            """
        var (_, strict) = try Self.converted(values)
        #expect(strict.unconvertible.map(\.path) == ["bad", "items.1"])
        do {
            try strict.finish(context: "--state-dict")
            Issue.record("no error")
        } catch {
            #expect("\(error)".hasPrefix("--state-dict: bad: datetime.timedelta cannot be converted"))
            #expect("\(error)".contains("items.1: builtins.range") && "\(error)".contains("--drop-unconvertible"))
        }
        var (_, dropping) = try Self.converted(values, drop: true)
        try dropping.finish(context: "--state-dict")
        let g = dropping.graph
        #expect(g.recordsOf(g.root).map(\.name) == ["ok", "items"])
        #expect(g.sequence(Self.value(g, "items")!).map { $0.map { g[$0] } } == [.int(1), .none])
        #expect(dropping.dropped.map(\.path) == ["bad", "items.1"] && dropping.conversions.map(\.path) == ["ok"])
        let scan = PickleScanner.scan(try PickleEncoder.encode(g), label: "t")
        #expect(scan.weightsOnlyRefusal == nil && scan.error == nil)
    }

    /// A call of a function with no arguments returns something the pickle does not say: not taken for an instance
    /// of a class (as a CapWords name or NEWOBJ is).
    @Test func aFunctionCallIsNoObject() throws {
        var g = PickleGraph()
        func call(_ m: String, _ n: String, _ c: PickleObject.Construction) -> NodeID {
            g.add(.object(PickleObject(construction: c, callable: g.add(.global(module: m, name: n)), args: g.add(.tuple([])))))
        }
        let made = call("mod", "make_default", .reduce), cls = call("mod", "Default", .reduce), new = call("mod", "thing", .newObj)
        g.root = g.add(.dict([("made", made), ("cls", cls), ("new", new)].map { DictEntry(key: g.add(.string($0.0)), value: $0.1) }))
        var c = PlainDataConverter(g, dropUnconvertible: false)
        try c.convert(from: g.root)
        #expect(c.unconvertible.map(\.path) == ["made"])
        #expect(c.conversions.map(\.path) == ["cls", "new"] && c.conversions.allSatisfy { $0.to == "dict with __class__" })
    }

    /// The writer runs the plan's check of the encoded pickle before the rename: a refusal leaves nothing behind.
    @Test func refusedPickleIsNeverRenamedIntoPlace() throws {
        let ckpt = try Checkpoint(path: Oracle.fixture("sd-proto2.pt"))
        var o = StripOptions()
        o.stateDict = true
        var plan = try ckpt.planStrip(o)
        #expect(plan.verifyPickle != nil)
        // BUILD with a state on torch.Size, which has no __setstate__: torch's weights_only unpickler refuses it, though
        // every global is allowed, so only the replay of the bytes can tell.
        var g = plan.graph
        let size = g.add(.object(PickleObject(construction: .reduce, callable: g.add(.global(module: "torch", name: "Size")),
                                              args: g.add(.tuple([g.add(.list([]))])),
                                              state: g.add(.dict([DictEntry(key: g.add(.string("a")), value: g.add(.int(1)))])))))
        g.settleDictItems(g.root)
        if case .object(var od) = g[g.root] {
            od.dictItems.append(DictEntry(key: g.add(.string("odd")), value: size))
            g[g.root] = .object(od)
        }
        #expect(WeightsOnlyGuarantee.refusedGlobals(g).isEmpty)
        plan.graph = g
        plan.verifyPickle = WeightsOnlyGuarantee.verifier(for: g, context: "--state-dict")
        let dir = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("out.pt").path
        do {
            try Checkpoint.write(.torch(plan), sources: [ckpt], to: out)
            Issue.record("written")
        } catch {
            #expect("\(error)".contains("would not load with torch.load(weights_only=True)"), "\(error)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
        // Without the odd value, the same plan is written and passes its check.
        plan = try ckpt.planStrip(o)
        try Checkpoint.write(.torch(plan), sources: [ckpt], to: out)
        #expect(FileManager.default.fileExists(atPath: out))
    }
}
