import Foundation

/// A DeepSpeed ZeRO checkpoint folder (see docs/formats-dcp-deepspeed.md).
enum DeepSpeedReader {
    /// The folder as a checkpoint, or nil when it is not a DeepSpeed checkpoint folder.
    static func open(folder: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer? { nil }
}
