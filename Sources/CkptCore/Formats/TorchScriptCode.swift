/// A TorchScript class as its declaration under `code/` states it: which attributes it has, in slot order, and
/// which of them are parameters and buffers.
///
/// `torch.jit.save` prints every class it saves as Python source (torch/csrc/jit/serialization/python_print.cpp),
/// `code/__torch__/torch/nn/modules/linear.py` holding `__torch__.torch.nn.modules.linear.Linear`:
///
/// ```
/// class Linear(Module):
///   __parameters__ = ["weight", "bias", ]
///   __buffers__ = []
///   weight : Tensor
///   bias : Optional[Tensor]
///   training : bool
///   __annotations__["0"] = __torch__.Sub      (an attribute whose name is not an identifier)
///   in_features : Final[int] = 3              (a constant: not an attribute)
///   def forward(self: __torch__...Linear, ...
/// ```
///
/// `torch.jit.load` compiles these declarations into class types: the annotations, in order, become the slots, and
/// `named_parameters`/`named_buffers` (torch/csrc/jit/api/module.h) walk the slots in that order. ckpt reads the
/// class-level lines as data and never the methods; nothing is executed.
public struct ScriptClassDeclaration: Sendable, Equatable {
    /// The qualified name data.pkl's globals use (`__torch__.torch.nn.modules.linear.Linear`).
    public var name: String
    /// Whether the class derives from `Module` (a submodule when it is an attribute of a module).
    public var isModule: Bool
    /// Annotated attributes in declaration (slot) order, constants (`Final[...]`) excluded.
    public var attributes: [String]
    /// Each attribute's type as written (`Tensor`, `__torch__.torch.nn.modules.linear.Linear`), beside ``attributes``.
    public var attributeTypes: [String]
    /// `__parameters__`.
    public var parameters: [String]
    /// `__buffers__`.
    public var buffers: [String]

    public init(name: String, isModule: Bool, attributes: [String], attributeTypes: [String]? = nil,
                parameters: [String], buffers: [String]) {
        self.name = name
        self.isModule = isModule
        self.attributes = attributes
        self.attributeTypes = attributeTypes ?? attributes.map { _ in "" }
        self.parameters = parameters
        self.buffers = buffers
    }

    /// The parameters in slot order (the order `state_dict()` lists them).
    public var parametersInSlotOrder: [String] { let p = Set(parameters); return attributes.filter { p.contains($0) } }
    /// The buffers in slot order.
    public var buffersInSlotOrder: [String] { let b = Set(buffers); return attributes.filter { b.contains($0) } }

    /// Whether no attribute's type names a TorchScript class (`__torch__.…`, custom C++ classes aside): then no
    /// attribute can be a submodule, whatever values the object holds.
    public var hasNoClassTypedAttributes: Bool {
        !attributeTypes.contains { t in
            var rest = t[...]
            while let r = rest.range(of: "__torch__.") {
                if !rest[r.lowerBound...].hasPrefix("__torch__.torch.classes.") { return true }
                rest = rest[r.upperBound...]
            }
            return false
        }
    }
}

/// A line of a `code/` file that ckpt could not read as a class declaration.
public struct ScriptCodeError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The record (`code/__torch__.py`).
    public var record: String
    /// 1-based line number.
    public var line: Int
    public var reason: String
    public var description: String { "\(record), line \(line): \(reason)" }
}

/// Reads the class declarations of TorchScript's `code/` records as data.
public enum TorchScriptCode {
    /// The Python module a `code/` record defines: `code/__torch__/torch/nn/modules/linear.py` ->
    /// `__torch__.torch.nn.modules.linear`. Nil for records that are not code (`.debug_pkl`, other files).
    public static func moduleName(ofRecord relative: String) -> String? {
        guard relative.hasPrefix("code/"), relative.hasSuffix(".py") else { return nil }
        let path = relative.dropFirst("code/".count).dropLast(".py".count)
        guard !path.isEmpty else { return nil }
        return path.split(separator: "/", omittingEmptySubsequences: false).joined(separator: ".")
    }

    /// The classes a `code/` file declares, each with its class-level annotations and its `__parameters__` and
    /// `__buffers__` lists. Method bodies and other statements are skipped. A class-level line of a form this
    /// reader does not know, a `__parameters__`/`__buffers__` name without an annotation, or a list it cannot
    /// read throws: a declaration read wrong would list the wrong tensors.
    public static func declarations(in source: String, module: String, record: String)
        throws(ScriptCodeError) -> [ScriptClassDeclaration]
    {
        var out: [ScriptClassDeclaration] = []
        var current: ScriptClassDeclaration? = nil
        var currentLine = 0
        var inMethod = false
        func finish() throws(ScriptCodeError) {
            guard let c = current else { return }
            let declared = Set(c.attributes)
            for n in c.parameters + c.buffers where !declared.contains(n) {
                throw ScriptCodeError(record: record, line: currentLine,
                                      reason: "class \(c.name) lists '\(n)' in __parameters__ or __buffers__ but declares no such attribute")
            }
            out.append(c)
            current = nil
        }
        var lineNumber = 0
        for raw in source.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw[...]
            if line.allSatisfy({ $0 == " " }) { continue }
            let indent = line.prefix { $0 == " " }.count
            let text = line.dropFirst(indent)
            if indent == 0 {
                try finish()
                inMethod = false
                if text.hasPrefix("class ") {
                    let (name, base) = try classHeader(text.dropFirst("class ".count), record: record, line: lineNumber)
                    current = ScriptClassDeclaration(name: module + "." + name, isModule: base == "Module",
                                                     attributes: [], attributeTypes: [], parameters: [], buffers: [])
                    currentLine = lineNumber
                }
                // Other top-level statements (functions, imports, module constants) declare no class.
                continue
            }
            guard current != nil else { continue }  // the body of a top-level function
            if indent > 2 {
                // A method body or a continued signature.
                guard inMethod else {
                    throw ScriptCodeError(record: record, line: lineNumber, reason: "unexpected indentation in a class body")
                }
                continue
            }
            guard indent == 2 else {
                throw ScriptCodeError(record: record, line: lineNumber, reason: "unexpected indentation in a class body")
            }
            inMethod = false
            if text.hasPrefix("def ") || text.hasPrefix("@") {
                inMethod = true
                continue
            }
            if text.hasPrefix("__parameters__ = ") {
                current!.parameters = try stringList(text.dropFirst("__parameters__ = ".count), record: record, line: lineNumber)
            } else if text.hasPrefix("__buffers__ = ") {
                current!.buffers = try stringList(text.dropFirst("__buffers__ = ".count), record: record, line: lineNumber)
            } else if text.hasPrefix("__annotations__[") {
                // `__annotations__["0"] = __torch__.Sub`
                var rest = text.dropFirst("__annotations__[".count)
                let name = try stringLiteral(&rest, record: record, line: lineNumber)
                guard rest.hasPrefix("] = ") else {
                    throw ScriptCodeError(record: record, line: lineNumber, reason: "cannot read this __annotations__ line")
                }
                current!.attributes.append(name)
                current!.attributeTypes.append(String(rest.dropFirst("] = ".count)))
            } else if let colon = text.range(of: " : ") {
                let name = text[..<colon.lowerBound]
                guard isIdentifier(name) else {
                    throw ScriptCodeError(record: record, line: lineNumber, reason: "cannot read the attribute name '\(name)'")
                }
                let type = text[colon.upperBound...]
                // `name : Final[int] = 3` is a constant, inlined into the code: not a slot.
                if type.hasPrefix("Final[") { continue }
                current!.attributes.append(String(name))
                current!.attributeTypes.append(String(type))
            } else if let eq = text.range(of: " = "), isIdentifier(text[..<eq.lowerBound]) {
                // An enum's values, `__constants__`-style class variables: no slot.
                continue
            } else {
                throw ScriptCodeError(record: record, line: lineNumber, reason: "cannot read the class-level line '\(text)'")
            }
        }
        try finish()
        return out
    }

    /// `Name(Base):` -> (Name, Base); `Name:` -> (Name, "").
    private static func classHeader(_ s: Substring, record: String, line: Int) throws(ScriptCodeError) -> (String, String) {
        guard s.hasSuffix(":") else { throw ScriptCodeError(record: record, line: line, reason: "cannot read this class header") }
        let body = s.dropLast()
        if let open = body.firstIndex(of: "(") {
            let name = body[..<open]
            guard body.hasSuffix(")"), isIdentifier(name) else {
                throw ScriptCodeError(record: record, line: line, reason: "cannot read this class header")
            }
            let base = body[body.index(after: open)..<body.index(before: body.endIndex)]
            return (String(name), String(base))
        }
        guard isIdentifier(body) else { throw ScriptCodeError(record: record, line: line, reason: "cannot read this class header") }
        return (String(body), "")
    }

    private static func isIdentifier(_ s: Substring) -> Bool {
        guard let first = s.unicodeScalars.first, first == "_" || first.properties.isAlphabetic else { return false }
        return s.unicodeScalars.allSatisfy { $0 == "_" || $0.properties.isAlphabetic || ("0"..."9").contains($0) }
    }

    /// `["a", "b", ]` (python_print's spelling, trailing comma included) or `[]`.
    private static func stringList(_ s: Substring, record: String, line: Int) throws(ScriptCodeError) -> [String] {
        var rest = s
        guard rest.hasPrefix("[") else { throw ScriptCodeError(record: record, line: line, reason: "expected a list of names") }
        rest = rest.dropFirst()
        var out: [String] = []
        while true {
            rest = rest.drop { $0 == " " }
            if rest == "]" { return out }
            out.append(try stringLiteral(&rest, record: record, line: line))
            rest = rest.drop { $0 == " " }
            if rest.hasPrefix(",") { rest = rest.dropFirst(); continue }
            guard rest == "]" else { throw ScriptCodeError(record: record, line: line, reason: "cannot read this list of names") }
            return out
        }
    }

    /// A Python string literal in single or double quotes, with the escapes python_print writes
    /// (`\\`, `\'`, `\"`, `\n`, `\t`, `\r`, `\xNN`, `\uNNNN`); consumes it from `s`.
    static func stringLiteral(_ s: inout Substring, record: String, line: Int) throws(ScriptCodeError) -> String {
        let bad = ScriptCodeError(record: record, line: line, reason: "cannot read a string literal")
        guard let quote = s.first, quote == "\"" || quote == "'" else { throw bad }
        var scalars = String.UnicodeScalarView()
        var it = s.unicodeScalars.dropFirst()
        while let c = it.first {
            it = it.dropFirst()
            if Character(c) == quote {
                s = Substring(it)
                return String(scalars)
            }
            guard c == "\\" else { scalars.append(c); continue }
            guard let e = it.first else { throw bad }
            it = it.dropFirst()
            switch e {
            case "\\", "'", "\"": scalars.append(e)
            case "n": scalars.append("\n")
            case "t": scalars.append("\t")
            case "r": scalars.append("\r")
            case "x", "u", "U":
                let n = e == "x" ? 2 : (e == "u" ? 4 : 8)
                let hex = String(String.UnicodeScalarView(it.prefix(n)))
                guard hex.count == n, let v = UInt32(hex, radix: 16), let u = Unicode.Scalar(v) else { throw bad }
                scalars.append(u)
                it = it.dropFirst(n)
            default: throw bad
            }
        }
        throw bad
    }
}
