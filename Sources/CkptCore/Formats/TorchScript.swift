/// What a TorchScript archive (`torch.jit.save`, `_save_for_lite_interpreter`) holds besides `data.pkl` and its
/// storages, read as torch reads it.
///
/// torch.load calls a zip holding `<root>/constants.pkl` TorchScript (torch/serialization.py,
/// `_is_torchscript_zip`) and hands it to torch.jit.load. The archive (torch/csrc/jit/serialization/
/// export_module.cpp) holds `data.pkl` (the module objects, `__torch__.*` classes whose BUILD state holds their
/// attributes; storages under `data/`), `code/<module path>.py` (each class's declaration, see
/// ``TorchScriptCode``) and `.py.debug_pkl` (source ranges), `constants.pkl` (a tuple of the constants the code
/// uses, tensors stored under `constants/`), `extra/<name>` (`_extra_files`), `bytecode.pkl` in mobile `.ptl`
/// files, `traced_inputs.pkl` for traced modules, `version`, `byteorder`. `code/` and `.debug_pkl` records are
/// often deflated.
public struct TorchScriptArchive: Sendable {
    /// One record of the archive as `info` lists it.
    public struct Record: Sendable {
        /// The name inside the root folder (`code/__torch__.py`).
        public var name: String
        public var kind: RecordKind
        public var size: UInt64
        /// Whether the record is deflated (or otherwise compressed).
        public var compressed: Bool
    }

    /// What a record is for.
    public enum RecordKind: String, Sendable {
        case pickle = "data.pkl", code, debug = "debug info", constants = "constants.pkl", constantStorage = "constant storage"
        case bytecode = "mobile bytecode", extra = "extra file", tracedInputs = "traced inputs", storage, other
    }

    /// Every record but the storages under `data/`, in directory order.
    public var records: [Record]
    /// The class declarations of `code/`, by qualified name.
    public var classes: [String: ScriptClassDeclaration]
    /// The tensors of `constants.pkl`, named `constants.<index>` (constants are not in `state_dict()`). Their
    /// storage keys name records under `constants/`, not `data/`.
    public var constants: [NamedTensor]
    /// Bytes of the distinct storages the constants use.
    public var constantStorageBytes: Int64
    /// Whether the archive is a mobile (lite interpreter) file: it has `bytecode.pkl`.
    public var isMobile: Bool

    /// The total of the constants' elements and tensor bytes.
    public var constantTotals: (elements: Int64, bytes: Int64) {
        constants.reduce((Int64(0), Int64(0))) { ($0.0 &+ ($1.tensor.numel ?? 0), $0.1 &+ ($1.tensor.byteCount ?? 0)) }
    }

    /// One line for commands that show the state_dict view when constants.pkl holds tensors (they are not in it;
    /// a module made by torch.jit.freeze keeps all its weights there). Nil when it holds none.
    public var constantsNote: String? {
        guard let first = constants.first else { return nil }
        let names = constants.count == 1 ? first.name : "\(first.name) ... \(constants.last!.name)"
        return "\(constants.count) tensor\(constants.count == 1 ? " is" : "s are") in constants.pkl (\(names), "
            + "\(Figures.bytes(constantStorageBytes))), not in the state_dict view; torch.jit.freeze keeps weights there"
    }

    /// The custom C++ classes (`torch.classes`, e.g. quantized packed parameters) have no declaration in `code/`.
    static func isBuiltinClass(_ qualifiedName: String) -> Bool { qualifiedName.hasPrefix("__torch__.torch.classes.") }

    /// Largest `code/` record read (a declaration file of a real model is kilobytes).
    static let maxCodeBytes: UInt64 = 64 << 20

    /// Whether an open zip is a TorchScript archive, as torch.load decides: it holds `<root>/constants.pkl`.
    /// torch.load's `_is_torchscript_zip`: `"constants.pkl" in zip_file.get_all_records()`, the record names with the
    /// root folder cut off, compared exactly (not through the case-blind lookup of ``ZipReader/entry(named:)``).
    static func isTorchScript(_ zip: ZipReader) -> Bool {
        let name = zip.root.isEmpty ? "constants.pkl" : zip.root + "/constants.pkl"
        return zip.entries.contains { $0.name == name }
    }

    /// Reads the archive's records, class declarations and constants, and checks `graph` (the decoded data.pkl)
    /// against them: every `__torch__` object has a declaration, every module's state is a dict holding each
    /// parameter and buffer its class declares. Throws what torch.jit.load would trip over, and what ckpt cannot
    /// read (a declaration it cannot parse), rather than list a wrong or empty view.
    static func read(_ zip: ZipReader, graph: PickleGraph, limits: PickleLimits) throws(CheckpointError) -> TorchScriptArchive {
        let prefix = zip.root.isEmpty ? "" : zip.root + "/"
        var records: [Record] = []
        var classes: [String: ScriptClassDeclaration] = [:]
        for e in zip.entries {
            guard e.name.hasPrefix(prefix) else {
                records.append(Record(name: e.name, kind: .other, size: e.size, compressed: e.method != .stored))
                continue
            }
            let name = String(e.name.dropFirst(prefix.count))
            let kind: RecordKind
            if name.hasPrefix("data/") { continue }
            if name == "data.pkl" { kind = .pickle }
            else if name == "constants.pkl" { kind = .constants }
            else if name == "bytecode.pkl" { kind = .bytecode }
            else if name == "traced_inputs.pkl" || name.hasPrefix("traced_inputs/") { kind = .tracedInputs }
            else if name.hasPrefix("constants/") { kind = .constantStorage }
            else if name.hasPrefix("extra/") { kind = .extra }
            else if name.hasPrefix("code/") && name.hasSuffix(".debug_pkl") { kind = .debug }
            else if name.hasPrefix("code/") { kind = .code }
            else { kind = .other }
            records.append(Record(name: name, kind: kind, size: e.size, compressed: e.method != .stored))
            guard kind == .code, let module = TorchScriptCode.moduleName(ofRecord: name) else { continue }
            let bytes: [UInt8]
            do { bytes = try zip.readAll(e, limit: maxCodeBytes) } catch { throw .container(error) }
            guard let source = String(validating: bytes, as: UTF8.self) else {
                throw .notACheckpoint("TorchScript code record \(e.name) is not UTF-8 text")
            }
            let declared: [ScriptClassDeclaration]
            do {
                declared = try TorchScriptCode.declarations(in: source, module: module, record: e.name)
            } catch {
                throw .notACheckpoint("cannot read a TorchScript class declaration: \(error.description)")
            }
            for d in declared { classes[d.name] = d }
        }

        var withClasses = graph
        withClasses.scriptClasses = classes
        try withClasses.checkScriptObjects()

        // constants.pkl: a tuple of the constants the code uses; tensors among them keep their storages in constants/.
        let cEntry = zip.entry(named: "constants.pkl")!
        let cBytes: [UInt8]
        do { cBytes = try zip.readAll(cEntry, limit: Checkpoint.maxPickleBytes) } catch { throw .container(error) }
        let cGraph: PickleGraph
        do { cGraph = try PickleDecoder.decode(cBytes, limits: limits) } catch { throw .pickle(record: cEntry.name, error) }
        var constants: [NamedTensor] = []
        var storageBytes: Int64 = 0
        var seen = Set<String>()
        for t in try cGraph.allTensors(from: cGraph.root, limits: limits) {
            let record = prefix + "constants/" + t.tensor.storage.key
            guard let e = zip.entry(fullName: record) else { throw .missingRecord(record) }
            let name = "constants." + (t.name.isEmpty ? "0" : t.name)
            do { try t.tensor.check(name: name, recordBytes: Int64(e.size)) } catch { throw .tensor(error) }
            if seen.insert(t.tensor.storage.key).inserted { storageBytes &+= Int64(e.size) }
            constants.append(NamedTensor(name: name, tensor: t.tensor))
        }
        return TorchScriptArchive(records: records, classes: classes, constants: constants,
                                  constantStorageBytes: storageBytes,
                                  isMobile: zip.entry(named: "bytecode.pkl") != nil)
    }
}

extension PickleGraph {
    /// The declaration of a TorchScript object's class, when the graph is a TorchScript data.pkl (see
    /// ``scriptClasses``) and the object is a `__torch__` class it declares.
    func scriptClass(_ id: NodeID) -> ScriptClassDeclaration? {
        guard !scriptClasses.isEmpty, case .object(let o) = self[id], case .global(let m, let n) = self[o.callable],
              m.hasPrefix("__torch__") else { return nil }
        return scriptClasses[m + "." + n]
    }

    /// The tensor nodes that some TorchScript module's class declares as parameters (`__parameters__`).
    func scriptParameterTensors() -> Set<NodeID> {
        var out = Set<NodeID>()
        for (i, node) in nodes.enumerated() {
            guard case .object(let o) = node, let decl = scriptClass(NodeID(i)), decl.isModule, !decl.parameters.isEmpty,
                  let s = o.state else { continue }
            for p in decl.parameters {
                if let v = lookup(s, p), let t = (try? tensor(v)) ?? nil { out.insert(t.tensorNode) }
            }
        }
        return out
    }

    /// Checks every `__torch__` object of a TorchScript data.pkl against the class declarations (see
    /// ``TorchScriptArchive/read(_:graph:limits:)``).
    func checkScriptObjects() throws(CheckpointError) {
        for (i, node) in nodes.enumerated() {
            guard case .object(let o) = node, case .global(let m, let n) = self[o.callable],
                  m == "__torch__" || m.hasPrefix("__torch__.") else { continue }
            let name = m + "." + n
            if TorchScriptArchive.isBuiltinClass(name) { continue }
            guard let decl = scriptClasses[name] else {
                throw .notACheckpoint("TorchScript class \(name) has no declaration under code/")
            }
            guard decl.isModule else { continue }
            guard let s = o.state, let entries = dictEntries(s) else {
                // State given to its own __setstate__ (quantized modules): what it sets cannot be read without running
                // its code, but when the class declares no parameter, no buffer and no attribute of a class type,
                // the module adds nothing to state_dict() whatever it sets (the state_dict walk skips it).
                if decl.parameters.isEmpty && decl.buffers.isEmpty && decl.hasNoClassTypedAttributes { continue }
                throw .notACheckpoint("TorchScript module \(name) (#\(i)) sets its state with __setstate__; "
                    + "its parameters cannot be told without running its code")
            }
            let present = Set(entries.compactMap { string($0.key) })
            for a in decl.parameters + decl.buffers where !present.contains(a) {
                throw .notACheckpoint("TorchScript module \(name) (#\(i)) declares '\(a)' but its state has no such attribute")
            }
        }
    }
}
