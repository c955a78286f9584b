import Foundation
import Testing
@testable import CkptCore

/// The reader of TorchScript's `code/` class declarations (``TorchScriptCode``): against the source torch's
/// python_print writes and the class types torch compiles from it, then one test per form it must refuse.
@Suite struct TorchScriptCodeTests {
    /// torch.jit.script of a module tree, saved; for every `code/*.py` record its text, and for every module torch
    /// loads back its class's qualified name with `named_parameters`/`named_buffers`/`named_children` (not
    /// recursing), which are the slots in declaration order.
    @Test func declarationsAgreeWithTheClassTypesTorchCompiles() throws {
        // torch.jit.script reads the classes' source with inspect, so the script runs from a file.
        let script = """
        import torch, torch.nn as nn, io, zipfile, json
        from typing import List, Optional
        class Leaf(nn.Module):
            def __init__(s):
                super().__init__()
                s.register_buffer("b0", torch.zeros(2))
                s.lin = nn.Linear(2, 2)
                s.p = nn.Parameter(torch.ones(2))
                s.register_parameter("gone", None)
                s.register_buffer("tmp", torch.ones(1), persistent=False)
                s.ints: List[int] = [1, 2]
            def forward(s, x): return s.lin(x) * s.p + s.b0 + s.tmp
        class Top(nn.Module):
            def __init__(s):
                super().__init__()
                s.items = nn.ModuleList([Leaf(), Leaf()])
                s.named = nn.ModuleDict({"a-b": nn.Linear(2, 2), "c": Leaf()})
                s.bn = nn.BatchNorm1d(2)
                s.seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
            def forward(s, x):
                for m in s.items: x = m(x)
                return s.seq(s.bn(s.named["c"](s.named["a-b"](x))))
        buf = io.BytesIO(); torch.jit.save(torch.jit.script(Top()), buf); buf.seek(0)
        z = zipfile.ZipFile(buf)
        files = {n.split("/", 1)[1]: z.read(n).decode() for n in z.namelist() if n.endswith(".py")}
        buf.seek(0); m = torch.jit.load(buf)
        classes = {}
        for sub in m.modules():
            classes[sub._c._type().qualified_name()] = {
                "parameters": [n for n, _ in sub.named_parameters(recurse=False)],
                "buffers": [n for n, _ in sub.named_buffers(recurse=False)],
                "children": [n for n, _ in sub.named_children()]}
        print(json.dumps({"files": files, "classes": classes}))
        """
        struct Facts: Decodable {
            struct Class: Decodable { var parameters: [String]; var buffers: [String]; var children: [String] }
            var files: [String: String]
            var classes: [String: Class]
        }
        let runner = "import sys, os, runpy, tempfile\nf = os.path.join(tempfile.mkdtemp(), 'model.py')\n"
            + "open(f, 'w').write(sys.argv[1])\nrunpy.run_path(f, run_name='__main__')\n"
        let facts = try JSONDecoder().decode(Facts.self, from: try Oracle.run(runner, [script]))
        var declared: [String: ScriptClassDeclaration] = [:]
        for (record, text) in facts.files {
            let module = try #require(TorchScriptCode.moduleName(ofRecord: record))
            for d in try TorchScriptCode.declarations(in: text, module: module, record: record) { declared[d.name] = d }
        }
        #expect(facts.classes.count >= 6)
        for (name, c) in facts.classes {
            let d = try #require(declared[name], "no declaration read for \(name)")
            #expect(d.isModule)
            // The parameters a module declares include None ones (`gone`); torch lists only the tensors.
            #expect(d.parametersInSlotOrder.filter { $0 != "gone" } == c.parameters, "\(name)")
            #expect(d.buffersInSlotOrder == c.buffers, "\(name)")
            #expect(d.attributes.filter { c.children.contains($0) } == c.children, "\(name): children in slot order")
        }
    }

    @Test func recordNamesGiveModuleNames() {
        #expect(TorchScriptCode.moduleName(ofRecord: "code/__torch__.py") == "__torch__")
        #expect(TorchScriptCode.moduleName(ofRecord: "code/__torch__/torch/nn/modules/linear/___torch_mangle_0.py")
            == "__torch__.torch.nn.modules.linear.___torch_mangle_0")
        #expect(TorchScriptCode.moduleName(ofRecord: "code/__torch__.py.debug_pkl") == nil)
        #expect(TorchScriptCode.moduleName(ofRecord: "extra/x.py") == nil)
    }

    @Test func readsTheFormsPythonPrintWrites() throws {
        let source = """
        class M(Module):
          __parameters__ = ["w", "it's", ]
          __buffers__ = []
          w : Tensor
          __annotations__["it's"] = Tensor
          __annotations__["a-b"] = __torch__.torch.nn.modules.linear.Linear
          training : bool
          eps : Final[float] = 1.0000000000000001e-05
          def forward(self: __torch__.M,
            x: Tensor) -> Tensor:
            return x
          @torch.jit.export
          def other(self: __torch__.M) -> int:
            return 1
        class Holder:
          t : Tensor
          def __init__(self: __torch__.Holder,
            t: Tensor) -> NoneType:
            self.t = t
            return None
        class Color(Enum):
          RED = 1
        def helper(x: Tensor) -> Tensor:
          return x
        """
        let d = try TorchScriptCode.declarations(in: source, module: "__torch__", record: "code/__torch__.py")
        #expect(d.map(\.name) == ["__torch__.M", "__torch__.Holder", "__torch__.Color"])
        #expect(d[0].isModule && !d[1].isModule && !d[2].isModule)
        #expect(d[0].attributes == ["w", "it's", "a-b", "training"])
        #expect(d[0].parameters == ["w", "it's"])
        #expect(d[1].attributes == ["t"])
        #expect(d[2].attributes.isEmpty)
        var lit: Substring = #""a\"b\\c\x41\u00e9" rest"#
        #expect(try TorchScriptCode.stringLiteral(&lit, record: "r", line: 1) == "a\"b\\cAé")
        #expect(lit == " rest")
    }

    @Test(arguments: [
        // python_print writes `name : Type`; anything else at class level is not read as a guess.
        ("class M(Module):\n  __parameters__ = []\n  weight: Tensor\n", "cannot read the class-level line"),
        ("class M(Module):\n  __parameters__ = [\"w\", ]\n  training : bool\n", "declares no such attribute"),
        ("class M(Module):\n  __parameters__ = [w]\n", "cannot read a string literal"),
        ("class M(Module):\n  __parameters__ = [\"w\"\n", "cannot read this list of names"),
        ("class M(Module:\n", "cannot read this class header"),
        ("class M(Module):\n   w : Tensor\n", "unexpected indentation"),
        ("class M(Module):\n  __annotations__[\"w\"] : Tensor\n", "cannot read this __annotations__ line"),
        ("class M(Module):\n  __buffers__ = [\"\\q\", ]\n", "cannot read a string literal"),
    ])
    func refusesWhatItCannotRead(source: String, reason: String) {
        #expect {
            _ = try TorchScriptCode.declarations(in: source, module: "__torch__", record: "code/__torch__.py")
        } throws: { error in
            (error as? ScriptCodeError)?.reason.contains(reason) == true
        }
    }
}
