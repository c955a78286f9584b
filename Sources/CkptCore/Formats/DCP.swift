import Foundation

/// A `torch.distributed.checkpoint` folder (see docs/formats-dcp-deepspeed.md).
enum DCPReader {
    /// The folder as a checkpoint, or nil when it is not a DCP folder.
    static func open(folder: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer? { nil }
}
