/// Which training framework wrote a checkpoint, and the evidence for it (see ``FrameworkConvention``).
public struct DetectedFramework: Sendable {
    public let convention: FrameworkConvention
    /// What identified it: `record pytorch-lightning_version`, `class ultralytics.nn.tasks.DetectionModel`.
    public let evidence: [String]
    /// Named by `--framework` rather than detected.
    public let named: Bool
}

extension Checkpoint {
    /// The framework whose conventions `strip`, `keys`, `info`, `layers`, `convert` and `transfer` follow: the one
    /// named by ``useFramework(_:)``, else the one detected from the records, classes and folder files.
    public var framework: DetectedFramework? {
        if let named = frameworkOverride { return named }
        return detectedFramework
    }

    /// `--framework NAME`: follow this framework's conventions whatever the detection says.
    public func useFramework(_ name: String) throws(CheckpointError) {
        guard let c = FrameworkConvention.named(name) else {
            throw .invalidOperation("unknown framework '\(name)'; known: "
                + FrameworkConvention.all.map(\.id).joined(separator: ", "))
        }
        frameworkOverride = DetectedFramework(convention: c, evidence: ["named by --framework"], named: true)
    }
}
