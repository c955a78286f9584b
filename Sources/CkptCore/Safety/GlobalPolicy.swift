/// How a global named in a pickle is judged by `ckpt scan`. Globals are only ever names here:
/// nothing is imported or resolved to decide.
public enum GlobalClass: String, Sendable, Comparable, CaseIterable {
    /// Allowed by `torch.load(weights_only=True)`, or numpy array/scalar reconstruction.
    case safe
    /// A class or function that is harmless as a name but needs its source to load
    /// (`models.yolo.DetectionModel`, `torch.nn.modules.conv.Conv2d`).
    case needsCode = "needs-code"
    /// Can run commands, code, imports, file or network access when the pickle is loaded.
    case dangerous

    private var rank: Int { self == .safe ? 0 : self == .needsCode ? 1 : 2 }
    public static func < (a: GlobalClass, b: GlobalClass) -> Bool { a.rank < b.rank }
}

/// The verdict on one global: its class and, for dangerous ones, why.
public struct GlobalVerdict: Sendable, Equatable {
    public var globalClass: GlobalClass
    public var reason: String?
    /// The well-known framework whose class or function it is (`YOLOv5`, `torch.nn`), if any.
    public var framework: String?

    public init(globalClass: GlobalClass, reason: String? = nil, framework: String? = nil) {
        self.globalClass = globalClass
        self.reason = reason
        self.framework = framework
    }
}

/// The rules `ckpt scan` applies to a global and the way a pickle uses it (``classify(_:use:)``): a call is
/// dangerous unless the callable is allow-listed (torch's weights_only allow-list, ``TorchPolicyData``, and
/// ``ScanAllowList``); a class built and given state by BUILD runs its `__setstate__`, judged as a call for
/// the standard library and torch and as needs-code for third-party code; everything else is needs-code
/// unless allow-listed. The block list below (what picklescan's `_unsafe_globals` and fickling's
/// `UNSAFE_IMPORTS` flag) is a second opinion: a name on it is dangerous whatever the use.
public enum GlobalPolicy {
    /// Modules (and all their submodules) every name of which is dangerous.
    static let dangerousModules: Set<String> = [
        // processes and the operating system
        "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "pty", "commands", "multiprocessing",
        "signal", "_signal", "_winapi", "msvcrt", "winreg", "_winreg", "pexpect", "pipes", "platform",
        "_osx_support", "_aix_support", "uuid",
        // code execution, compilation, imports
        "runpy", "code", "codeop", "marshal", "types", "importlib", "_frozen_importlib", "_frozen_importlib_external",
        "_imp", "imp", "zipimport", "pkgutil", "site", "inspect", "gc", "compileall", "py_compile", "_interpreters",
        "_xxsubinterpreters", "threading", "_thread", "atexit", "ctypes", "_ctypes", "cffi",
        // debuggers, profilers, test runners, shells
        "pdb", "bdb", "timeit", "trace", "cProfile", "profile", "_lsprof", "doctest", "unittest", "test", "idlelib",
        "lib2to3", "pydoc", "_pyrepl", "rlcompleter", "IPython",
        // nested pickles and other deserializers that run code
        "pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "jsonpickle", "yaml",
        // file system
        "shutil", "tempfile", "filecmp", "fileinput", "glob", "linecache", "tarfile", "zipfile", "mmap",
        "sqlite3", "_sqlite3", "dbm", "io", "_io", "distutils", "setuptools",
        // network
        "socket", "_socket", "ssl", "_ssl", "select", "selectors", "asyncio", "aiohttp", "http", "httplib", "urllib",
        "urllib2", "urllib3", "requests", "smtplib", "imaplib", "ftplib", "poplib", "telnetlib", "nntplib",
        "socketserver", "xmlrpc", "webbrowser",
        // packaging
        "pip", "venv", "ensurepip",
        // logging handlers open files and sockets
        "logging", "syslog",
        // attribute and call plumbing: getattr chains, partial application
        "operator", "_operator", "functools", "_functools",
        // third-party loaders that run code or nested pickles
        "numpy.f2py", "numpy.testing", "numpy.distutils", "numpy.ctypeslib", "numpy.lib.npyio",
        "pandas.io.pickle", "torch.hub", "torch.jit", "torch.package", "torch.utils.cpp_extension",
        "torch._inductor.codecache", "torch.utils.bottleneck", "torch.distributed.rpc", "torch.testing._internal",
        "torch.utils.collect_env",
    ]

    /// `module.name` pairs that are dangerous in modules that are otherwise fine.
    static let dangerousNames: Set<String> = [
        "torch.load", "torch.serialization.load", "torch.serialization._load", "torch.serialization._legacy_load",
        "torch.storage._load_from_bytes", "torch._utils._rebuild_from_pickle",
        "torch._dynamo.guards.GuardBuilder.get",
        "torch.fx.experimental.symbolic_shapes.ShapeEnv.evaluate_guards_expression",
        "torch.utils._config_module.ConfigModule.load_config",
        "torch.utils.data.datapipes.utils.decoder.basichandlers",
        "numpy.load", "numpy.fromfile", "numpy.memmap", "numpy.loadtxt", "numpy.genfromtxt",
        "pandas.read_pickle", "copyreg._reconstructor.__globals__",
    ]

    /// Names inside ``dangerousModules`` that only build plain values.
    static let harmlessNames: Set<String> = ["types.SimpleNamespace"]

    /// Attributes that lead from any object to code, modules or globals.
    static let dangerousAttributes: Set<String> = [
        "__import__", "__builtins__", "__globals__", "__getattribute__", "__subclasses__", "__code__", "__loader__",
        "__spec__", "__dict__", "__class__", "__bases__", "__mro__", "__func__", "__self__", "__closure__",
    ]

    /// Builtins that only build plain values (fickling's `SAFE_BUILTINS`); every other builtin
    /// (`eval`, `exec`, `getattr`, `__import__`, `compile`, `open`, `setattr`, `globals`, ...) is dangerous.
    static let harmlessBuiltins: Set<String> = [
        "bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "set", "frozenset", "dict",
        "len", "abs", "sum", "min", "max", "round", "pow", "divmod", "sorted", "reversed", "enumerate", "zip", "range",
        "map", "filter", "slice", "iter", "next", "all", "any", "hash", "id", "repr", "ascii", "bin", "hex", "oct",
        "ord", "chr", "isinstance", "issubclass", "object", "callable", "format", "Ellipsis", "NotImplemented",
    ]

    /// What numpy pickles for arrays, scalars and dtypes: safe although weights_only refuses them.
    static let numpyReconstruction: Set<String> = [
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
        "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
        "numpy.ndarray", "numpy.dtype",
    ]

    /// The name pickle's Unpickler actually looks up: Python 2 spellings renamed as `_compat_pickle` does
    /// (`__builtin__.eval` is `builtins.eval`, `commands.getoutput` is `subprocess.getoutput`).
    static func pythonName(_ module: String, _ name: String) -> (module: String, name: String) {
        if let mapped = TorchPolicyData.pythonNameMapping[module + "." + name], let dot = mapped.lastIndex(of: ".") {
            return (String(mapped[..<dot]), String(mapped[mapped.index(after: dot)...]))
        }
        if module == "__builtins__" || module == "exceptions" { return ("builtins", name) }
        return (TorchPolicyData.pythonImportMapping[module] ?? module, name)
    }

    /// The name torch's weights_only unpickler looks up (`torch._utils` mappings).
    static func weightsOnlyName(_ module: String, _ name: String) -> (module: String, name: String) {
        if let mapped = TorchPolicyData.torchNameMapping[module + "." + name], let dot = mapped.lastIndex(of: ".") {
            return (String(mapped[..<dot]), String(mapped[mapped.index(after: dot)...]))
        }
        return (TorchPolicyData.torchImportMapping[module] ?? module, name)
    }

    /// Whether `torch.load(weights_only=True)` resolves this GLOBAL, and if not, why.
    static func weightsOnlyRefusal(_ module: String, _ name: String) -> String? {
        let (m, n) = weightsOnlyName(module, name)
        if TorchPolicyData.weightsOnlyBlockedModules.contains(m) { return "module \(m) is blocked" }
        return TorchPolicyData.weightsOnlyGlobals.contains(m + "." + n) ? nil : "global \(module).\(name) is not allow-listed"
    }

    /// Classifies one global by name.
    public static func classify(module: String, name: String) -> GlobalVerdict {
        let (m, n) = pythonName(module, name)
        let full = m + "." + n
        func danger(_ why: String) -> GlobalVerdict { GlobalVerdict(globalClass: .dangerous, reason: why) }

        if let bad = prefix(of: m, in: dangerousModules), !harmlessNames.contains(full) {
            return danger("module \(bad) can run code or reach the system")
        }
        // Protocol 4 resolves dotted names attribute by attribute (`torch` + `os.system` is os.system).
        let parts = n.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        var path = m
        for (i, part) in parts.enumerated() {
            let dunder = part.hasPrefix("__") && part.hasSuffix("__") && part.count > 4
            if dangerousAttributes.contains(part) || (dunder && parts.count > 1) {
                if !(i == 0 && m == "builtins") { return danger("reaches the attribute \(part)") }
            }
            path += "." + part
            if dangerousNames.contains(path) { return danger("\(path) loads files or runs code") }
            if parts.count > 1, dangerousModules.contains(part) || part == "builtins" || part == "__builtin__" {
                return danger("reaches the module \(part) through \(path)")
            }
        }
        if m == "builtins" {
            let first = parts[0]
            let exceptionLike = first.hasSuffix("Error") || first.hasSuffix("Exception") || first.hasSuffix("Warning")
                || first == "StopIteration" || first == "KeyboardInterrupt" || first == "SystemExit" || first == "GeneratorExit"
            if !harmlessBuiltins.contains(first) && !exceptionLike {
                return danger("a builtin that can run code or reach the system")
            }
        }
        if weightsOnlyRefusal(module, name) == nil || numpyReconstruction.contains(full)
            || (m == "numpy.dtypes" && n.hasSuffix("DType") && !n.contains("."))
        {
            return GlobalVerdict(globalClass: .safe, reason: nil)
        }
        return GlobalVerdict(globalClass: .needsCode, reason: nil)
    }

    /// Classifies one use of a global the pickle names (or reaches by `getattr`).
    public static func classify(_ g: ScannedGlobal, use: GlobalUse) -> GlobalVerdict {
        let (m, n) = pythonName(g.module, g.name)
        let full = m + "." + n
        let framework = ScanAllowList.frameworks.first { full.hasPrefix($0.prefix) }?.label
        func verdict(_ c: GlobalClass, _ why: String? = nil) -> GlobalVerdict {
            GlobalVerdict(globalClass: c, reason: why, framework: framework)
        }
        let thirdParty = isThirdParty(m)
        let byName = classify(module: g.module, name: g.name)
        switch use {
        case .getattrConstant:
            return verdict(.safe, "getattr of a global's attribute by a constant name: a reference, not a call")
        case .called:
            if let via = g.via {
                return verdict(.dangerous, "calls \(full), an attribute reached by \(via) at load time")
            }
            if let why = allowedCall(m, n, full)
                ?? (weightsOnlyRefusal(g.module, g.name) == nil ? "on torch's weights_only allow-list" : nil)
            {
                return verdict(thirdParty ? .needsCode : .safe, why)
            }
            let blocked = byName.globalClass == .dangerous ? "; \(byName.reason ?? "")" : ""
            return verdict(.dangerous, "called with the pickle's arguments, and on no allow-list\(blocked)")
        case .setstate:
            if let why = ScanAllowList.constructionNames[full] ?? allowedCall(m, n, full) {
                return verdict(thirdParty ? .needsCode : .safe, why)
            }
            if ScanAllowList.constructionPrefixes.contains(where: { full.hasPrefix($0.name) }) {
                return verdict(.needsCode)  // its why is in the table; the row is labelled with its framework
            }
            if thirdParty { return verdict(.needsCode) }
            return verdict(.dangerous, "BUILD calls its __setstate__ with the pickle's state, and it is on no allow-list")
        case .constructed, .referenced:
            if g.via == nil, allowedCall(m, n, full) != nil || ScanAllowList.constructionNames[full] != nil
                || weightsOnlyRefusal(g.module, g.name) == nil
            {
                return verdict(thirdParty ? .needsCode : .safe)
            }
            if byName.globalClass == .dangerous { return verdict(.dangerous, byName.reason) }
            if g.via != nil {
                return verdict(.needsCode, "an attribute reached by \(g.via!), never called")
            }
            return verdict(.needsCode)
        }
    }

    /// Why calling `full` cannot run code, when it is allow-listed.
    static func allowedCall(_ m: String, _ n: String, _ full: String) -> String? {
        if let why = ScanAllowList.callNames[full] { return why }
        if m == "numpy.dtypes" && n.hasSuffix("DType") && !n.contains(".") { return "a numpy dtype class" }
        return nil
    }

    /// Whether a module is neither in Python's standard library nor installed with torch: code that only
    /// a model's own repository or a framework brings.
    static func isThirdParty(_ module: String) -> Bool {
        let top = String(module.prefix { $0 != "." })
        return !TorchPolicyData.stdlibModules.contains(top) && !ScanAllowList.torchDependencies.contains(top)
            && top != "__builtin__" && top != "copy_reg"
    }

    /// The member of `set` that `name` is or lies under (`os` for `os.path`), if any.
    private static func prefix(of name: String, in set: Set<String>) -> String? {
        if set.contains(name) { return name }
        var i = name.startIndex
        while let dot = name[i...].firstIndex(of: ".") {
            let head = String(name[..<dot])
            if set.contains(head) { return head }
            i = name.index(after: dot)
        }
        return nil
    }
}
