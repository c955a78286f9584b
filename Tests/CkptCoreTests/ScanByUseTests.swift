import Foundation
import Testing
@testable import CkptCore

/// Pickle fragments for the use table (protocol 2 opcodes unless said otherwise).
private enum Q {
    static func str(_ s: String) -> [UInt8] {
        let b = Array(s.utf8)
        return [0x58] + withUnsafeBytes(of: UInt32(b.count).littleEndian, Array.init) + b
    }
    static func global(_ m: String, _ n: String) -> [UInt8] { [0x63] + Array(m.utf8) + [0x0A] + Array(n.utf8) + [0x0A] }
    /// Protocol 4 STACK_GLOBAL of two strings.
    static func stackGlobal(_ m: String, _ n: String) -> [UInt8] { str(m) + str(n) + [0x93] }
    /// callable(*args) with REDUCE.
    static func call(_ f: [UInt8], _ args: [UInt8]...) -> [UInt8] { f + [0x28] + args.flatMap { $0 } + [0x74, 0x52] }
    /// cls.__new__(cls, *args) with NEWOBJ.
    static func newObj(_ cls: [UInt8], _ args: [UInt8]...) -> [UInt8] { cls + [0x28] + args.flatMap { $0 } + [0x74, 0x81] }
    static let none: [UInt8] = [0x4E]
    static let emptyDict: [UInt8] = [0x7D]
    static let build: [UInt8] = [0x62]
    /// A protocol-4 pickle of one value.
    static func pickle(_ body: [UInt8]) -> [UInt8] { [0x80, 0x04] + body + [0x2E] }
    /// {'a': v1, 'b': v2, ...}
    static func dict(_ values: [UInt8]...) -> [UInt8] {
        [0x7D, 0x28] + values.enumerated().flatMap { str("k\($0.offset)") + $0.element } + [0x75]
    }
}

private struct Row: Equatable, CustomStringConvertible {
    var name: String
    var use: String
    var cls: String
    var description: String { "\(name) \(use) \(cls)" }
}

private func rows(_ body: [UInt8]) -> [Row] {
    let s = PickleScanner.scan(Q.pickle(body), label: "t")
    let r = ScanReport(file: "t", format: "pickle stream", pickles: [s], readError: nil)
    return r.globals.map { Row(name: $0.name, use: $0.use.rawValue, cls: $0.verdict.globalClass.rawValue) }
}

private func row(_ rs: [Row], _ name: String, _ use: String) -> Row? { rs.first { $0.name == name && $0.use == use } }

@Suite struct ScanByUseTests {
    /// One small pickle per way of using a global; each expected (global, use, class) row.
    @Test(arguments: [
        // called: REDUCE, INST, OBJ, NEWOBJ with arguments, _reconstructor's base, defaultdict's factory
        (Q.call(Q.global("os", "system"), Q.str("id")), "os.system", "called", "dangerous"),
        (Q.call(Q.global("codecs", "open"), Q.str("x"), Q.str("w")), "codecs.open", "called", "dangerous"),
        (Q.call(Q.global("collections", "OrderedDict")), "collections.OrderedDict", "called", "safe"),
        (Q.call(Q.global("__builtin__", "bytes")), "__builtin__.bytes", "called", "safe"),
        (Q.call(Q.global("pathlib", "PosixPath"), Q.str("a")), "pathlib.PosixPath", "called", "safe"),
        (Q.call(Q.global("torch.jit._pickle", "build_intlist"), [0x5D]), "torch.jit._pickle.build_intlist", "called", "safe"),
        (Q.call(Q.global("typing", "_eval_type"), Q.none, Q.none, Q.none), "typing._eval_type", "called", "dangerous"),
        ([0x28] + [0x69] + Array("os\nsystem\n".utf8), "os.system", "called", "dangerous"),  // INST
        ([0x28] + Q.global("subprocess", "Popen") + Q.str("id") + [0x6F], "subprocess.Popen", "called", "dangerous"),  // OBJ
        (Q.newObj(Q.global("jinja2", "Template"), Q.str("{{x}}")), "jinja2.Template", "called", "dangerous"),
        (Q.newObj(Q.global("pathlib", "PosixPath"), Q.str("a")), "pathlib.PosixPath", "called", "safe"),
        (Q.call(Q.global("copyreg", "_reconstructor"), Q.global("models.x", "D"), Q.global("builtins", "dict"), Q.emptyDict),
         "builtins.dict", "called", "safe"),
        (Q.call(Q.global("collections", "defaultdict"), Q.global("code", "interact")), "code.interact", "called", "dangerous"),
        (Q.call(Q.global("collections", "defaultdict"), Q.global("builtins", "list")), "builtins.list", "called", "safe"),
        // constructed: NEWOBJ without arguments, _reconstructor(cls, object, None)
        (Q.newObj(Q.global("models.yolo", "Detect")), "models.yolo.Detect", "constructed", "needs-code"),
        (Q.call(Q.global("copy_reg", "_reconstructor"), Q.global("models.x", "D"), Q.global("__builtin__", "object"), Q.none),
         "models.x.D", "constructed", "needs-code"),
        // legacy torch.save: a module's class comes back from persistent_load(('module', cls, file, source))
        ([0x28] + Q.str("module") + Q.global("models.x", "Net") + Q.str("x.py") + Q.str("src") + [0x74, 0x51, 0x29, 0x81],
         "models.x.Net", "constructed", "needs-code"),
        // built: NEWOBJ then BUILD runs __setstate__: third-party code needs-code, torch.nn allowed, stdlib dangerous
        (Q.newObj(Q.global("models.yolo", "Detect")) + Q.emptyDict + Q.build, "models.yolo.Detect", "built", "needs-code"),
        (Q.newObj(Q.global("torch.nn.modules.conv", "Conv2d")) + Q.emptyDict + Q.build,
         "torch.nn.modules.conv.Conv2d", "built", "needs-code"),
        (Q.newObj(Q.global("argparse", "Namespace")) + Q.emptyDict + Q.build, "argparse.Namespace", "built", "safe"),
        (Q.newObj(Q.global("threading", "Thread")) + Q.emptyDict + Q.build, "threading.Thread", "built", "dangerous"),
        (Q.newObj(Q.global("torch.fx.graph_module", "GraphModule")) + Q.emptyDict + Q.build,
         "torch.fx.graph_module.GraphModule", "built", "dangerous"),
        // referenced only
        (Q.global("torch", "float32"), "torch.float32", "referenced", "safe"),
        (Q.global("models.common", "Conv"), "models.common.Conv", "referenced", "needs-code"),
        (Q.global("os", "system"), "os.system", "referenced", "dangerous"),  // the block list still holds
        // protocol-4 dotted names, judged by what they reach
        (Q.call(Q.stackGlobal("numpy", "testing._private.utils.runstring"), Q.str("1"), Q.emptyDict),
         "numpy.testing._private.utils.runstring", "called", "dangerous"),
        (Q.call(Q.stackGlobal("pathlib", "Path.write_text"), Q.str("a"), Q.str("b")), "pathlib.Path.write_text", "called", "dangerous"),
        (Q.stackGlobal("collections", "OrderedDict.__init__.__globals__"), "collections.OrderedDict.__init__.__globals__",
         "referenced", "dangerous"),
        // getattr of a constant name on a global: a reference (mmengine's message hub)
        (Q.call(Q.global("builtins", "getattr"), Q.global("mmengine.logging.history_buffer", "HistoryBuffer"), Q.str("min")),
         "builtins.getattr", "getattr-constant", "safe"),
        (Q.call(Q.global("builtins", "getattr"), Q.global("mmengine.logging.history_buffer", "HistoryBuffer"), Q.str("min")),
         "mmengine.logging.history_buffer.HistoryBuffer.min", "referenced", "needs-code"),
        // ... whose result, called, is a call of a computed callable
        (Q.call(Q.call(Q.global("builtins", "getattr"), Q.global("pathlib", "Path"), Q.str("touch")), Q.str("m")),
         "pathlib.Path.touch", "called", "dangerous"),
        // getattr of a dunder, or of a value that is not a global: getattr itself is a dangerous call
        (Q.call(Q.global("builtins", "getattr"), Q.global("collections", "OrderedDict"), Q.str("__init__")),
         "builtins.getattr", "called", "dangerous"),
        (Q.call(Q.global("builtins", "getattr"), Q.call(Q.global("pathlib", "PosixPath"), Q.str("m")), Q.str("touch")),
         "builtins.getattr", "called", "dangerous"),
    ] as [([UInt8], String, String, String)])
    func useTable(_ body: [UInt8], _ name: String, _ use: String, _ cls: String) {
        let rs = rows(body)
        #expect(row(rs, name, use) == Row(name: name, use: use, cls: cls), "\(rs)")
    }

    /// A callable that is computed (the result of a call, a memo slot holding one) is dangerous when called.
    @Test func callOfAComputedCallable() {
        let importer = Q.call(Q.global("torch._utils", "_import_dotted_name"), Q.str("pathlib.Path.touch"))
        let rs = rows(Q.call(importer, Q.str("m")))
        #expect(row(rs, "torch._utils._import_dotted_name", "called")?.cls == "dangerous")
        #expect(rs.contains { $0.name.hasPrefix("<computed by REDUCE") && $0.cls == "dangerous" && $0.use == "called" }, "\(rs)")
        // through the memo: the result stored, fetched back, called
        let memo = importer + [0x94] + [0x30] + [0x68, 0x00] + [0x28] + Q.str("m") + [0x74, 0x52]
        let rm = rows(memo)
        #expect(rm.contains { $0.name.hasPrefix("<computed by REDUCE") && $0.cls == "dangerous" }, "\(rm)")
        // a memo slot holding a global is that global
        let viaMemo = Q.global("collections", "OrderedDict") + [0x94, 0x30, 0x68, 0x00] + [0x28, 0x74, 0x52]
        #expect(rows(viaMemo) == [Row(name: "collections.OrderedDict", use: "called", cls: "safe")])
    }

    /// A global used two ways is two rows; one global spelled two ways is two rows; nothing is merged.
    @Test func nothingIsMerged() {
        let od = Q.global("collections", "OrderedDict")
        let rs = rows(Q.dict(od, Q.call(od)))
        #expect(rs.filter { $0.name == "collections.OrderedDict" }.map(\.use) == ["called"])
        let two = rows(Q.dict(Q.global("torch._utils", "_import_dotted_name"),
                              Q.call(Q.stackGlobal("torch", "_utils._import_dotted_name"), Q.str("os"))))
        let spelled = two.filter { $0.name == "torch._utils._import_dotted_name" }
        #expect(spelled.count == 2, "\(two)")
        #expect(spelled.contains { $0.use == "called" && $0.cls == "dangerous" })
        #expect(spelled.contains { $0.use == "referenced" && $0.cls != "dangerous" })
    }

    /// BUILD on a global (a class, a function, a module) writes attributes into shared code.
    @Test func buildOnAGlobalIsDangerous() {
        let rs = rows(Q.global("torch", "load") + Q.emptyDict + Q.build)
        #expect(rs.contains { $0.name.hasPrefix("<computed by BUILD") && $0.cls == "dangerous" }, "\(rs)")
    }

    /// Framework labels and the modules whose code would run.
    @Test func frameworksAndCode() throws {
        let body = Q.dict(Q.newObj(Q.global("models.yolo", "DetectionModel")) + Q.emptyDict + Q.build,
                          Q.newObj(Q.global("torch.nn.modules.conv", "Conv2d")) + Q.emptyDict + Q.build,
                          Q.call(Q.global("ultralytics.utils", "IterableSimpleNamespace")))
        let s = PickleScanner.scan(Q.pickle(body), label: "t")
        let r = ScanReport(file: "t", format: "pickle stream", pickles: [s], readError: nil)
        #expect(!r.isDangerous)
        let fw = Dictionary(r.globals.map { ($0.name, $0.verdict.framework ?? "") }, uniquingKeysWith: { a, _ in a })
        #expect(fw["models.yolo.DetectionModel"] == "YOLOv5")
        #expect(fw["torch.nn.modules.conv.Conv2d"] == "torch.nn")
        #expect(fw["ultralytics.utils.IterableSimpleNamespace"] == "Ultralytics")
        let code = Dictionary(r.codeThatWouldRun.map { ($0.module, $0.what) }, uniquingKeysWith: { a, _ in a })
        #expect(code["models.yolo"] == "import, __setstate__")
        #expect(code["ultralytics.utils"] == "import, calls")
    }

    /// Every allow-list entry says why it cannot run code.
    @Test func everyAllowListEntryHasAReason() {
        for e in ScanAllowList.calls + ScanAllowList.constructions + ScanAllowList.constructionPrefixes {
            #expect(!e.why.isEmpty, "\(e.name)")
        }
        #expect(Set(ScanAllowList.calls.map(\.name)).count == ScanAllowList.calls.count)
    }
}

@Suite struct WeightsOnlyReplayTests {
    private func refusal(_ body: [UInt8]) -> String? {
        PickleScanner.scan([0x80, 0x02] + body + [0x2E], label: "t").weightsOnlyRefusal
    }

    @Test func buildRules() {
        let set = Q.call(Q.global("__builtin__", "set"))
        #expect(refusal(set + Q.emptyDict + Q.build) == nil)  // set() then BUILD {}: torch loads it
        #expect(refusal(set + Q.dict(Q.none) + Q.build) != nil)  // a set has no __dict__
        #expect(refusal([0x5D] + Q.emptyDict + Q.build) != nil)  // BUILD on a list
        let od = Q.call(Q.global("collections", "OrderedDict"))
        #expect(refusal(od + Q.dict(Q.none) + Q.build) == nil)
        // a dict stored in the memo may be filled through its other copy: not known to be empty
        #expect(refusal(set + Q.emptyDict + [0x94] + Q.build) != nil)
    }

    @Test func newObjOnlyOnClasses() {
        #expect(refusal(Q.global("torch", "float32") + [0x29, 0x81]) != nil)
        #expect(refusal(Q.global("collections", "OrderedDict") + [0x29, 0x81]) == nil)
        #expect(refusal(Q.global("torch._utils", "_rebuild_tensor_v2") + [0x29, 0x81]) != nil)
    }

    @Test func persistentIDTags() {
        let codecs = Q.call(Q.global("_codecs", "encode"), Q.str("storage"), Q.str("latin1"))
        #expect(refusal([0x28] + codecs + [0x74, 0x51]) == nil)
        let other = Q.call(Q.global("_codecs", "encode"), Q.str("module"), Q.str("latin1"))
        #expect(refusal([0x28] + other + [0x74, 0x51]) != nil)
        #expect(refusal([0x28] + Q.str("storage") + [0x74, 0x51]) == nil)
    }
}
