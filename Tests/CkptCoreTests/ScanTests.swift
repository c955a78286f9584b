import Foundation
import Testing
@testable import CkptCore

/// Pickle fragments for hand-made streams.
private enum P {
    static func str(_ s: String) -> [UInt8] {
        let b = Array(s.utf8)
        return [0x58] + withUnsafeBytes(of: UInt32(b.count).littleEndian, Array.init) + b
    }
    static func global(_ m: String, _ n: String) -> [UInt8] { [0x63] + Array(m.utf8) + [0x0A] + Array(n.utf8) + [0x0A] }
    static let proto2: [UInt8] = [0x80, 0x02]
    static let stop: [UInt8] = [0x2E]
    static let reduce: [UInt8] = [0x52]
    static let tuple1: [UInt8] = [0x85]
    static let stackGlobal: [UInt8] = [0x93]
    static func binPut(_ i: UInt8) -> [UInt8] { [0x71, i] }
    static func binGet(_ i: UInt8) -> [UInt8] { [0x68, i] }
}

@Suite struct GlobalPolicyTests {
    /// The issue's list, plus Python 2 spellings pickle renames and attribute walks (protocol 4 dotted names).
    @Test(arguments: [
        ("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "Popen"), ("subprocess", "check_output"),
        ("sys", "modules"), ("socket", "socket"), ("runpy", "_run_code"), ("builtins", "eval"), ("builtins", "exec"),
        ("builtins", "getattr"), ("builtins", "__import__"), ("builtins", "compile"), ("builtins", "open"),
        ("__builtin__", "eval"), ("__builtin__", "getattr"), ("__builtins__", "exec"), ("importlib", "import_module"),
        ("importlib.util", "spec_from_file_location"), ("pickle", "loads"), ("_pickle", "loads"), ("cPickle", "loads"),
        ("ctypes", "CDLL"), ("shutil", "rmtree"), ("webbrowser", "open"), ("functools", "partial"),
        ("operator", "attrgetter"), ("_operator", "methodcaller"), ("torch", "load"), ("torch.serialization", "load"),
        ("torch.hub", "load"), ("torch.jit", "load"), ("torch.jit._serialization", "load"), ("commands", "getoutput"),
        ("torch", "os.system"), ("models.common", "sys.modules"), ("collections", "OrderedDict.__init__.__globals__"),
        ("numpy.testing._private.utils", "runstring"), ("types", "CodeType"), ("code", "InteractiveInterpreter"),
    ])
    func dangerous(_ module: String, _ name: String) {
        let v = GlobalPolicy.classify(module: module, name: name)
        #expect(v.globalClass == .dangerous, "\(module).\(name)")
        #expect(v.reason != nil)
    }

    @Test(arguments: [
        ("models.yolo", "DetectionModel"), ("torch.nn.modules.conv", "Conv2d"), ("ultralytics.utils", "IterableSimpleNamespace"),
        ("__builtin__", "bytes"), ("builtins", "frozenset"), ("types", "SimpleNamespace"), ("pathlib", "PosixPath"),
        ("argparse", "Namespace"), ("mmengine.logging.history_buffer", "HistoryBuffer"), ("builtins", "ValueError"),
        ("codecs", "decode"), ("models.common", "Outer.Inner"),
    ])
    func needsCode(_ module: String, _ name: String) {
        #expect(GlobalPolicy.classify(module: module, name: name).globalClass == .needsCode, "\(module).\(name)")
    }

    @Test(arguments: [
        ("collections", "OrderedDict"), ("__builtin__", "set"), ("builtins", "complex"), ("_codecs", "encode"),
        ("torch._utils", "_rebuild_tensor_v2"), ("torch", "HalfStorage"), ("torch", "Size"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
        ("numpy", "ndarray"), ("numpy.dtypes", "Float64DType"),
    ])
    func safe(_ module: String, _ name: String) {
        #expect(GlobalPolicy.classify(module: module, name: name).globalClass == .safe, "\(module).\(name)")
    }

    @Test func everyWeightsOnlyGlobalIsSafe() {
        for full in TorchPolicyData.weightsOnlyGlobals {
            let dot = full.lastIndex(of: ".")!
            let v = GlobalPolicy.classify(module: String(full[..<dot]), name: String(full[full.index(after: dot)...]))
            #expect(v.globalClass == .safe, "\(full)")
        }
    }

    @Test func policyDataIsTorchs() throws {
        try Oracle.run("""
            import runpy, sys
            sys.argv = ['gen-pickle-policy.py', '--check']
            runpy.run_path('scripts/gen-pickle-policy.py', run_name='__main__')
            """)
    }

    /// Everything picklescan flags, ckpt flags too.
    @Test func picklescansDangerousGlobalsAreDangerous() throws {
        let out = try Oracle.run("""
            import json, sys
            from picklescan.scanner import _unsafe_globals
            rows = []
            for module, names in _unsafe_globals.items():
                if names == "*":
                    rows += [[module, "system"], [module, "anything"]]
                elif isinstance(names, str):
                    rows.append([module, names])
                else:
                    rows += [[module, n] for n in names]
            json.dump(rows, sys.stdout)
            """)
        let rows = try JSONDecoder().decode([[String]].self, from: out)
        #expect(rows.count > 50)
        for r in rows {
            #expect(GlobalPolicy.classify(module: r[0], name: r[1]).globalClass == .dangerous, "\(r[0]).\(r[1])")
        }
    }
}

@Suite struct PickleScannerTests {
    @Test func countsEveryUseThroughTheMemo() {
        // [OrderedDict, OrderedDict, OrderedDict]: one GLOBAL, then two memo fetches
        let p = P.proto2 + [0x5D, 0x28] + P.global("collections", "OrderedDict") + P.binPut(0)
            + P.binGet(0) + P.binGet(0) + [0x65] + P.stop
        let s = PickleScanner.scan(p, label: "t")
        #expect(s.error == nil)
        #expect(s.globals.map(\.fullName) == ["collections.OrderedDict"])
        #expect(s.globals.first?.count == 3)
        #expect(s.weightsOnlyRefusal == nil)
    }

    @Test func stackGlobalWithMemoizedStringsIsNamed() {
        let p = [0x80, 0x04] + P.str("os") + P.binPut(1) + [0x30] + P.str("system") + P.binPut(2) + [0x30]
            + P.binGet(1) + P.binGet(2) + P.stackGlobal + P.str("id") + P.tuple1 + P.reduce + P.stop
        let s = PickleScanner.scan(p, label: "t")
        #expect(s.error == nil)
        #expect(s.globals.map(\.fullName) == ["os.system"])
        #expect(s.computed.isEmpty)
        #expect(s.weightsOnlyRefusal != nil)
    }

    /// A STACK_GLOBAL whose module is computed at load time is reported by the scanner; the decoder that
    /// every other command uses keeps refusing it.
    @Test func stackGlobalWithComputedOperandIsComputedAndStillRefusedByTheDecoder() {
        let module = P.global("codecs", "decode") + [0x28] + P.str("bf") + P.str("rot13") + [0x74] + P.reduce
        let p = P.proto2 + module + P.str("system") + P.stackGlobal + P.str("id") + P.tuple1 + P.reduce + P.stop
        let s = PickleScanner.scan(p, label: "t")
        #expect(s.error == nil)
        // the computed name, then the call of what it names
        #expect(s.computed.map(\.opcode) == ["STACK_GLOBAL", "REDUCE"])
        #expect(s.globals.map(\.fullName) == ["codecs.decode"])
        #expect(throws: PickleError.self) { try PickleDecoder.decode(p) }
        let report = ScanReport(file: "t", format: "pickle stream", pickles: [s], readError: nil)
        #expect(report.isDangerous)
    }

    @Test func extensionCodesAreComputedGlobals() {
        let s = PickleScanner.scan(P.proto2 + [0x82, 0x07] + P.stop, label: "t")
        #expect(s.computed.first?.opcode == "EXT1")
    }

    /// A pickle that fails halfway has run what came before: the globals met before the error are kept.
    @Test func globalsBeforeAnErrorAreKept() {
        let p = P.proto2 + P.global("os", "system") + P.str("id") + P.tuple1 + P.reduce + [0xFF]
        let s = PickleScanner.scan(p, label: "t")
        #expect(s.error == .unknownOpcode(0xFF, offset: p.count - 1))
        #expect(s.globals.map(\.fullName) == ["os.system"])
    }

    @Test func weightsOnlyRefusesWhatTorchRefuses() {
        // POP is not among the opcodes torch's weights_only unpickler runs.
        #expect(PickleScanner.scan(P.proto2 + [0x4E, 0x4E, 0x30] + P.stop, label: "t").weightsOnlyRefusal?.contains("POP") == true)
        // APPEND onto a dict.
        #expect(PickleScanner.scan(P.proto2 + [0x7D, 0x4E, 0x61] + P.stop, label: "t").weightsOnlyRefusal?.contains("APPEND") == true)
        // A persistent id that is not ('storage', ...).
        #expect(PickleScanner.scan(P.proto2 + P.str("x") + [0x51] + P.stop, label: "t").weightsOnlyRefusal != nil)
        // The same shape with allowed pieces loads.
        #expect(PickleScanner.scan(P.proto2 + [0x5D, 0x4E, 0x61] + P.stop, label: "t").weightsOnlyRefusal == nil)
    }

    /// Every prefix of every fixture's pickle: the scanner and the decoder stop with an error, never a crash.
    @Test func everyPrefixOfAPickleFailsCleanly() throws {
        let c = try Checkpoint(path: Oracle.fixture("sd-proto4.pt"))
        let zip = try ZipReader(path: c.path)
        let pkl = try zip.readAll(zip.entry(named: "data.pkl")!, limit: 1 << 20)
        for n in 0..<pkl.count {
            let prefix = Array(pkl[..<n])
            #expect(PickleScanner.scan(prefix, label: "t").error != nil)
            #expect(throws: PickleError.self) { try PickleDecoder.decode(prefix) }
        }
    }
}

@Suite struct HostileGraphTests {
    /// `_rebuild_parameter(_rebuild_parameter(...))` 100,000 deep: malformed, without recursing 100,000 times.
    @Test func nestedParametersAreMalformedNotAStackOverflow() throws {
        var p = P.proto2
        let depth = 100_000
        p += P.global("torch._utils", "_rebuild_parameter") + P.binPut(0)
        for _ in 0..<depth { p += P.binGet(0) }
        p += [0x4E]
        for _ in 0..<depth { p += [0x88, 0x86, 0x52] }  // NEWTRUE, TUPLE2, REDUCE
        p += P.stop
        let g = try PickleDecoder.decode(p)
        #expect(throws: TensorCheckError.self) { try g.tensor(g.root) }
        #expect(throws: CheckpointError.self) { try g.stateDict(g.root) }
        _ = try? g.allTensors(from: g.root)
    }

    /// `set(set(set(...)))` and `bytearray(bytearray(...))` 100,000 deep.
    @Test func nestedSetsAndByteArraysStopAtOneLevel() throws {
        for (m, n) in [("__builtin__", "set"), ("__builtin__", "bytearray")] {
            var p = P.proto2 + P.global(m, n) + P.binPut(0)
            for _ in 0..<100_000 { p += P.binGet(0) }
            p += [0x5D]
            for _ in 0..<100_000 { p += P.tuple1 + P.reduce }
            p += P.stop
            let g = try PickleDecoder.decode(p)
            #expect(g.stringSet(g.root).isEmpty)
            #expect(g.bytesValue(g.root) == nil)
            #expect(g.scalarJSON(g.root) == nil)
        }
    }

    /// Tuples 100,000 deep: the state_dict walk and the encoder stop at their nesting limits.
    @Test func deepTuplesHitTheNestingLimit() throws {
        let p = P.proto2 + [0x4E] + [UInt8](repeating: 0x85, count: 100_000) + P.stop
        let g = try PickleDecoder.decode(p)
        #expect(throws: CheckpointError.self) { try g.stateDict(g.root) }
        #expect(throws: PickleError.self) { try PickleEncoder.encode(g) }
        #expect(g.reachable(from: g.root).count == 100_001)
    }

    /// Each tuple holds its predecessor twice, 64 deep: 2**64 paths through 65 objects.
    @Test func memoAbuseIsStoppedByTheVisitBudget() throws {
        var p = P.proto2 + [0x5D, 0x71, 0x00]
        for i in 1...64 { p += P.binGet(UInt8(i - 1)) + [0x86] + P.binPut(UInt8(i)) }
        p += P.stop
        let g = try PickleDecoder.decode(p)
        #expect(throws: CheckpointError.self) { try g.stateDict(g.root) }
        #expect(try g.allTensors(from: g.root).isEmpty)
        #expect(try PickleEncoder.encode(g).count < 1000)
    }
}

@Suite struct CheckpointSafetyTests {
    @Test func cleanFixturesHaveNoDangerousGlobals() throws {
        for name in ["sd-proto2.pt", "sd-legacy.pt", "yolov5s-train.pt", "ultralytics-train.pt", "dtypes.pt"] {
            let c = try Checkpoint(path: Oracle.fixture(name))
            #expect(c.dangerousGlobals().isEmpty, "\(name)")
            try c.refuseDangerousGlobals(allowUnsafe: false)
        }
    }

    @Test(arguments: ["os-system", "posix-system", "builtins-exec", "builtins-eval", "subprocess-popen", "runpy-run-code",
                      "getattr-chain", "stack-global-memo", "legacy-sys-info-os-system"])
    func maliciousFixturesAreRefused(_ name: String) throws {
        let c = try Checkpoint(path: Oracle.fixture("malicious/\(name).pt"))
        #expect(!c.dangerousGlobals().isEmpty)
        #expect(throws: CheckpointError.self) { try c.refuseDangerousGlobals(allowUnsafe: false) }
        try c.refuseDangerousGlobals(allowUnsafe: true)
    }

    /// The computed STACK_GLOBAL cannot be decoded, so it cannot be opened; scan still finds it.
    @Test func computedStackGlobalIsReportedByScan() throws {
        let path = Oracle.fixture("malicious/stack-global-computed.pt")
        #expect(throws: CheckpointError.self) { try Checkpoint(path: path) }
        let r = try ScanBuilder(path: path).build()
        #expect(r.isDangerous)
        #expect(r.readError != nil)
        #expect(!r.weightsOnlyLoads)
    }

    /// Every proper prefix of a small zip checkpoint and of a legacy one fails to open with a CheckpointError,
    /// and scan reports it unreadable (nothing dangerous in them): never a crash, never a partial success.
    @Test(arguments: ["sd-proto2.pt", "sd-legacy.pt"])
    func cutAtEveryOffset(_ name: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Oracle.fixture(name)))
        let dir = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("cut.pt").path
        var failures = 0
        for n in 0..<data.count {
            try data.prefix(n).write(to: URL(fileURLWithPath: path))
            do {
                _ = try Checkpoint(path: path)
                Issue.record("\(name) cut at \(n) of \(data.count) bytes opened")
            } catch {
                failures += 1
            }
            if n % 97 == 0, let r = try? ScanBuilder(path: path).build() {
                // What is left of the pickles may still be listed; the file stays unreadable (the CLI exits 2).
                #expect(r.readError != nil && !r.isDangerous)
            }
        }
        #expect(failures == data.count)
        try data.write(to: URL(fileURLWithPath: path))
        _ = try Checkpoint(path: path)
    }
}

@Suite struct DecoderCostTests {
    /// 400,000 single APPENDs and SETITEMs (how protocols 0 and 1 build containers) decode in linear time: the
    /// items land in place (a few seconds in a debug build). When each one copied its container this took
    /// minutes (200,000 of each: 27 s; quadratic, so 400,000: about 2 minutes), past the time limit.
    @Test(.timeLimit(.minutes(1))) func oneAtATimeContainersAreLinear() throws {
        let n = 400_000
        var p = P.proto2 + [0x5D]
        for _ in 0..<n { p += [0x4E, 0x61] }  // NONE, APPEND
        p += [0x7D]
        for i in 0..<n { p += [0x4A] + withUnsafeBytes(of: Int32(i).littleEndian, Array.init) + [0x4E, 0x73] }  // BININT, NONE, SETITEM
        p += [0x86] + P.stop
        let g = try PickleDecoder.decode(p)
        #expect(g.sequence(g.root).map { ids in ids.map { g.sequence($0)?.count ?? g.dictEntries($0)?.count } } == [n, n])
    }

    /// Integer text longer than CPython accepts (4300 digits) is refused, not converted in quadratic time.
    @Test func hugeIntegerTextIsRefused() {
        let p = P.proto2 + [0x4C] + Array(String(repeating: "9", count: 100_000).utf8) + [0x0A] + P.stop
        #expect(throws: PickleError.self) { try PickleDecoder.decode(p) }
        let ok = P.proto2 + [0x4C] + Array(String(repeating: "9", count: 4300).utf8) + [0x4C, 0x0A] + P.stop
        #expect(throws: Never.self) { try PickleDecoder.decode(ok) }
    }
}

@Suite struct EncoderFuzzFindings {
    /// fuzz/crashers/pickle/crash-fc570e62...: a protocol-4 STACK_GLOBAL named `torch` + `F\x01...\nage`. Written
    /// back as protocol 2, the newline ended the GLOBAL's name early and the rest became opcodes, so the encoder's
    /// output no longer decoded. Such a name is now refused when encoding.
    @Test func globalNameWithANewlineIsUnencodable() throws {
        let p = [0x80, 0x04] + P.str("torch") + P.str("F\u{1}\nage") + P.stackGlobal + P.stop
        let g = try PickleDecoder.decode(p)
        #expect(g.globalName(g.root) == "torch.F\u{1}\nage")
        #expect(throws: PickleError.self) { try PickleEncoder.encode(g) }
    }
}
