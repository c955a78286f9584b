/// Which training framework wrote a checkpoint, and the evidence for it (see ``FrameworkConvention``).
public struct DetectedFramework: Sendable {
    public let convention: FrameworkConvention
    /// What identified it: `record pytorch-lightning_version`, `class ultralytics.nn.tasks.DetectionModel`.
    public let evidence: [String]
    /// Named by `--framework` rather than detected.
    public let named: Bool

    /// `{"id", "name", "evidence", "named", "sources"}` for `info --json`.
    public var json: JSONValue {
        .object([("id", .string(convention.id)), ("name", .string(convention.name)),
                 ("evidence", .array(evidence.map { .string($0) })), ("named", .bool(named)),
                 ("sources", .array(convention.sources.map { .string($0) }))])
    }

    /// `PyTorch Lightning (record pytorch-lightning_version, record optimizer_states)`.
    public var text: String { "\(convention.name) (\(evidence.joined(separator: ", ")))" }
}

extension Checkpoint {
    /// The framework whose conventions `strip`, `keys`, `info`, `layers`, `convert` and `transfer` follow: the one
    /// named by ``useFramework(_:)``, else the one detected from the records, classes and folder files; nil when
    /// none is recognised (the generic conventions then apply).
    public var framework: DetectedFramework? {
        if let named = frameworkOverride { return named }
        return detectedFramework
    }

    /// The conventions in force: the framework's, else the generic ones.
    var conventions: FrameworkConvention { framework?.convention ?? .generic }

    /// `--framework NAME`: follow this framework's conventions whatever the detection says.
    public func useFramework(_ name: String) throws(CheckpointError) {
        guard let c = FrameworkConvention.named(name) else {
            throw .invalidOperation("unknown framework '\(name)'; known: "
                + FrameworkConvention.all.map(\.id).joined(separator: ", "))
        }
        frameworkOverride = DetectedFramework(convention: c, evidence: ["named by --framework"], named: true)
    }
}

extension FrameworkConvention {
    /// The entry whose clues the checkpoint shows best: every required clue holds and at least two clues hold; among
    /// those, the most required clues, then the most clues, then the first in ``all``.
    static func detect(in c: Checkpoint) -> DetectedFramework? {
        let facts = Facts(c)
        var best: (rank: (Int, Int), found: DetectedFramework)?
        for entry in all where !entry.clues.isEmpty {
            var evidence: [String] = []
            var required = 0
            var missingRequired = false
            for clue in entry.clues {
                if let e = facts.holds(clue, weightsRecords: entry.weightsRecords) {
                    evidence.append(e)
                    if clue.required { required += 1 }
                } else if clue.required {
                    missingRequired = true
                    break
                }
            }
            guard !missingRequired, evidence.count >= 2 else { continue }
            let rank = (required, evidence.count)
            if best == nil || rank > best!.rank {
                best = (rank, DetectedFramework(convention: entry, evidence: evidence, named: false))
            }
        }
        return best?.found
    }

    /// What detection asks of a checkpoint, each found once.
    private final class Facts {
        let c: Checkpoint
        let recordNames: Set<String>
        lazy var classNames: [String] = {
            var seen = Set<String>()
            var out: [String] = []
            for node in c.graph.nodes {
                guard case .global(let m, let n) = node else { continue }
                let name = "\(m).\(n)"
                if seen.insert(name).inserted { out.append(name) }
            }
            return out
        }()
        var keyNames: [String: [String]] = [:]

        init(_ c: Checkpoint) {
            self.c = c
            recordNames = Set(c.records.map(\.name))
        }

        /// The evidence a clue gives, or nil when it does not hold.
        func holds(_ clue: Clue, weightsRecords: [String]) -> String? {
            switch clue {
            case .record(let name, _):
                return recordNames.contains(name) ? "record \(name)" : nil
            case .classPrefix(let prefix, _):
                return classNames.first { $0.hasPrefix(prefix) }.map { "class \($0)" }
            case .keyPrefix(let prefix, _):
                guard let record = weightsRecords.first(where: recordNames.contains) else { return nil }
                if keyNames[record] == nil {
                    let node = c.records.first { $0.name == record }!.node
                    keyNames[record] = ((try? c.graph.stateDict(node)) ?? []).map(\.name)
                }
                return keyNames[record]!.contains { $0.hasPrefix(prefix) } ? "keys \(record).\(prefix)*" : nil
            case .nestedKey(let record, let key, _):
                guard let r = c.records.first(where: { $0.name == record }), c.graph.lookup(r.node, key) != nil else {
                    return nil
                }
                return "\(record).\(key)"
            case .folderFile(let name, _):
                // A folder input: the files beside its weights (``TrainerFolder``).
                return c.trainerFolder?.holds(name) == true ? "file \(name)" : nil
            }
        }
    }
}

extension Checkpoint {
    /// The model's weights among a default record's state_dict view, as the framework's conventions see them: LitEma's
    /// `model_ema.*` buffers (latent diffusion) live in `state_dict` but are not the model's, so `keys`, `convert`,
    /// `layers` and `transfer` leave them out unless a record is named. Returns the view kept and what was left out.
    func modelWeights(_ view: [NamedTensor], recordNamed: Bool) -> (kept: [NamedTensor], leftOut: (count: Int, prefix: String)?) {
        guard !recordNamed, case .dotless(let emaPrefix, _, _) = conventions.ema else { return (view, nil) }
        let kept = view.filter { !$0.name.hasPrefix(emaPrefix) }
        return (kept, kept.count == view.count ? nil : (view.count - kept.count, emaPrefix))
    }
}

extension Checkpoint {
    /// The names the framework's publish script gives the weights (timm's `clean_state_dict`: `module.` and
    /// `_orig_mod.` off), so that `convert` writes what `strip` writes. A name that would collide keeps its own.
    func publishedNames(_ view: [NamedTensor]) -> [NamedTensor] {
        var prefixes: [String] = []
        for case .stripKeyPrefixes(let p) in conventions.publish { prefixes += p }
        guard !prefixes.isEmpty else { return view }
        var renamed = view.map { t -> NamedTensor in
            var t = t
            for p in prefixes where t.name.hasPrefix(p) { t.name = String(t.name.dropFirst(p.count)) }
            return t
        }
        if Set(renamed.map(\.name)).count != renamed.count { renamed = view }
        return renamed
    }
}
