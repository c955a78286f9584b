/// What `ckpt scan --weights-only` says: whether `torch.load(weights_only=True)` loads the file (the replay
/// ``ScanBuilder`` runs), and if not, the first refusal, the value it refuses with its path in the file when it can
/// be found there, and the conversion `ckpt strip --state-dict` applies to such a value.
public struct WeightsOnlyCheck: Sendable {
    public var file: String
    public var loads: Bool
    /// Why it is refused (the first refusal met, `data.pkl: global pathlib.PosixPath is not allow-listed (byte N)`),
    /// or a note on how it loads.
    public var reason: String?
    /// The refused value, when the refusal is a global that the file's graph holds.
    public var value: RefusedValue?

    /// A refused value: where it is, its class, and what `strip --state-dict` makes of it.
    public struct RefusedValue: Sendable {
        /// A dotted path of record names, dict keys, attribute names and list indices (`opt.save_dir`).
        public var path: String
        /// `pathlib.PosixPath`; for a bare reference, the class or function referenced.
        public var className: String
        /// `str (str(path))`, or nil when `strip --state-dict` cannot convert it.
        public var conversion: String?
    }

    public var json: JSONValue {
        .object([
            ("file", .string(file)), ("loads", .bool(loads)), ("reason", reason.map { .string($0) } ?? .null),
            ("value", value.map { v in
                .object([("path", .string(v.path)), ("class", .string(v.className)),
                         ("convertible", .bool(v.conversion != nil)),
                         ("conversion", .string(v.conversion ?? WeightsOnlyConversion.notConvertible))])
            } ?? .null),
        ])
    }

    public var text: String {
        guard !loads else { return "\(file): weights_only=True: loads" + (reason.map { " (\($0))" } ?? "") }
        var s = "\(file): weights_only=True: refused\n  first refusal: \(reason ?? "")"
        if let v = value {
            s += "\n  value: \(v.path): \(v.className)"
            s += "\n  ckpt strip --state-dict: " + (v.conversion.map { "converts it to \($0)" } ?? WeightsOnlyConversion.notConvertible)
        }
        return s
    }
}

/// Builds ``WeightsOnlyCheck`` for a file (not a folder: `torch.load` reads files).
public struct WeightsOnlyCheckBuilder {
    public let path: String
    public var limits: PickleLimits

    public init(path: String, limits: PickleLimits = PickleLimits()) {
        self.path = path
        self.limits = limits
    }

    /// The check. Throws when the file cannot be read far enough to tell (then neither verdict would be sound).
    public func build() throws(CheckpointError) -> WeightsOnlyCheck {
        let report = try ScanBuilder(path: path, limits: limits).build()
        let refusing = report.pickles.first { $0.weightsOnlyRefusal != nil }
        if refusing == nil, let e = report.readError, !report.weightsOnlyLoads,
           report.weightsOnlyReason?.hasPrefix("the file cannot be read") ?? true
        {
            throw e
        }
        var check = WeightsOnlyCheck(file: path, loads: report.weightsOnlyLoads, reason: report.weightsOnlyReason)
        // The refused global's value in the graph: only the main pickle's (data.pkl) values are in it.
        if !report.weightsOnlyLoads, report.readError == nil, let global = refusing?.weightsOnlyRefusedGlobal,
           let c = try? Checkpoint(path: path, limits: limits), c.torchScript == nil,
           let found = WeightsOnlyConversion.find(global, in: c.graph, limits: limits)
        {
            check.value = found
        }
        return check
    }
}

/// Where a value `weights_only=True` refuses is in a graph, and what `ckpt strip --state-dict` makes of it: the
/// strip's own plain-data walk (``PlainDataConverter``) run on a copy of the graph, so that what scan names is what
/// strip does.
public enum WeightsOnlyConversion {
    public static let notConvertible = "not convertible: --drop-unconvertible drops it"

    /// The first value the plain-data walk could not convert, else the first it converts, whose class is of the
    /// refused global's package (`pathlib` for `pathlib.PosixPath`, `numpy` for `numpy._core.multiarray.scalar`).
    static func find(_ global: WeightsOnlyRefusedGlobal, in g: PickleGraph, limits: PickleLimits)
        -> WeightsOnlyCheck.RefusedValue?
    {
        let (module, name) = GlobalPolicy.pythonName(global.module, global.name)
        let package = String(module.split(separator: ".").first ?? Substring(module))
        var c = PlainDataConverter(g, dropUnconvertible: false, limits: limits)
        try? c.convert(from: g.root)
        func ofPackage(_ v: ValueConversion) -> Bool {
            let from = v.from.hasPrefix("getattr(") ? String(v.from.dropFirst(8)) : v.from
            return from.hasPrefix(package + ".") || from.hasPrefix(package + " ") || from == package
        }
        // The value's class as the walk names it (`numpy.float64`, `numpy.ndarray`), not the global that rebuilds it.
        func valueClass(_ v: ValueConversion) -> String {
            var from = v.from.hasPrefix("getattr(") ? String(v.from.dropFirst(8)) : v.from
            if let cut = from.range(of: " (") { from = String(from[..<cut.lowerBound]) }
            return from.isEmpty ? module + "." + name : from
        }
        if let v = c.unconvertible.first(where: ofPackage) {
            return .init(path: v.path.isEmpty ? "(top level)" : v.path, className: valueClass(v), conversion: nil)
        }
        if let v = c.conversions.first(where: ofPackage) {
            return .init(path: v.path.isEmpty ? "(top level)" : v.path, className: valueClass(v), conversion: v.to)
        }
        return nil
    }
}
