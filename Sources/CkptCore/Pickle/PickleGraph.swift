/// The index of a node in a ``PickleGraph``. Two references to one object share one `NodeID`.
public struct NodeID: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Position in ``PickleGraph/nodes``.
    public let index: Int
    /// Wraps a position in the graph's node array.
    public init(_ index: Int) { self.index = index }
    public static func < (a: NodeID, b: NodeID) -> Bool { a.index < b.index }
    public var description: String { "#\(index)" }
}

/// A key and value of a dict, an `OrderedDict` or an object's SETITEMS, in insertion order.
public struct DictEntry: Hashable, Sendable {
    public var key: NodeID
    public var value: NodeID
    public init(key: NodeID, value: NodeID) { self.key = key; self.value = value }
}

/// An object made by a callable: REDUCE, NEWOBJ, NEWOBJ_EX, INST or OBJ, with what was later
/// appended, set or built onto it. The callable is a name (usually a ``PickleNode/global(module:name:)``):
/// nothing is ever called.
public struct PickleObject: Hashable, Sendable {
    /// The opcode that made the object, so that it is written back the same way.
    public enum Construction: Hashable, Sendable { case reduce, newObj, newObjEx, inst, obj }
    public var construction: Construction
    /// The class or function named (a global node for everything torch writes).
    public var callable: NodeID
    /// The argument tuple.
    public var args: NodeID
    /// Keyword arguments of NEWOBJ_EX.
    public var kwargs: NodeID?
    /// Items APPENDed to the object (list subclasses).
    public var listItems: [NodeID]
    /// Items SETITEM'd onto the object (`OrderedDict`, dict subclasses).
    public var dictItems: [DictEntry]
    /// The state given by BUILD (`__setstate__` or `__dict__` update).
    public var state: NodeID?

    public init(construction: Construction, callable: NodeID, args: NodeID, kwargs: NodeID? = nil,
                listItems: [NodeID] = [], dictItems: [DictEntry] = [], state: NodeID? = nil) {
        self.construction = construction
        self.callable = callable
        self.args = args
        self.kwargs = kwargs
        self.listItems = listItems
        self.dictItems = dictItems
        self.state = state
    }
}

/// One value of a decoded pickle. Containers refer to their items by ``NodeID``, so shared
/// and recursive structure is kept exactly.
public enum PickleNode: Hashable, Sendable {
    case none
    case bool(Bool)
    case int(Int64)
    /// An integer outside Int64, as LONG1 stores it: little-endian two's complement, minimal length.
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case bytearray([UInt8])
    case tuple([NodeID])
    case list([NodeID])
    case dict([DictEntry])
    case set([NodeID])
    case frozenset([NodeID])
    /// A name: `module.name`. Never imported.
    // The two large payloads are boxed (`indirect`) so that a node takes 24 bytes instead of 72: the arena of a
    // large pickle is most of what `keys` and `info` touch, and every page of it costs a fault.
    indirect case global(module: String, name: String)
    /// What `persistent_load(pid)` would return; for torch, a storage.
    case persistent(pid: NodeID)
    indirect case object(PickleObject)
}

/// A decoded pickle: an arena of nodes and the root the pickle returned.
public struct PickleGraph: Sendable {
    /// All nodes, referenced by index.
    public var nodes: [PickleNode]
    /// The value the pickle's STOP returned.
    public var root: NodeID
    /// For a TorchScript archive's data.pkl, the class declarations of its `code/` records by qualified name
    /// (see ``TorchScriptArchive``): which attributes of a `__torch__` object are parameters, buffers and
    /// submodules is declared there, not in the pickle. Empty for every other pickle.
    public var scriptClasses: [String: ScriptClassDeclaration] = [:]

    /// An empty graph whose root is a None node.
    public init() {
        nodes = [.none]
        root = NodeID(0)
    }

    /// The node behind an id.
    public subscript(id: NodeID) -> PickleNode {
        get { nodes[id.index] }
        set { nodes[id.index] = newValue }
    }

    /// Appends a node and returns its id.
    @discardableResult
    public mutating func add(_ node: PickleNode) -> NodeID {
        nodes.append(node)
        return NodeID(nodes.count - 1)
    }

    // MARK: - Reading helpers

    /// The string value of a node, if it is one.
    public func string(_ id: NodeID) -> String? {
        if case .string(let s) = self[id] { return s }
        return nil
    }

    /// Whether a node is None.
    @inline(__always)
    public func isNone(_ id: NodeID) -> Bool {
        if case .none = self[id] { return true }
        return false
    }

    /// The integer value of a node, if it fits Int64.
    public func int(_ id: NodeID) -> Int64? {
        switch self[id] {
        case .int(let v): return v
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    /// The items of a tuple or list node.
    public func sequence(_ id: NodeID) -> [NodeID]? {
        switch self[id] {
        case .tuple(let items), .list(let items): return items
        default: return nil
        }
    }

    /// `module.name` when the node is a global.
    public func globalName(_ id: NodeID) -> String? {
        if case .global(let m, let n) = self[id] { return "\(m).\(n)" }
        return nil
    }

    /// The entries of a dict-like node, in insertion order: a dict, or an object of a dict type (such as
    /// `collections.OrderedDict`) with what its constructor call was given (Python 2's pickle writes
    /// `REDUCE(OrderedDict, ([[key, value], ...],))`) followed by what SETITEMS set on it. A key given twice keeps
    /// its first place and its last value, as in CPython. A constructor argument this reader does not understand
    /// (see ``dictConstructorProblem(_:)``) adds nothing here; opening a checkpoint refuses such a dict.
    public func dictEntries(_ id: NodeID) -> [DictEntry]? {
        switch self[id] {
        case .dict(let entries): return entries
        case .object(let o) where isDictClass(o.callable):
            // What every pickler since Python 3 writes: the class called with no arguments, then SETITEMS.
            if case .tuple(let a) = self[o.args], a.isEmpty { return o.dictItems }
            guard let given = try? constructorEntries(o), !given.isEmpty else { return o.dictItems }
            return Self.merging(given + o.dictItems, self)
        default: return nil
        }
    }

    /// Why a dict type's constructor call is not read (nil when it is): arguments other than an iterable of
    /// 2-item lists or tuples, or a dict, as the first argument (and a `defaultdict`'s factory before it).
    public func dictConstructorProblem(_ id: NodeID) -> String? {
        guard case .object(let o) = self[id], isDictClass(o.callable) else { return nil }
        do {
            _ = try constructorEntries(o)
            return nil
        } catch {
            return "\(globalName(o.callable) ?? "dict") \(id) is built from \(error.reason), which ckpt does not read"
        }
    }

    struct ConstructorError: Error { var reason: String }

    /// The entries a dict type's constructor call is given, in order (before SETITEMS); [] when none.
    /// NEWOBJ and NEWOBJ_EX call `cls.__new__` only, which fills nothing.
    func constructorEntries(_ o: PickleObject, depth: Int = 0) throws(ConstructorError) -> [DictEntry] {
        guard o.construction == .reduce || o.construction == .inst || o.construction == .obj else { return [] }
        guard let args = sequence(o.args) else { throw ConstructorError(reason: "an argument tuple that is no tuple") }
        var rest = args[...]
        let name = globalName(o.callable)
        if name == "collections.defaultdict", !rest.isEmpty { rest = rest.dropFirst() }  // default_factory
        guard let source = rest.first else { return [] }
        guard rest.count == 1 else { throw ConstructorError(reason: "\(args.count) arguments") }
        // Counter counts the items of any other iterable: only a mapping gives it entries.
        if name == "collections.Counter", sequence(source) != nil {
            throw ConstructorError(reason: "an iterable to count")
        }
        switch self[source] {
        case .dict(let entries): return entries
        case .object(let inner) where isDictClass(inner.callable):
            guard depth < 8 else { throw ConstructorError(reason: "dicts nested too deep") }
            return Self.merging(try constructorEntries(inner, depth: depth + 1) + inner.dictItems, self)
        case .list(let items), .tuple(let items):
            var out: [DictEntry] = []
            out.reserveCapacity(items.count)
            for item in items {
                guard let pair = sequence(item), pair.count == 2 else {
                    throw ConstructorError(reason: "an item that is not a 2-item list or tuple")
                }
                out.append(DictEntry(key: pair[0], value: pair[1]))
            }
            return out
        default:
            throw ConstructorError(reason: "an argument that is not a list, tuple or dict")
        }
    }

    /// Entries with each key once, at its first place, with its last value (keys compared as Python compares
    /// strings and integers; other keys by identity).
    static func merging(_ entries: [DictEntry], _ g: PickleGraph) -> [DictEntry] {
        enum Key: Hashable { case text(String), int(Int64), node(NodeID) }
        func key(_ id: NodeID) -> Key {
            switch g[id] {
            case .string(let s): .text(s)
            case .int(let v): .int(v)
            case .bool(let b): .int(b ? 1 : 0)
            default: .node(id)
            }
        }
        var at: [Key: Int] = [:]
        var out: [DictEntry] = []
        for e in entries {
            let k = key(e.key)
            if let i = at[k] { out[i].value = e.value } else { at[k] = out.count; out.append(e) }
        }
        return out
    }

    /// Turns a dict-type object whose constructor call was given entries into the form Python 3 pickles: the
    /// class called with no entries (a `defaultdict` keeps its factory), all entries as SETITEMS, so that an edit of
    /// `dictItems` edits the dict. Other nodes are left as they are.
    public mutating func settleDictItems(_ id: NodeID) {
        guard case .object(var o) = self[id], isDictClass(o.callable), let given = try? constructorEntries(o),
              !given.isEmpty, let entries = dictEntries(id), let args = sequence(o.args)
        else { return }
        let keep = globalName(o.callable) == "collections.defaultdict" ? Array(args.prefix(1)) : []
        o.dictItems = entries
        o.args = add(.tuple(keep))
        self[id] = .object(o)
    }

    /// Whether a callable names a dict type (`collections.OrderedDict`, `builtins.dict`, ...).
    func isDictClass(_ id: NodeID) -> Bool {
        guard case .global(let module, let name) = self[id] else { return false }
        switch module {
        case "collections": return name == "OrderedDict" || name == "defaultdict" || name == "Counter"
        case "builtins", "__builtin__": return name == "dict"
        default: return false
        }
    }

    /// The value for a string key in a dict-like node.
    public func lookup(_ id: NodeID, _ key: String) -> NodeID? {
        guard let entries = dictEntries(id) else { return nil }
        return entries.first { string($0.key) == key }?.value
    }

    /// The ids of every node reachable from `start`, each once, in depth-first pre-order.
    public func reachable(from start: NodeID) -> [NodeID] {
        // A bitmap over the arena instead of a hashed set: this walk runs on every open.
        var seen = [Bool](repeating: false, count: nodes.count)
        var order: [NodeID] = []
        var stack = [start]
        var kids: [NodeID] = []
        while let id = stack.popLast() {
            guard !seen[id.index] else { continue }
            seen[id.index] = true
            order.append(id)
            kids.removeAll(keepingCapacity: true)
            forEachChild(of: id) { kids.append($0) }
            stack.append(contentsOf: kids.reversed())
        }
        return order
    }

    /// Calls `body` with each node a node refers to directly, in pickle order, without building an array.
    @inline(__always)
    public func forEachChild(of id: NodeID, _ body: (NodeID) -> Void) {
        switch self[id] {
        case .none, .bool, .int, .bigInt, .float, .string, .bytes, .bytearray, .global:
            return
        case .tuple(let items), .list(let items), .set(let items), .frozenset(let items):
            for i in items { body(i) }
        case .dict(let entries):
            for e in entries { body(e.key); body(e.value) }
        case .persistent(let pid):
            body(pid)
        case .object(let o):
            body(o.callable)
            body(o.args)
            if let k = o.kwargs { body(k) }
            for i in o.listItems { body(i) }
            for e in o.dictItems { body(e.key); body(e.value) }
            if let s = o.state { body(s) }
        }
    }

    /// The nodes a node refers to directly, in pickle order.
    public func children(of id: NodeID) -> [NodeID] {
        var out: [NodeID] = []
        forEachChild(of: id) { out.append($0) }
        return out
    }
}
