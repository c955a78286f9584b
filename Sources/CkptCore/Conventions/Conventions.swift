/// One training framework's checkpoint conventions, as data: how to recognise its files, where the weights and the
/// EMA are, which records are training state and what its own strip or publish script resets. Each entry cites the
/// upstream source it was checked against. Adding a framework is adding one entry to ``all``.
public struct FrameworkConvention: Sendable {
    /// `--framework` name: `yolov5`, `lightning`, `mmengine`.
    public let id: String
    /// Human name for `info`.
    public let name: String

    /// Every entry, most specific first (detection takes the first best match).
    public static let all: [FrameworkConvention] = []

    public static func named(_ name: String) -> FrameworkConvention? {
        all.first { $0.id == name.lowercased() }
    }

    /// The convention whose evidence the checkpoint shows best, with that evidence.
    static func detect(in c: Checkpoint) -> DetectedFramework? { nil }
}
